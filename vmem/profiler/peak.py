"""What is on the device at a step's peak, as PyTorch's memory snapshot shows
what is allocated at a moment: the instant of the peak (the kernel and pass its
allocation was made for) and every block in use then, biggest first. A pure
function over a StepRecord; `vmem.roles` adds what the plan does with each.

Invariant: the blocks' bytes sum to `analysis.peak_bytes(record)`, and by kind
to `analysis.bytes_by_kind_at_peak(record)` (the same, first, peak)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from vmem.profiler.analysis import KINDS, peak_bytes
from vmem.profiler.events import StepRecord
from vmem.schema import Bytes, Count, Millis

#: what a plan does with a tensor: "yes", it moves (offload) or computes it again
#: (recompute); "could", a plan could and this one does not; "no", no plan can
Action = Literal["yes", "could", "no"]

#: the name of what a record made without `start_blocks` held at the step's start,
#: one entry a kind
AT_START = "(held at the step's start)"


@dataclass(frozen=True)
class PeakTensor:
    """One device block in use at the peak."""

    name: str  # the tensor: the arena's label, or the layer writing over it in place
    kind: str  # a vmem.memory.MemoryKind value
    layer: str  # the layer that made it ("" where none: the network's input)
    nbytes: Bytes
    offload: Action | None = None  # None: not known (no plan was given)
    recompute: Action | None = None


@dataclass(frozen=True)
class PeakContents:
    """The instant of a step's peak and what the device held then."""

    step: Count  # the step (0 for the first)
    t_ms: Millis  # from the step's start
    layer: str  # the kernel the peak's allocation was made for ("" at the step's start)
    phase: str  # its pass: "forward" | "backward" | "recompute" | "update" ("" at the start)
    peak_bytes: Bytes
    tensors: tuple[PeakTensor, ...]  # biggest first; their bytes sum to peak_bytes

    def top(self, count: int) -> tuple[tuple[PeakTensor, ...], int, Bytes]:
        """The `count` biggest, and how many others there are and their bytes."""
        shown, rest = self.tensors[:count], self.tensors[count:]
        return shown, len(rest), sum(t.nbytes for t in rest)

    def by_kind(self) -> dict[str, Bytes]:
        totals: dict[str, Bytes] = {}
        for tensor in self.tensors:
            totals[tensor.kind] = totals.get(tensor.kind, 0) + tensor.nbytes
        return totals


def _order(tensor: PeakTensor) -> tuple[int, int, str]:
    kind = KINDS.index(tensor.kind) if tensor.kind in KINDS else len(KINDS)
    return (-tensor.nbytes, kind, tensor.name)


def live_at_peak(record: StepRecord) -> PeakContents:
    """The blocks in use right after the allocation that first reached the step's
    peak (or at its start, where nothing in it allocated more than it held then),
    biggest first. A block made in the step names the kernel it was made for as
    its layer; one held from the start names none (`vmem.roles` finds it)."""
    peak = peak_bytes(record)
    live: dict[int, PeakTensor] = {}  # by a block's place: the start's negative
    if record.start_blocks:
        for n, (kind, label, nbytes) in enumerate(record.start_blocks):
            live[-1 - n] = PeakTensor(label, kind, "", nbytes)
    else:
        by_kind = dict.fromkeys(KINDS, 0)
        for kind, nbytes in record.start_by_kind:
            by_kind[kind] = by_kind.get(kind, 0) + nbytes
        by_kind["other"] += record.start_in_use - sum(by_kind.values())
        for n, (kind, nbytes) in enumerate(by_kind.items()):
            if nbytes:
                live[-1 - n] = PeakTensor(AT_START, kind, "", nbytes)
    # A free names its block by label, kind and size alone: it takes the oldest
    # live block of those (a label is in use once at a time; were one in use
    # twice, either block is the same bytes of the same kind).
    keys: dict[tuple[str, str, int], list[int]] = {}
    for key, tensor in sorted(live.items(), reverse=True):
        keys.setdefault((tensor.name, tensor.kind, tensor.nbytes), []).append(key)
    t_ms, layer, phase = 0.0, "", ""
    if peak > record.start_in_use:
        for n, event in enumerate(record.memory):
            block = (event.label, event.kind, event.nbytes)
            if event.op == "alloc":
                live[n] = PeakTensor(event.label, event.kind, event.layer, event.nbytes)
                keys.setdefault(block, []).append(n)
            elif keys.get(block):
                del live[keys[block].pop(0)]
            else:
                raise ValueError(f"step {record.step}: a free of {event.kind} "
                                 f"'{event.label}' ({event.nbytes} bytes) that nothing "
                                 "allocated")
            if event.in_use == peak:
                t_ms, layer, phase = event.t_ms, event.layer, event.phase
                break
    tensors = tuple(sorted(live.values(), key=_order))
    total = sum(t.nbytes for t in tensors)
    if total != peak:
        raise ValueError(f"step {record.step}: the blocks in use at the peak sum to {total} "
                         f"bytes, not the peak's {peak}")
    return PeakContents(record.step, t_ms, layer, phase, peak, tensors)


def described(contents: PeakContents, tensors: list[PeakTensor]) -> PeakContents:
    """The same instant with its tensors described anew (same bytes), re-sorted."""
    if sum(t.nbytes for t in tensors) != contents.peak_bytes:
        raise ValueError("described tensors must keep the peak's bytes")
    return replace(contents, tensors=tuple(sorted(tensors, key=_order)))
