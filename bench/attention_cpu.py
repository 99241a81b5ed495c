"""Flash against materialized causal attention on the CPU (NumPy, float32):
time and peak of the forward and backward passes at T = 256, 1024 and 4096.
Peak is the most memory the pass allocates beyond its inputs (tracemalloc,
which sees NumPy's buffers).

    python bench/attention_cpu.py [--heads 2] [--dim 64] [--lengths 256 1024 4096]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from vmem.kernels.attention import (
    TILE,
    attention_backward,
    attention_forward,
    flash_backward,
    flash_forward,
)
from vmem.units import format_bytes


def measured(run: Callable[[], object]) -> tuple[float, int]:
    """Seconds (the best of three) and peak bytes allocated of one call."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    run()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, NumPy {np.__version__}, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; N={args.batch}, heads={args.heads}, "
          f"D={args.dim}, float32, flash tile {TILE} keys; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| T | pass | materialized ms | materialized peak | flash ms | flash peak |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for t in args.lengths:
        for row in rows((args.batch, args.heads, t, args.dim)):
            print(row, flush=True)


def rows(shape: tuple[int, int, int, int]) -> list[str]:
    """The forward and backward rows at one shape."""
    rng = np.random.default_rng(0)
    q, k, v, d_out = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    _, p = attention_forward(np, q, k, v)
    out, lse = flash_forward(np, q, k, v)
    passes = {
        "forward": (lambda: attention_forward(np, q, k, v),
                    lambda: flash_forward(np, q, k, v)),
        "backward": (lambda: attention_backward(np, d_out, q, k, v, p),
                     lambda: flash_backward(np, d_out, q, k, v, out, lse)),
    }
    lines = []
    for phase, (materialized, flash) in passes.items():
        m_s, m_peak = measured(materialized)
        f_s, f_peak = measured(flash)
        lines.append(f"| {shape[2]} | {phase} | {m_s * 1e3:.1f} | {format_bytes(m_peak)} | "
                     f"{f_s * 1e3:.1f} | {format_bytes(f_peak)} |")
    return lines

if __name__ == "__main__":
    main()
