"""Pure functions over step records: whole-step figures. Times are
milliseconds from the step's start, memory is device bytes in the arena."""

from __future__ import annotations

from collections import defaultdict

from vmem.memory import MemoryKind
from vmem.profiler.events import StepRecord

#: the kinds in the order reports show them
KINDS: tuple[str, ...] = tuple(str(kind) for kind in MemoryKind)


def peak_bytes(record: StepRecord) -> int:
    return max((e.in_use for e in record.memory), default=record.start_in_use)


def average_bytes(record: StepRecord) -> float:
    """Device bytes in use, averaged over the step's time: in use is constant
    between two memory events and weighs by how long it lasted."""
    if record.duration_ms <= 0:
        return float(peak_bytes(record))
    area, in_use, last_t = 0.0, record.start_in_use, 0.0
    for event in record.memory:
        t = min(max(event.t_ms, last_t), record.duration_ms)
        area += in_use * (t - last_t)
        in_use, last_t = event.in_use, t
    area += in_use * (record.duration_ms - last_t)
    return area / record.duration_ms


def _start_by_kind(record: StepRecord) -> dict[str, int]:
    """What was in use when the step began, by kind; bytes the record does not
    split (a record made without `start_by_kind`) count as "other"."""
    by_kind = dict.fromkeys(KINDS, 0)
    for kind, nbytes in record.start_by_kind:
        by_kind[kind] = by_kind.get(kind, 0) + nbytes
    by_kind[str(MemoryKind.OTHER)] += record.start_in_use - sum(by_kind.values())
    return by_kind


def _apply(by_kind: dict[str, int], op: str, kind: str, nbytes: int) -> None:
    by_kind[kind] = by_kind.get(kind, 0) + (nbytes if op == "alloc" else -nbytes)


def bytes_by_kind_at_peak(record: StepRecord) -> dict[str, int]:
    """Device bytes by kind at the step's (first) peak; they sum to peak_bytes."""
    by_kind = _start_by_kind(record)
    best, best_in_use = dict(by_kind), record.start_in_use
    for event in record.memory:
        _apply(by_kind, event.op, event.kind, event.nbytes)
        if event.in_use > best_in_use:
            best, best_in_use = dict(by_kind), event.in_use
    return best


def average_bytes_by_kind(record: StepRecord) -> dict[str, float]:
    """Time-averaged device bytes by kind; they sum to average_bytes."""
    by_kind = _start_by_kind(record)
    if record.duration_ms <= 0:
        return {kind: float(n) for kind, n in bytes_by_kind_at_peak(record).items()}
    area: dict[str, float] = dict.fromkeys(by_kind, 0.0)
    last_t = 0.0
    for event in record.memory:
        t = min(max(event.t_ms, last_t), record.duration_ms)
        for kind, nbytes in by_kind.items():
            area[kind] = area.get(kind, 0.0) + nbytes * (t - last_t)
        _apply(by_kind, event.op, event.kind, event.nbytes)
        last_t = t
    for kind, nbytes in by_kind.items():
        area[kind] = area.get(kind, 0.0) + nbytes * (record.duration_ms - last_t)
    return {kind: value / record.duration_ms for kind, value in area.items()}


def memory_timeline(record: StepRecord) -> list[tuple[float, int]]:
    """(t_ms, bytes in use from then on): the step's start, then every event."""
    return [(0.0, record.start_in_use), *((e.t_ms, e.in_use) for e in record.memory)]


def time_by_layer(record: StepRecord) -> dict[tuple[str, str], float]:
    """Milliseconds of compute per (layer, phase)."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for span in record.spans:
        if span.kind == "kernel":
            totals[(span.name, span.phase)] += span.ms
    return dict(totals)


def copied_bytes(record: StepRecord, kind: str) -> int:
    """Bytes moved by copies of one kind: "copy_d2h" (offloaded) or "copy_h2d"
    (prefetched)."""
    return sum(span.nbytes for span in record.spans if span.kind == kind)


def recomputed_bytes(record: StepRecord) -> int:
    """Bytes the backward pass computed again (feature maps and what their layers
    saved, dropped after the forward pass): what was allocated for the recomputing
    kernels, less their workspace and the maps prefetched for them (an allocation
    belongs to the next kernel launched, and a recomputation's inputs may come back
    from the host first)."""
    prefetched = {span.name for span in record.spans if span.kind == "copy_h2d"}
    return sum(event.nbytes for event in record.memory if event.op == "alloc" and
               event.phase == "recompute" and event.kind != str(MemoryKind.WORKSPACE)
               and event.label not in prefetched)


def stall_ms(record: StepRecord) -> float:
    """Time the compute stream waited for prefetches."""
    return sum(span.ms for span in record.spans if span.kind == "wait")


def compute_ms(record: StepRecord) -> float:
    """Time of the layers' kernels alone: the step as if every copy were free."""
    return sum(span.ms for span in record.spans if span.kind == "kernel")
