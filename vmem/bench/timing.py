"""Timing on the GPU with CUDA events, and the pieces every benchmark shares.

How a function is timed (`time_gpu`):
- warm-up calls first (compilation, module loads and pool growth stay out);
- inputs rotate among several buffers, together larger than a few times the L2
  cache, so a run does not find its input still on chip from the run before;
- before each batch of timed calls the stream is held by a short spin kernel, so the
  host enqueues the whole batch while the GPU waits and the calls then run back to
  back: the events measure GPU time, not Python's launch overhead;
- one event between consecutive calls; the figure is the median per-call time.

Not yet run on a GPU (see bench/results/README.md).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from vmem.errors import DeviceUnavailable

SPIN_SOURCE = r"""
extern "C" __global__ void vmem_bench_spin(long long cycles) {
    const long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""

#: Rotated inputs together span at least this many times the L2 cache.
L2_MULTIPLE = 3
MAX_BUFFERS = 32
#: Timed calls per spin-held batch.
BATCH = 25


def require_cuda(what: str) -> Any:
    """CuPy, or DeviceUnavailable with one line saying why there is no GPU."""
    from vmem.backends import cuda

    if not cuda.available():
        raise DeviceUnavailable(f"{what} needs CUDA: {cuda.unavailable_reason()}")
    import cupy

    return cupy


def torch_cuda() -> Any | None:
    """torch when it imports and sees CUDA, else None."""
    try:
        import torch
    except Exception:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    runs: int

    def gbps(self, nbytes: int) -> float:
        """Bytes read + written over the median time, in GB/s (1e9 bytes per second)."""
        return nbytes / (self.median_ms * 1e6) if self.median_ms > 0 else math.inf


def buffer_count(nbytes: int, l2_bytes: int) -> int:
    """How many input buffers to rotate among: together >= L2_MULTIPLE x L2, at least 2."""
    if nbytes <= 0:
        return 2
    return max(2, min(MAX_BUFFERS, math.ceil(L2_MULTIPLE * l2_bytes / nbytes)))


class GpuTimer:
    def __init__(self, cupy: Any) -> None:
        self.cp = cupy
        device = cupy.cuda.Device()
        attrs = device.attributes
        self.l2_bytes = int(attrs.get("L2CacheSize", 50 << 20))
        self.clock_khz = int(attrs.get("ClockRate", 0)) or 1_980_000  # a guess is enough
        self._spin = cupy.RawKernel(SPIN_SOURCE, "vmem_bench_spin")

    def spin(self, ms: float) -> None:
        import numpy as np

        self._spin((1,), (1,), (np.int64(int(ms * self.clock_khz)),))

    def time(self, fn: Callable[[int], Any], *, warmup: int, runs: int) -> Timing:
        """Median GPU time of fn(i) for i = 0 .. runs-1 (fn picks its buffer from i)."""
        cp = self.cp
        host_start = time.perf_counter()
        for i in range(max(1, warmup)):
            fn(i)
        cp.cuda.get_current_stream().synchronize()
        per_call_ms = (time.perf_counter() - host_start) * 1e3 / max(1, warmup)
        times: list[float] = []
        done = 0
        while done < runs:
            batch = min(BATCH, runs - done)
            # Hold the stream long enough for the host to enqueue the whole batch.
            self.spin(min(100.0, 0.2 + 2.0 * batch * per_call_ms))
            events = [cp.cuda.Event() for _ in range(batch + 1)]
            events[0].record()
            for j in range(batch):
                fn(done + j)
                events[j + 1].record()
            events[-1].synchronize()
            times += [cp.cuda.get_elapsed_time(events[j], events[j + 1]) for j in range(batch)]
            done += batch
        return Timing(statistics.median(times), min(times), len(times))


def device_line(cupy: Any) -> str:
    """'NVIDIA H100 80GB HBM3, CuPy 14.2, CUDA 12.8, CUPY_TF32=1, 2026-12-01'."""
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception:
        name = "unknown GPU"
    try:
        v = int(cupy.cuda.runtime.runtimeGetVersion())
        cuda = f"{v // 1000}.{(v % 1000) // 10}"
    except Exception:
        cuda = "?"
    torch = torch_cuda()
    torch_part = f", PyTorch {torch.__version__}" if torch is not None else ", no PyTorch"
    tf32 = os.environ.get("CUPY_TF32", "0")
    return (f"{name}, CuPy {getattr(cupy, '__version__', '?')}, CUDA {cuda}{torch_part}, "
            f"CUPY_TF32={tf32}, {date.today().isoformat()}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if math.isnan(v):
                return "–"
            return f"{v:.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    def numeric(i: int) -> bool:
        return any(isinstance(row[i], int | float) for row in rows)

    right = ["---:" if numeric(i) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rel_err(out: Any, ref: Any) -> float:
    import numpy as np

    out64 = np.asarray(out, dtype=np.float64)
    ref64 = np.asarray(ref, dtype=np.float64)
    finite = np.isfinite(ref64)
    scale = float(np.linalg.norm(ref64[finite]))
    return float(np.linalg.norm(out64[finite] - ref64[finite]) / (scale if scale > 0 else 1.0))
