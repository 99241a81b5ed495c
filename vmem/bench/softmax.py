"""`vmem bench softmax` and `vmem bench topk`: vmem's CUDA softmax kernels against
PyTorch on the same inputs, timed as `vmem.bench.timing` describes.

GB/s counts the fewest bytes the operation must move: softmax reads its input once
and writes its output once (2 x rows x cols x 4 bytes in float32, x 2 in float16)
whatever a kernel really reads; top-k reads the input once and writes k values and
k int64 indices per row. So the safe kernel, which reads rows twice more, shows less
GB/s for the same work.

Not yet run on a GPU (see bench/results/README.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmem.bench.timing import (
    GpuTimer,
    Timing,
    buffer_count,
    device_line,
    markdown_table,
    rel_err,
    require_cuda,
    torch_cuda,
)

#: rows x columns of issue 5 (and DESIGN.md's PyTorch figures).
MAIN_SHAPES = [(8192, 1024), (1024, 8192), (256, 32768), (64, 131072), (16, 1 << 20)]
#: The paper's batch sizes over a sweep of columns.
SWEEP = {4000: [256, 1024, 4096, 16384, 65536],
         10: [1024, 4096, 16384, 65536, 262144, 1 << 20]}
#: Top-k: the k of the main table, and the k sweep at one shape (the paper: the gain
#: of fusion shrinks as k grows).
TOPK_K = 5
TOPK_SWEEP_SHAPE = (4000, 32768)
TOPK_SWEEP_K = [1, 5, 10, 15, 30]
#: Rows checked against the float64 reference (rows are independent).
CHECK_ROWS = 64
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-3}

#: DESIGN.md, H100 80GB HBM3, PyTorch 2.11: torch.softmax / softmax then top-5, in ms.
DESIGN_TORCH_MS = {(8192, 1024): (0.037, 0.335), (1024, 8192): (0.049, 0.210),
                   (256, 32768): (0.042, 0.233), (64, 131072): (0.070, 0.252),
                   (16, 1 << 20): (0.424, 0.705)}


def parse_shape(text: str) -> tuple[int, int]:
    """'8192x1024' -> (8192, 1024)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        rows = cols = 0
    if rows < 1 or cols < 1:
        raise ValueError(f"a shape is ROWSxCOLS with positive integers, e.g. 8192x1024; "
                         f"got '{text}'")
    return rows, cols


@dataclass
class Inputs:
    """Rotated inputs of one shape and dtype, on CuPy and (shared, through DLPack) torch."""

    xs: list[Any]
    txs: list[Any] | None

    def pick(self, i: int) -> Any:
        return self.xs[i % len(self.xs)]

    def tpick(self, i: int) -> Any:
        assert self.txs is not None
        return self.txs[i % len(self.txs)]


def _inputs(cp: Any, torch: Any, timer: GpuTimer, shape: tuple[int, int],
            dtype: Any = np.float32) -> Inputs:
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    n = buffer_count(nbytes, timer.l2_bytes)
    xs = [(cp.random.standard_normal(shape, dtype=cp.float32) * 4).astype(dtype)
          for _ in range(n)]
    txs = [torch.from_dlpack(x) for x in xs] if torch is not None else None
    return Inputs(xs, txs)


def _release(cp: Any, torch: Any) -> None:
    cp.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()


def _fmt(t: Timing | None) -> float | None:
    return None if t is None else t.median_ms


def _ratio(a: Timing | None, b: Timing | None) -> float | None:
    return None if a is None or b is None else a.median_ms / b.median_ms


def _check_softmax(cp: Any, cs: Any, x: Any) -> float:
    from vmem.kernels import softmax as sm

    rows = min(CHECK_ROWS, x.shape[0])
    ref = sm.safe_softmax(cp.asnumpy(x[:rows]).astype(np.float64))
    return max(rel_err(cp.asnumpy(cs.online_softmax(x)[:rows]), ref),
               rel_err(cp.asnumpy(cs.safe_softmax(x)[:rows]), ref))


