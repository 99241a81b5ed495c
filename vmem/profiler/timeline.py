"""A step's device memory over time, by kind, from its recorded events: what the
memory plot stacks. Pure functions over a StepRecord.

The series is exact, not resampled: one sample when the step begins, then one
after every allocation and free, in the order the arena made them (several may
share a time). Invariant: at every sample the kinds sum to the arena's own
total recorded with the event (`MemoryEvent.in_use`), so the stack's highest
point is the step's peak (analysis.peak_bytes)."""

from __future__ import annotations

from dataclasses import dataclass

from vmem.memory import MemoryKind
from vmem.profiler.analysis import KINDS, peak_bytes
from vmem.profiler.events import StepRecord
from vmem.schema import Bytes, Millis

FORWARD, BACKWARD, UPDATE = "forward", "backward", "update"


@dataclass(frozen=True)
class KindSeries:
    """Samples of device bytes: `times_ms[i]` is when sample i begins (it lasts
    until the next one, the last until `end_ms`); `by_kind[kind][i]` the bytes of
    that kind then and `in_use[i]` the arena's total then."""

    times_ms: tuple[Millis, ...]
    in_use: tuple[Bytes, ...]
    by_kind: dict[str, tuple[Bytes, ...]]  # every kind of KINDS, in that order
    end_ms: Millis

    def totals(self) -> tuple[Bytes, ...]:
        """The stack's height at each sample: the kinds summed."""
        return tuple(sum(column) for column in zip(*self.by_kind.values(), strict=True))

    def present(self) -> tuple[str, ...]:
        """The kinds with bytes at some sample, in KINDS order."""
        return tuple(kind for kind, values in self.by_kind.items() if any(values))


def kind_series(record: StepRecord) -> KindSeries:
    """The step's samples by kind. Bytes in use at the start that the record does
    not split by kind (one made without `start_by_kind`) count as "other"."""
    current = dict.fromkeys(KINDS, 0)
    for kind, nbytes in record.start_by_kind:
        current[kind] = current.get(kind, 0) + nbytes
    current[str(MemoryKind.OTHER)] += record.start_in_use - sum(current.values())
    columns = [dict(current)]
    for event in record.memory:
        current[event.kind] = current.get(event.kind, 0) + (
            event.nbytes if event.op == "alloc" else -event.nbytes)
        columns.append(dict(current))
    kinds = list(KINDS) + [k for k in current if k not in KINDS]  # a kind a later vmem adds
    times = (0.0, *(e.t_ms for e in record.memory))
    end = max(record.duration_ms, times[-1])
    return KindSeries(times, (record.start_in_use, *(e.in_use for e in record.memory)),
                      {kind: tuple(c.get(kind, 0) for c in columns) for kind in kinds}, end)


def phase_starts(record: StepRecord) -> dict[str, Millis]:
    """When the backward pass (the loss first) and the update begin: the start of
    the first compute kernel of each. A recomputed forward pass runs inside the
    backward pass and moves neither."""
    starts: dict[str, Millis] = {}
    for span in record.spans:
        if span.kind == "kernel" and span.stream == "compute" and span.phase in (BACKWARD,
                                                                                 UPDATE):
            starts[span.phase] = min(starts.get(span.phase, span.start_ms), span.start_ms)
    return starts


def peak_record(records: tuple[StepRecord, ...]) -> StepRecord | None:
    """The step whose peak a trial reports (the highest over its steps, as
    vmem.trial takes it), the latest of equals: a timed step rather than the
    warm-up where they tie."""
    if not records:
        return None
    peak = max(peak_bytes(r) for r in records)
    return [r for r in records if peak_bytes(r) == peak][-1]
