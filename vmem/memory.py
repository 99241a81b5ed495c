"""The device arena: byte-exact accounting of every device buffer.

Every device buffer vmem keeps is a `Block` handed out here before its array is
made, so a step that would exceed the capacity fails before it computes, and
the figures (in use, peak, timeline) count what the runtime holds: parameters,
their gradients, optimizer state, feature maps, gradient maps, saved layer
state and workspace. Invariant: `in_use == sum(b.nbytes for b in live blocks)`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmem.errors import OutOfDeviceMemory, OutOfHostMemory


class MemoryKind(enum.StrEnum):
    WEIGHTS = "weights"
    WEIGHT_GRADS = "weight_grads"
    OPTIMIZER = "optimizer"
    STATE = "state"  # layer state that is not a parameter (BatchNorm's running statistics)
    FEATURE_MAPS = "feature_maps"
    GRADIENT_MAPS = "gradient_maps"
    SAVED = "saved"  # layer-private state kept for backward (dropout masks, LRN scales)
    WORKSPACE = "workspace"
    OTHER = "other"


@dataclass(frozen=True)
class Block:
    id: int
    nbytes: int
    kind: MemoryKind
    label: str


@dataclass(frozen=True)
class ArenaEvent:
    """One allocation or free; `in_use` is the arena's total right after it."""

    op: str  # "alloc" | "free"
    block: Block
    in_use: int


class DeviceArena:
    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._live: dict[int, Block] = {}
        self._ids = itertools.count()
        # Called with each event; the executor stamps it with the stream time.
        self.observers: list[Callable[[ArenaEvent], None]] = []

    def allocate(self, nbytes: int, kind: MemoryKind, label: str) -> Block:
        if nbytes < 0:
            raise ValueError(f"negative allocation {nbytes} for {label}")
        if self.capacity is not None and self.in_use + nbytes > self.capacity:
            raise OutOfDeviceMemory(requested=nbytes, in_use=self.in_use,
                                    capacity=self.capacity, what=f"{kind} '{label}'")
        block = Block(next(self._ids), nbytes, kind, label)
        self._live[block.id] = block
        self.in_use += nbytes
        if self.in_use > self.peak:  # a comparison, not max(): dry runs make millions
            self.peak = self.in_use
        self._notify(ArenaEvent("alloc", block, self.in_use))
        return block

    def free(self, block: Block) -> None:
        if self._live.pop(block.id, None) is None:
            raise ValueError(f"double free of block {block.id} ({block.label})")
        self.in_use -= block.nbytes
        self._notify(ArenaEvent("free", block, self.in_use))

    def live_blocks(self) -> tuple[Block, ...]:
        return tuple(self._live.values())

    def bytes_by_kind(self) -> dict[MemoryKind, int]:
        totals: dict[MemoryKind, int] = {}
        for block in self._live.values():
            totals[block.kind] = totals.get(block.kind, 0) + block.nbytes
        return totals

    def reset_peak(self) -> None:
        self.peak = self.in_use

    def _notify(self, event: ArenaEvent) -> None:
        for observer in self.observers:
            observer(event)


@dataclass(frozen=True)
class HostBuffer:
    """Host memory handed out by the pool: `array` is `nbytes` long (uint8), a view of
    a pinned buffer of `pinned` bytes (more where a larger free buffer served)."""

    id: int
    nbytes: int
    array: Any  # uint8 numpy array (pinned on cuda); None on a backend without data
    pinned: int


class PinnedHostPool:
    """Page-locked host buffers, pinned once and reused: pinning is slow (1.3 s
    for 2 GiB on an H100 machine), so a buffer released goes back to a free list
    and a later request it can hold takes it again (the smallest that can). A
    request no free buffer can hold first unpins the free ones, all smaller than
    it: what stays pinned is then bounded by the largest request made while the
    others were handed out, never the sum of every size ever asked for.
    Invariant: `in_use <= reserved <= capacity`."""

    def __init__(self, allocate: Callable[[int], Any], capacity: int | None = None) -> None:
        self._allocate = allocate
        self.capacity = capacity
        self.reserved = 0  # bytes pinned
        self.in_use = 0  # bytes pinned behind the buffers handed out
        self.peak = 0
        self._free: list[HostBuffer] = []  # whole pinned buffers, not handed out
        self._lent: dict[int, HostBuffer] = {}  # by id
        self._ids = itertools.count()

    def check_room(self, nbytes: int, what: str) -> None:
        """Refuse, before anything runs, a need the capacity could never hold."""
        if self.capacity is not None and nbytes > self.capacity:
            raise OutOfHostMemory(requested=nbytes, reserved=self.reserved,
                                  capacity=self.capacity, what=what)

    def acquire(self, nbytes: int, what: str) -> HostBuffer:
        fitting = [b for b in self._free if b.nbytes >= nbytes]
        if fitting:
            whole = min(fitting, key=lambda b: b.nbytes)
            self._free.remove(whole)
        else:
            self.trim()
            if self.capacity is not None and self.reserved + nbytes > self.capacity:
                raise OutOfHostMemory(requested=nbytes, reserved=self.reserved,
                                      capacity=self.capacity, what=what)
            whole = HostBuffer(next(self._ids), nbytes, self._allocate(nbytes), nbytes)
            self.reserved += nbytes
        self._lent[whole.id] = whole
        self.in_use += whole.nbytes
        self.peak = max(self.peak, self.in_use)
        array = None if whole.array is None else whole.array[:nbytes]
        return HostBuffer(whole.id, nbytes, array, whole.nbytes)

    def release(self, buffer: HostBuffer) -> None:
        whole = self._lent.pop(buffer.id)
        self.in_use -= whole.nbytes
        self._free.append(whole)

    def trim(self) -> None:
        """Unpin every buffer not handed out."""
        self.reserved -= sum(b.nbytes for b in self._free)
        self._free.clear()
