"""The `sim` backend: buffers with shapes and no data, and two stream clocks
driven by a cost model (a GPU preset's roofline, or measured costs from a
calibration file). The same executor, plan and arena as on a real device, so
its memory figures are the real ones to the byte; its times are the model's.

Each stream's clock is the time its queued work ends; the host's clock is when
the host may issue work (it moves only when the host waits for an event or
synchronizes; issuing itself takes no time). Work starts at max(stream clock,
host clock); a stream told to wait for an event starts its next work no earlier
than the event's time; a mark or an event on a stream is the time its next work
would start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vmem.backends.base import Backend, Event, Mark, Stream, bound_capacity
from vmem.costs import CalibratedCosts, CostModel, GpuSpec
from vmem.memory import DeviceArena


class SimEvent(Event):
    def __init__(self, t_ms: float) -> None:
        self.t_ms = t_ms

    def done(self) -> bool:
        return True  # the modeled work is "done" in simulated time


class SimMark(Mark):
    def __init__(self, t_ms: float) -> None:
        self.t_ms = t_ms


class SimBackend(Backend):
    def __init__(self, gpu: GpuSpec | None, capacity: int | None = None,
                 bounded: bool = True, costs: CostModel | None = None) -> None:
        """`capacity` bounds the arena; so does the GPU's memory if `bounded`, and
        a capacity above it is refused (UsageError). `costs` drives the clocks
        (default: the GPU's roofline; none without a GPU, where every launch
        takes no time: a dry run)."""
        if costs is not None:
            gpu = costs.gpu
        self.gpu = gpu
        self.bounded = bounded
        self.name = f"sim:{gpu.name}" if gpu else "sim"
        self.xp = None
        self.arena = DeviceArena(bound_capacity(capacity, self.device_memory_bytes(), self.name))
        self.costs = costs if costs is not None else (CostModel(gpu) if gpu else None)
        # each stream's clock, by the stream's name (a string hashes far faster than
        # the frozen dataclass, and a planner's dry runs ask millions of times)
        self._clock = {self.compute.name: 0.0, self.memory.name: 0.0}
        self._host = 0.0

    def device_memory_bytes(self) -> int | None:
        return self.gpu.memory_bytes if self.gpu is not None and self.bounded else None

    def set_capacity(self, capacity: int | None) -> None:
        """Change the emulated capacity; None gives back the modeled GPU's memory."""
        self.arena.capacity = bound_capacity(capacity, self.device_memory_bytes(), self.name)

    def _start(self, stream: Stream) -> float:
        # a comparison, not max(): a planner's dry runs ask millions of times
        clock, host = self._clock[stream.name], self._host
        return clock if clock > host else host

    def launch(self, stream: Stream, op: Callable[[], Any], cost_ms: float = 0.0) -> None:
        self._clock[stream.name] = self._start(stream) + cost_ms

    def record(self, stream: Stream) -> Event:
        return SimEvent(self._start(stream))

    def wait(self, stream: Stream, event: Event) -> None:
        assert isinstance(event, SimEvent)
        start = self._start(stream)
        self._clock[stream.name] = start if start > event.t_ms else event.t_ms

    def host_wait(self, event: Event) -> None:
        assert isinstance(event, SimEvent)
        if event.t_ms > self._host:
            self._host = event.t_ms

    def mark(self, stream: Stream) -> Mark:
        return SimMark(self._start(stream))

    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        assert isinstance(start, SimMark) and isinstance(end, SimMark)
        return end.t_ms - start.t_ms

    def synchronize(self) -> None:
        self._host = max(self._host, *self._clock.values())

    def pinned_empty(self, nbytes: int) -> None:
        return None

    def copy_to_host(self, stream: Stream, src: Any, dst: np.ndarray | None,
                     cost_ms: float = 0.0) -> None:
        self.launch(stream, lambda: None, cost_ms)

    def copy_to_device(self, stream: Stream, src: np.ndarray | None, cost_ms: float = 0.0
                       ) -> None:
        self.launch(stream, lambda: None, cost_ms)
        return None

    def asarray(self, host: np.ndarray) -> None:
        return None

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"backend": self.name}
        if self.gpu:
            facts.update(gpu=self.gpu.name, description=self.gpu.description,
                         memory_bytes=self.gpu.memory_bytes, tflops=self.gpu.tflops,
                         bandwidth_gbps=self.gpu.bandwidth_gbps, d2h_gbps=self.gpu.d2h_gbps,
                         h2d_gbps=self.gpu.h2d_gbps, launch_us=self.gpu.launch_us)
        if isinstance(self.costs, CalibratedCosts):
            cal = self.costs.calibration
            facts.update(calibration=cal.path, calibrated_profile=cal.profile,
                         calibrated_batch=cal.batch, calibrated_device=cal.device)
        return facts
