"""A stand-in for CuPy's device-side API, enough for `CudaBackend` to start, plan,
report and close on a machine without a GPU: a device of a chosen name and memory, a
memory pool that rounds allocations up to 512 bytes, keeps freed blocks cached and
enforces its limit as CuPy 14's does, streams and events that do nothing, and NumPy
for arrays. It checks vmem's side of the contract (which limit the pool gets, what
is reported, which cost model a device plans with), not CuPy.

    with fake_cupy(monkeypatch, "NVIDIA H100 PCIe") as cupy: backend = CudaBackend(0)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vmem.backends import cuda

ROUND = 512  # CuPy rounds every allocation up to this


class OutOfMemoryError(Exception):
    def __init__(self, size: int, total: int, limit: int) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: "
                         f"{total:,} bytes, limit set to: {limit:,} bytes).")
        self._size, self._total, self._limit = size, total, limit


class FakePool:
    """CuPy's MemoryPool as far as vmem uses it. `total_bytes` is what the pool holds
    from the device (in use and cached), `used_bytes` what is handed out."""

    def __init__(self) -> None:
        self.limit = 0  # CuPy's "no limit"
        self.used = 0
        self.cached = 0
        self.released = 0  # free_all_blocks calls

    def malloc(self, nbytes: int) -> int:
        size = -(-int(nbytes) // ROUND) * ROUND
        if self.cached >= size:  # a cached block serves it (no split kept apart here)
            self.cached -= size
        elif self.limit and self.used + self.cached + size > self.limit:
            raise OutOfMemoryError(size, self.total_bytes(), self.limit)
        self.used += size
        return size

    def free(self, size: int) -> None:
        self.used -= size
        self.cached += size

    def free_all_blocks(self) -> None:
        self.cached = 0
        self.released += 1

    def total_bytes(self) -> int:
        return self.used + self.cached

    def used_bytes(self) -> int:
        return self.used

    def get_limit(self) -> int:
        return self.limit

    def set_limit(self, size: int) -> None:
        if size < 0:
            raise ValueError("size must be non-negative")
        self.limit = int(size)


class _Nothing:
    """A stream, event or device: every call does nothing, `with` works."""

    ptr = 1
    done = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def make_cupy(device_name: str, total_memory: int) -> ModuleType:
    pool = FakePool()
    props = {"name": device_name.encode(), "totalGlobalMem": total_memory, "major": 9,
             "minor": 0, "multiProcessorCount": 132}
    runtime = SimpleNamespace(
        getDeviceCount=lambda: 1, getDevice=lambda: 0, setDevice=lambda index: None,
        getDeviceProperties=lambda index: props, runtimeGetVersion=lambda: 12040,
        driverGetVersion=lambda: 12040)
    module = ModuleType("cupy")
    module.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined]
    module.__version__ = "14.2-fake"  # type: ignore[attr-defined]
    module.cuda = SimpleNamespace(  # type: ignore[attr-defined]
        runtime=runtime, Device=_Nothing, Stream=_Nothing, Event=_Nothing,
        get_current_stream=lambda: _Nothing(),
        using_allocator=lambda allocator: contextlib.nullcontext(),
        memory=SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
        pinned_memory=SimpleNamespace())
    module.get_default_memory_pool = lambda: pool  # type: ignore[attr-defined]
    module.get_default_pinned_memory_pool = lambda: _Nothing()  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def fake_cupy(monkeypatch: pytest.MonkeyPatch, device_name: str = "NVIDIA H100 PCIe",
              total_memory: int = 81559 * 2**20) -> Iterator[ModuleType]:
    """CuPy's name bound to the stand-in while the block runs; vmem's cached answer
    to "is CUDA here" forgotten before and after."""
    module = make_cupy(device_name, total_memory)
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(cuda, "_probe_result", None)
    try:
        yield module
    finally:
        cuda._probe_result = None