def _prepare(what: str, calls: Any) -> tuple[Any, Any, Any, GpuTimer]:
    """CuPy, the kernel module with the kernels `calls` needs compiled in one NVRTC run
    (not one per kernel; CuPy's cache may be in memory only), torch, a timer."""
    cp = require_cuda(what)
    from vmem.kernels import cuda_softmax as cs

    start = time.perf_counter()
    names = cs.kernel_names(calls)
    cs.precompile(names)
    print(f"vmem bench {what}: {len(names)} kernels compiled or loaded in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return cp, cs, torch_cuda(), GpuTimer(cp)


def softmax_rows(shapes: Sequence[tuple[int, int]], *, runs: int, warmup: int, check: bool,
                 cp: Any, cs: Any, torch: Any, timer: GpuTimer, dtype: Any = np.float32
                 ) -> list[list[Any]]:
    rows_out = []
    for shape in shapes:
        inputs = _inputs(cp, torch, timer, shape, dtype)
        nbytes = 2 * shape[0] * shape[1] * np.dtype(dtype).itemsize
        online = timer.time(lambda i, inp=inputs: cs.online_softmax(inp.pick(i)),
                            warmup=warmup, runs=runs)
        safe = timer.time(lambda i, inp=inputs: cs.safe_softmax(inp.pick(i)),
                          warmup=warmup, runs=runs)
        ref = None
        if torch is not None:
            ref = timer.time(lambda i, inp=inputs: torch.softmax(inp.tpick(i), dim=-1),
                             warmup=warmup, runs=runs)
        err = _check_softmax(cp, cs, inputs.xs[0]) if check else None
        rows_out.append([f"{shape[0]}×{shape[1]}", cs.describe_plan(shape, dtype=dtype),
                         online.median_ms, online.gbps(nbytes), safe.median_ms,
                         safe.gbps(nbytes), _ratio(safe, online), _fmt(ref),
                         None if ref is None else ref.gbps(nbytes), _ratio(ref, online),
                         _err_cell(err, dtype)])
        del inputs
        _release(cp, torch)
    return rows_out


def _err_cell(err: float | None, dtype: Any = np.float32) -> str:
    if err is None:
        return "not checked"
    return f"{err:.1e}" + ("" if err < TOLERANCE[np.dtype(dtype)] else " FAIL")


SOFTMAX_HEADERS = ["rows×cols", "online path", "online ms", "online GB/s", "safe ms",
                   "safe GB/s", "safe/online", "torch ms", "torch GB/s", "torch/online",
                   "max rel err"]


def bench_softmax(shapes: Sequence[tuple[int, int]] | None = None, *, sweep: bool = True,
                  runs: int = 50, warmup: int = 10, check: bool = True) -> str:
    """The markdown report of `vmem bench softmax`."""
    main = list(shapes) if shapes else MAIN_SHAPES
    every = main + ([(b, c) for b, cols in SWEEP.items() for c in cols]
                    if sweep and not shapes else [])

    def calls(stand_in: Any) -> None:
        from vmem.kernels import cuda_softmax as cs

        for shape in every:
            cs.online_softmax(stand_in(shape))
            cs.safe_softmax(stand_in(shape))
        for shape in main:
            cs.online_softmax(stand_in(shape, np.float16))
            cs.safe_softmax(stand_in(shape, np.float16))

    cp, cs, torch, timer = _prepare("softmax", calls)
    kw = dict(runs=runs, warmup=warmup, check=check, cp=cp, cs=cs, torch=torch, timer=timer)
    parts = ["# vmem bench softmax", "", device_line(cp), "",
             f"Median of {runs} runs after {warmup} warm-up calls; GB/s = (input + output "
             "bytes) / time; safe = three passes (max, sum, output), online = (m, d) in one "
             f"pass then the output pass; errors against float64 on the first {CHECK_ROWS} "
             "rows.", ""]
    rows = softmax_rows(main, **kw)
    parts += [markdown_table(SOFTMAX_HEADERS, rows), ""]
    parts += _softmax_targets(rows, main)
    parts += ["", "## float16 in and out, computed in float32", "",
              markdown_table(SOFTMAX_HEADERS, softmax_rows(main, **kw, dtype=np.float16))]
    if sweep and not shapes:
        for batch, columns in SWEEP.items():
            parts += ["", f"## batch {batch}", ""]
            parts.append(markdown_table(SOFTMAX_HEADERS,
                                        softmax_rows([(batch, c) for c in columns], **kw)))
    return "\n".join(parts) + "\n"


def _softmax_targets(rows: list[list[Any]], shapes: Sequence[tuple[int, int]]) -> list[str]:
    """Issue 5's softmax targets, read off the main table."""
    lines = ["", "Targets (issue 5):"]
    if rows and all(r[9] is not None for r in rows):
        slow = [r[0] for r in rows if r[9] < 1.0]
        lines.append("- online at least as fast as torch.softmax on every shape: "
                     + ("yes" if not slow else "no, slower on " + ", ".join(slow)))
    else:
        lines.append("- online at least as fast as torch.softmax: n/a (no PyTorch here)")
    wide = [(s, r[6]) for s, r in zip(shapes, rows, strict=True) if s[1] >= 4096]
    lines.append("- online >= 1.3x safe from 4096 columns: "
                 + ", ".join(f"{s[0]}×{s[1]} {v:.2f}x" for s, v in wide))
    for s, r in zip(shapes, rows, strict=True):
        if s == (16, 1 << 20):
            lines.append(f"- 16×1048576 online above 1500 GB/s: {r[3]:,.0f} GB/s "
                         f"({'yes' if r[3] >= 1500 else 'no'}; torch.softmax 317 GB/s in "
                         "DESIGN.md)")
    return lines


# ---------------------------------------------------------------------------- top-k


def _check_topk(cp: Any, cs: Any, x: Any, k: int) -> float:
    from vmem.kernels import softmax as sm

    rows = min(CHECK_ROWS, x.shape[0])
    values, indices = cs.softmax_topk(x, k)
    ref_v, ref_i = sm.softmax_topk(cp.asnumpy(x[:rows]).astype(np.float64), k)
    if not np.array_equal(cp.asnumpy(indices[:rows]), ref_i):
        return float("inf")
    return rel_err(cp.asnumpy(values[:rows]), ref_v)


def topk_rows(cases: Sequence[tuple[tuple[int, int], int]], *, runs: int, warmup: int,
              check: bool, cp: Any, cs: Any, torch: Any, timer: GpuTimer) -> list[list[Any]]:
    out = []
    for shape, k in cases:
        inputs = _inputs(cp, torch, timer, shape)
        nbytes = shape[0] * shape[1] * 4 + shape[0] * k * (4 + 8)
        fused = timer.time(lambda i, inp=inputs, k=k: cs.softmax_topk(inp.pick(i), k),
                           warmup=warmup, runs=runs)
        ref = None
        if torch is not None:
            ref = timer.time(lambda i, inp=inputs, k=k: torch.topk(
                torch.softmax(inp.tpick(i), dim=-1), k, dim=-1), warmup=warmup, runs=runs)
        err = _check_topk(cp, cs, inputs.xs[0], k) if check else None
        design = DESIGN_TORCH_MS.get(shape, (None, None))[1] if k == 5 else None
        out.append([f"{shape[0]}×{shape[1]}", k, fused.median_ms, fused.gbps(nbytes),
                    _fmt(ref), None if ref is None else ref.gbps(nbytes), _ratio(ref, fused),
                    design, _err_cell(err)])
        del inputs
        _release(cp, torch)
    return out


TOPK_HEADERS = ["rows×cols", "k", "fused ms", "fused GB/s", "torch softmax+topk ms",
                "torch GB/s", "torch/fused", "DESIGN.md torch ms", "max rel err"]


def bench_topk(shapes: Sequence[tuple[int, int]] | None = None, *, ks: Sequence[int] = (TOPK_K,),
               sweep: bool = True, runs: int = 50, warmup: int = 10, check: bool = True) -> str:
    """The markdown report of `vmem bench topk`."""
    main = list(shapes) if shapes else MAIN_SHAPES
    cases = [(s, k) for s in main for k in ks]
    if sweep and not shapes:
        cases += [(TOPK_SWEEP_SHAPE, k) for k in TOPK_SWEEP_K]
        cases += [((b, c), TOPK_K) for b, cols in SWEEP.items() for c in cols]

    def calls(stand_in: Any) -> None:
        from vmem.kernels import cuda_softmax as cs

        for shape, k in cases:
            cs.softmax_topk(stand_in(shape), k)

    cp, cs, torch, timer = _prepare("topk", calls)
    kw = dict(runs=runs, warmup=warmup, check=check, cp=cp, cs=cs, torch=torch, timer=timer)
    parts = ["# vmem bench topk", "", device_line(cp), "",
             "Fused online softmax + top-k (one read of the input) against torch.softmax "
             f"then torch.topk. Median of {runs} runs after {warmup} warm-up calls; GB/s = "
             "(input + k values + k int64 indices per row) / time; indices checked exactly "
             f"and values against float64 on the first {CHECK_ROWS} rows.", ""]
    rows = topk_rows([(s, k) for s in main for k in ks], **kw)
    parts += [markdown_table(TOPK_HEADERS, rows), ""]
    wide = [r for s, r in zip([s for s in main for _ in ks], rows, strict=True)
            if s[1] >= 32768 and r[1] == 5]
    if wide:
        parts += ["Target (issue 5): fused top-5 at least 5x torch softmax + topk from 32768 "
                  "columns: " + ", ".join(f"{r[0]} " + ("–" if r[6] is None else f"{r[6]:.1f}x")
                                          for r in wide), ""]
    if sweep and not shapes:
        parts += [f"## k sweep at {TOPK_SWEEP_SHAPE[0]}×{TOPK_SWEEP_SHAPE[1]}", ""]
        parts.append(markdown_table(TOPK_HEADERS, topk_rows(
            [(TOPK_SWEEP_SHAPE, k) for k in TOPK_SWEEP_K], **kw)))
        for batch, columns in SWEEP.items():
            parts += ["", f"## batch {batch}, k = {TOPK_K}", ""]
            parts.append(markdown_table(TOPK_HEADERS, topk_rows(
                [((batch, c), TOPK_K) for c in columns], **kw)))
    return "\n".join(parts) + "\n"
