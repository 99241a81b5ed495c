"""The `cpu` backend: NumPy arrays, the host thread as the compute stream and a
worker thread as the memory stream, so copies really overlap compute."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vmem.backends.base import Backend, Event, Mark, Stream
from vmem.costs import DEFAULT_COST_MODEL, load_costs
from vmem.memory import DeviceArena


class CpuEvent(Event):
    def __init__(self) -> None:
        self._flag = threading.Event()

    def set(self) -> None:
        self._flag.set()

    def done(self) -> bool:
        return self._flag.is_set()

    def block(self) -> None:
        self._flag.wait()


class CpuMark(Mark):
    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds


class _Worker:
    """A stream as a thread running queued callables in order."""

    def __init__(self, name: str) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"vmem-{name}", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[], None]) -> None:
        self._queue.put(op)

    def _run(self) -> None:
        # Every op runs, even after one failed, so the events behind it are set
        # and nobody waits forever; the first failure is re-raised at drain().
        while (op := self._queue.get()) is not None:
            try:
                op()
            except BaseException as exc:
                self._error = self._error or exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def check(self) -> None:
        """Re-raise a failure of an op that has run, so the host stops before it
        reads what the failed op should have written."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def drain(self) -> BaseException | None:
        self._queue.join()
        error, self._error = self._error, None
        return error

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()


class CpuBackend(Backend):
    def __init__(self, capacity: int | None = None) -> None:
        self.name = "cpu"
        self.xp = np
        self.arena = DeviceArena(capacity)
        # Plans on the cpu are a GPU's (see DEFAULT_COST_MODEL); its clock is perf_counter.
        self.costs = load_costs(DEFAULT_COST_MODEL)
        self._memory_worker = _Worker("memory")

    def _is_compute(self, stream: Stream) -> bool:
        return stream == self.compute

    def launch(self, stream: Stream, op: Callable[[], Any], cost_ms: float = 0.0) -> None:
        if self._is_compute(stream):
            op()  # the host thread is the compute stream: in order, synchronous
        else:
            self._memory_worker.submit(op)

    def record(self, stream: Stream) -> Event:
        event = CpuEvent()
        self.launch(stream, event.set)
        return event

    def wait(self, stream: Stream, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        self.launch(stream, event.block)
        if self._is_compute(stream):
            self._memory_worker.check()

    def host_wait(self, event: Event) -> None:
        assert isinstance(event, CpuEvent)
        event.block()
        self._memory_worker.check()

    def pinned_empty(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, dtype=np.uint8)  # host memory is all the cpu backend has

    def copy_to_host(self, stream: Stream, src: Any, dst: np.ndarray | None,
                     cost_ms: float = 0.0) -> None:
        assert dst is not None
        self.launch(stream, lambda: np.copyto(dst, src))

    def copy_to_device(self, stream: Stream, src: np.ndarray | None, cost_ms: float = 0.0
                       ) -> np.ndarray:
        assert src is not None
        dst = np.empty_like(src)
        self.launch(stream, lambda: np.copyto(dst, src))
        return dst

    def mark(self, stream: Stream) -> Mark:
        mark = CpuMark()

        def stamp() -> None:
            mark.seconds = time.perf_counter()

        self.launch(stream, stamp)
        return mark

    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        assert isinstance(start, CpuMark) and isinstance(end, CpuMark)
        if start.seconds is None or end.seconds is None:
            raise RuntimeError("elapsed_ms on a mark its stream has not reached")
        return (end.seconds - start.seconds) * 1e3

    def synchronize(self) -> None:
        error = self._memory_worker.drain()
        if error is not None:
            raise error

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def facts(self) -> dict[str, Any]:
        import os
        import platform

        return {"backend": self.name, "processor": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "cost_model": f"{DEFAULT_COST_MODEL} (the roofline cpu plans are weighed on)"}

    def device_memory_bytes(self) -> None:
        return None  # host memory: any limit emulates a device of that size

    def close(self) -> None:
        self._memory_worker.stop()
