"""The backend contract. Policy lives above it (plans, the executor's schedule),
mechanism below it (arrays, streams, copies, clocks).

A backend owns the device arena, two streams (`compute` and `memory`), events
between them, a clock read through marks recorded on a stream, and asynchronous
copies between device arrays and pinned host buffers. Streams are always passed
explicitly, never taken from a "current stream" context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmem.costs import CostModel
from vmem.errors import UsageError
from vmem.memory import DeviceArena
from vmem.units import format_bytes


def bound_capacity(limit: int | None, device_bytes: int | None, device: str) -> int | None:
    """The capacity a device's arena gets for a memory limit: the limit, or the
    device's own memory where none is given (None: no bound, as on cpu). A
    limit above the device's memory could not be honoured, so it is refused
    rather than reported as if it were the capacity."""
    if limit is None or device_bytes is None:
        return device_bytes if limit is None else limit
    if limit > device_bytes:
        raise UsageError(
            f"--memory-limit: {format_bytes(limit)} is more than {device}'s memory, "
            f"{format_bytes(device_bytes)} ({device_bytes:,} bytes); accepted: a size up to "
            "that, or no --memory-limit to use the whole device")
    return limit


@dataclass(frozen=True)
class Stream:
    name: str  # "compute" | "memory"


COMPUTE = Stream("compute")
MEMORY = Stream("memory")


class Event(ABC):
    """A point in a stream's work; `wait` makes another stream wait for it."""

    @abstractmethod
    def done(self) -> bool: ...


class Mark:  # noqa: B903 - a marker type each backend subclasses
    """A timestamp taken when a stream reaches it; readable after synchronize()."""


class Backend(ABC):
    #: e.g. "cpu", "cuda:0", "sim:titan-x"
    name: str
    #: the array module (numpy or cupy); None on a backend that runs no kernels
    xp: Any
    arena: DeviceArena
    compute: Stream = COMPUTE
    memory: Stream = MEMORY
    #: the cost model the device's plans come from (a policy weighs layer and copy
    #: times on it), which a backend without kernels also advances its clocks by: a
    #: sim GPU's roofline or calibration, the preset matching a CUDA device's name, the
    #: default model on cpu (`vmem.costs.DEFAULT_COST_MODEL`); None only on a dry run's
    #: sim, where no time passes
    costs: CostModel | None = None

    @property
    def runs_kernels(self) -> bool:
        return self.xp is not None

    @abstractmethod
    def launch(self, stream: Stream, op: Callable[[], Any], cost_ms: float = 0.0) -> None:
        """Run `op` on `stream` (in order with the stream's other work). A backend
        without kernels advances the stream's modeled clock by `cost_ms` instead."""

    @abstractmethod
    def record(self, stream: Stream) -> Event: ...

    @abstractmethod
    def wait(self, stream: Stream, event: Event) -> None:
        """Make `stream` wait, without blocking the host, until `event` is done."""

    @abstractmethod
    def host_wait(self, event: Event) -> None:
        """Block the host until `event` is done (vDNN's end-of-layer synchronization:
        a device buffer is released only after its offload copy has completed)."""

    @abstractmethod
    def pinned_empty(self, nbytes: int) -> np.ndarray | None:
        """A host buffer of `nbytes` bytes (uint8), page-locked where the device
        needs that for asynchronous copies; None on a backend without data."""

    @abstractmethod
    def copy_to_host(self, stream: Stream, src: Any, dst: np.ndarray | None,
                     cost_ms: float = 0.0) -> None:
        """Copy device array `src` into host array `dst` on `stream`, asynchronously.
        The caller keeps `src` alive until an event recorded after it is done."""

    @abstractmethod
    def copy_to_device(self, stream: Stream, src: np.ndarray | None, cost_ms: float = 0.0
                       ) -> Any:
        """A new device array holding host array `src`, filled on `stream`: its
        contents are valid once an event recorded after this call is done. The
        array's memory is ordered with the compute stream's allocations."""

    @abstractmethod
    def mark(self, stream: Stream) -> Mark: ...

    @abstractmethod
    def elapsed_ms(self, start: Mark, end: Mark) -> float:
        """Milliseconds between two marks; both streams must have reached them."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block the host until both streams are idle; re-raise a stream's failure."""

    def set_capacity(self, capacity: int | None) -> None:
        """Change the emulated device capacity (None: no limit)."""
        self.arena.capacity = capacity

    def device_memory_bytes(self) -> int | None:
        """The device's own memory, which no memory limit may exceed; None where
        nothing bounds a limit (the cpu backend, whose "device" is host memory).
        By default the `total_memory_bytes` the device reports in `facts()`."""
        total = self.facts().get("total_memory_bytes")
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    def check_memory_limit(self, limit: int | None) -> None:
        """Refuse a memory limit above the device's own memory (see `bound_capacity`)."""
        if limit is not None:
            bound_capacity(limit, self.device_memory_bytes(), self.name)

    def asarray(self, host: np.ndarray) -> Any:
        """Copy a host array to the device (untracked: the caller accounts it)."""
        return self.xp.asarray(host)

    def to_host(self, array: Any) -> np.ndarray:
        """A host copy of a device array, never a view of it: what the caller keeps
        does not change as training goes on (on cpu the device array is a NumPy
        array too)."""
        return np.array(array, copy=True)

    def write_from_host(self, array: Any, host: np.ndarray) -> None:
        """Overwrite device array `array` with host array `host` (same shape), in
        place: no device memory is allocated; done when this returns."""
        array[...] = host

    def facts(self) -> dict[str, Any]:
        """What the report shows about the device (name, memory, driver...)."""
        return {"backend": self.name}

    def pool_reserved_bytes(self) -> int | None:
        """Bytes the array library's own pool holds, where there is one."""
        return None

    def pool_peak_bytes(self) -> int | None:
        """The most bytes the array library's pool has held since the backend was
        made, where there is one: what the device really held, beside the arena's
        peak of what vmem declares."""
        return None

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Stop worker threads and release what the backend holds."""
