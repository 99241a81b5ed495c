"""Collects a step's events as marks on the backend's streams, and resolves
them into times once the step has synchronized."""

from __future__ import annotations

from dataclasses import dataclass

from vmem.backends.base import Backend, Mark, Stream
from vmem.memory import ArenaEvent
from vmem.profiler.events import MemoryEvent, Span, StepRecord


@dataclass(frozen=True)
class _PendingSpan:
    name: str
    phase: str
    stream: str
    start: Mark
    end: Mark
    kind: str
    nbytes: int


class StepRecorder:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.start_in_use = backend.arena.in_use
        self._start = backend.mark(backend.compute)
        self._memory: list[tuple[Mark, ArenaEvent]] = []
        self._spans: list[_PendingSpan] = []
        backend.arena.observers.append(self._on_arena)

    def _on_arena(self, event: ArenaEvent) -> None:
        self._memory.append((self.backend.mark(self.backend.compute), event))

    def span(self, name: str, phase: str, stream: Stream, start: Mark, end: Mark,
             kind: str = "kernel", nbytes: int = 0) -> None:
        self._spans.append(_PendingSpan(name, phase, stream.name, start, end, kind, nbytes))

    def detach(self) -> None:
        if self._on_arena in self.backend.arena.observers:
            self.backend.arena.observers.remove(self._on_arena)

    def finish(self, step: int, loss: float | None) -> StepRecord:
        """Resolve every mark; the caller has synchronized the backend."""
        self.detach()
        end = self.backend.mark(self.backend.compute)
        self.backend.synchronize()
        ms = self.backend.elapsed_ms
        memory = tuple(MemoryEvent(ms(self._start, mark), e.op, e.block.nbytes, str(e.block.kind),
                                   e.block.label, e.in_use) for mark, e in self._memory)
        spans = tuple(Span(s.name, s.phase, s.stream, ms(self._start, s.start),
                           ms(self._start, s.end), s.kind, s.nbytes) for s in self._spans)
        return StepRecord(step, ms(self._start, end), self.start_in_use, memory, spans, loss)
