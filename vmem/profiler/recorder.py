"""Collects a step's events as marks on the backend's streams, and resolves
them into times once the step has synchronized."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import NamedTuple

from vmem.backends.base import Backend, Mark, Stream
from vmem.memory import ArenaEvent
from vmem.profiler.events import MemoryEvent, Span, StepRecord


class _PendingSpan(NamedTuple):
    name: str
    phase: str
    stream: str
    start: Mark
    end: Mark
    kind: str
    nbytes: int


class _PendingMemory(NamedTuple):
    mark: Mark
    event: ArenaEvent
    kernels_before: int  # kernel spans recorded when the event happened


class StepRecorder:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.start_in_use = backend.arena.in_use
        self.start_by_kind = tuple((str(kind), nbytes) for kind, nbytes
                                   in backend.arena.bytes_by_kind().items())
        self.start_blocks = tuple((str(block.kind), block.label, block.nbytes)
                                  for block in backend.arena.live_blocks())
        self._start = backend.mark(backend.compute)
        self._host_start = time.perf_counter()
        self._host_ms: float | None = None
        self._blocked_s = 0.0  # host time spent waiting for the device
        self._memory: list[_PendingMemory] = []
        self._spans: list[_PendingSpan] = []
        self._kernels: list[tuple[str, str]] = []  # (layer, phase) in launch order
        backend.arena.observers.append(self._on_arena)

    def _on_arena(self, event: ArenaEvent) -> None:
        self._memory.append(_PendingMemory(self.backend.mark(self.backend.compute), event,
                                           len(self._kernels)))

    def span(self, name: str, phase: str, stream: Stream, start: Mark, end: Mark,
             kind: str = "kernel", nbytes: int = 0) -> None:
        self._spans.append(_PendingSpan(name, phase, stream.name, start, end, kind, nbytes))
        if kind == "kernel":
            self._kernels.append((name, phase))

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Host time inside is spent waiting for the device (an offload to finish, an
        upload to land), not issuing work: `host_ms` leaves it out."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._blocked_s += time.perf_counter() - start

    def issued(self) -> None:
        """The step's last work is issued: what follows only waits for it."""
        busy = time.perf_counter() - self._host_start - self._blocked_s
        self._host_ms = busy * 1e3

    def detach(self) -> None:
        if self._on_arena in self.backend.arena.observers:
            self.backend.arena.observers.remove(self._on_arena)

    def _owner(self, pending: _PendingMemory) -> tuple[str, str]:
        """The kernel an event belongs to: allocations are made before the
        kernel that uses them is launched, frees after the kernel that last used
        them, so an allocation goes to the next kernel and a free to the last."""
        if not self._kernels:
            return "", ""
        before = pending.kernels_before
        index = before if pending.event.op == "alloc" else before - 1
        last = len(self._kernels) - 1
        return self._kernels[0 if index < 0 else last if index > last else index]

    def finish(self, step: int, loss: float | None) -> StepRecord:
        """Resolve every mark; the caller has synchronized the backend."""
        self.detach()
        end = self.backend.mark(self.backend.compute)
        self.backend.synchronize()
        ms = self.backend.elapsed_ms
        memory = tuple(MemoryEvent(ms(self._start, p.mark), p.event.op, p.event.block.nbytes,
                                   str(p.event.block.kind), p.event.block.label, p.event.in_use,
                                   *self._owner(p)) for p in self._memory)
        spans = tuple(Span(s.name, s.phase, s.stream, ms(self._start, s.start),
                           ms(self._start, s.end), s.kind, s.nbytes) for s in self._spans)
        return StepRecord(step, ms(self._start, end), self.start_in_use, memory, spans, loss,
                          self.start_by_kind, self._host_ms, self.start_blocks)
