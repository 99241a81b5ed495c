"""What the executor reports, with times in milliseconds from the step's start.
Every backend emits the same events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vmem.schema import Bytes, Count, Millis


@dataclass(frozen=True)
class MemoryEvent:
    t_ms: Millis
    op: Literal["alloc", "free"]
    nbytes: Bytes
    kind: str  # a vmem.memory.MemoryKind value
    label: str
    in_use: Bytes  # device bytes in use right after this event
    # The kernel this event belongs to: an allocation, the next kernel launched
    # on the compute stream (it is made for it); a free, the last one launched
    # (it follows it). Empty where no kernel was launched.
    layer: str = ""
    phase: str = ""


@dataclass(frozen=True)
class Span:
    """Work on one stream: a layer's kernel, a copy, or a wait."""

    name: str  # layer name, or the optimizer's ("sgd", "adamw") for the update
    phase: str  # "forward" | "backward" | "update"
    stream: str  # "compute" | "memory"
    start_ms: Millis
    end_ms: Millis
    kind: str = "kernel"  # "kernel" | "copy_d2h" | "copy_h2d" | "wait"
    nbytes: Bytes = 0

    @property
    def ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class StepRecord:
    step: Count
    duration_ms: Millis
    start_in_use: Bytes  # device bytes in use when the step began (weights, optimizer state)
    memory: tuple[MemoryEvent, ...]
    spans: tuple[Span, ...]
    loss: float | None = None
    # start_in_use by kind (MemoryKind values), in the arena's order
    start_by_kind: tuple[tuple[str, Bytes], ...] = ()
    # host (Python) time spent issuing the step's work, from its start until its last
    # work was issued, less the host's waits for the device (offloads, the upload):
    # near duration_ms, the device waited for the host (a launch-bound step)
    host_ms: Millis | None = None
    # every block in use when the step began, (kind, label, bytes), in the arena's order:
    # what the peak's contents name beside the step's own allocations (empty in a record
    # made without it; start_by_kind then says only how much of each kind)
    start_blocks: tuple[tuple[str, str, Bytes], ...] = ()
