"""`vmem bench attention`: vmem's causal flash attention kernels
(vmem.kernels.cuda_attention) against PyTorch's
scaled_dot_product_attention(is_causal=True) on the same CuPy buffers (shared through
DLPack), forward alone and forward + backward, float32 and float16, timed as
`vmem.bench.timing` describes.

TFLOP/s count causal attention's useful work, half of the (T x T) score matrix:
forward 2 * N * heads * T^2 * d (QK^T and PV), forward + backward 3.5 times that (the
backward pass's five products, FlashAttention's convention), whatever a kernel
recomputes. vmem's kernels use CUDA cores (no tensor cores); PyTorch picks its own
backend (flash or memory-efficient kernels, tensor cores in float16).

Not yet run on a GPU: these kernels are "not verified on a GPU" until
`scripts/gpu-check` has run them on a card.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from vmem.bench.timing import (
    GpuTimer,
    buffer_count,
    device_line,
    markdown_table,
    rel_err,
    require_cuda,
    torch_cuda,
)

#: (N, heads, T, d): GPT-2 small and medium at T = 1024, longer sequences, a head of 128.
SHAPES = [(8, 12, 1024, 64), (4, 16, 1024, 64), (2, 12, 2048, 64), (1, 16, 4096, 64),
          (4, 8, 1024, 128)]
#: Relative error (2-norm) against PyTorch above which a row says FAIL.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float16): 5e-3}
DTYPES = (np.float32, np.float16)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'8x12x1024x64' -> (8, 12, 1024, 64): N x heads x T x d."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"a shape is NxHEADSxTxD with positive integers, e.g. 8x12x1024x64; "
                         f"got '{text}'")
    if shape[3] > 128:
        raise ValueError(f"the kernels take heads of up to 128, got d = {shape[3]} in '{text}'")
    return shape  # type: ignore[return-value]


def forward_flops(shape: tuple[int, int, int, int]) -> float:
    n, h, t, d = shape
    return 2.0 * n * h * t * t * d


def _tflops(flops: float, ms: float | None) -> float | None:
    return None if ms is None or ms <= 0 else flops / (ms * 1e9)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def _err_cell(err: float | None, dtype: Any) -> str:
    if err is None:
        return "not checked"
    return f"{err:.1e}" + ("" if err < TOLERANCE[np.dtype(dtype)] else " FAIL")


def _row(shape: tuple[int, int, int, int], dtype: Any, *, runs: int, warmup: int,
         backward: bool, cp: Any, ca: Any, torch: Any, timer: GpuTimer) -> list[Any]:
    """One table row: vmem's kernels and torch's SDPA on the same rotated buffers."""
    nbytes = 4 * int(np.prod(shape)) * np.dtype(dtype).itemsize  # q, k, v, d_out
    sets = [[cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype)
             for _ in range(4)] for _ in range(buffer_count(nbytes, timer.l2_bytes))]

    def step(i: int) -> None:
        q, k, v, d_out = sets[i % len(sets)]
        out, lse = ca.flash_forward(q, k, v)
        ca.flash_backward(d_out, q, k, v, out, lse)

    fwd = timer.time(lambda i: ca.flash_forward(*sets[i % len(sets)][:3]), warmup=warmup,
                     runs=runs).median_ms
    both = timer.time(step, warmup=warmup, runs=runs).median_ms if backward else None
    t_fwd = t_both = err = None
    if torch is not None:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        leaves = [[torch.from_dlpack(a).requires_grad_(j < 3) for j, a in enumerate(s)]
                  for s in sets]

        def torch_step(i: int) -> None:
            q, k, v, d_out = leaves[i % len(leaves)]
            sdpa(q, k, v, is_causal=True).backward(d_out)

        # a training forward pass, as vmem's (which saves the log-sum-exp): inputs that
        # require gradients, so torch saves what its backward pass needs too
        t_fwd = timer.time(lambda i: sdpa(*leaves[i % len(leaves)][:3], is_causal=True),
                           warmup=warmup, runs=runs).median_ms
        if backward:
            t_both = timer.time(torch_step, warmup=warmup, runs=runs).median_ms
        # errors on the first set: the output, dQ, dK and dV against torch's
        q, k, v, d_out = leaves[0]
        for a in (q, k, v):
            a.grad = None
        expected = sdpa(q, k, v, is_causal=True)
        expected.backward(d_out)
        out, lse = ca.flash_forward(*sets[0][:3])
        got = [out, *ca.flash_backward(sets[0][3], *sets[0][:3], out, lse)]
        want = [expected.detach(), q.grad, k.grad, v.grad]
        err = max(rel_err(cp.asnumpy(g).astype(np.float32), w.float().cpu().numpy())
                  for g, w in zip(got, want, strict=True))
    flops = forward_flops(shape)
    return ["×".join(map(str, shape)), fwd, _tflops(flops, fwd), t_fwd, _ratio(fwd, t_fwd),
            both, _tflops(3.5 * flops, both), t_both, _ratio(both, t_both), _err_cell(err, dtype)]


def _rows(shapes: Sequence[tuple[int, int, int, int]], dtype: Any, **kw: Any
          ) -> list[list[Any]]:
    rows = []
    for shape in shapes:
        rows.append(_row(shape, dtype, **kw))
        kw["cp"].get_default_memory_pool().free_all_blocks()
        if kw["torch"] is not None:
            kw["torch"].cuda.empty_cache()
    return rows


HEADERS = ["N×heads×T×d", "vmem fwd ms", "vmem fwd TFLOP/s", "torch fwd ms", "vmem/torch fwd",
           "vmem fwd+bwd ms", "vmem fwd+bwd TFLOP/s", "torch fwd+bwd ms", "vmem/torch fwd+bwd",
           "rel err vs torch"]


def bench_attention(shapes: Sequence[tuple[int, int, int, int]] | None = None, *,
                    runs: int = 20, warmup: int = 3, backward: bool = True) -> str:
    """The markdown report of `vmem bench attention`. Raises DeviceUnavailable (one line)
    without a GPU."""
    cp = require_cuda("attention")
    from vmem.kernels import cuda_attention as ca

    shapes = list(shapes) if shapes else SHAPES
    start = time.perf_counter()
    names = ca.kernel_names({s[3] for s in shapes}, DTYPES)
    ca.precompile(names)
    print(f"vmem bench attention: {len(names)} kernels compiled or loaded in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    torch = torch_cuda()
    timer = GpuTimer(cp)
    kw = dict(runs=runs, warmup=warmup, backward=backward, cp=cp, ca=ca, torch=torch,
              timer=timer)
    parts = ["# vmem bench attention", "", device_line(cp), "",
             f"Causal attention, median of {runs} runs after {warmup} warm-up calls; "
             "TFLOP/s = causal FLOPs (forward 2·N·heads·T²·d, forward + backward 3.5 times "
             "that) / time; vmem/torch > 1 means vmem is slower. Errors: the largest "
             "relative 2-norm error of the output, dQ, dK and dV against torch's. vmem's "
             "kernels are not verified on a GPU before this report.", ""]
    for dtype in DTYPES:
        title = "float32" if dtype == np.float32 else "float16 in and out, computed in float32"
        parts += [f"## {title}", "", markdown_table(HEADERS, _rows(shapes, dtype, **kw)), ""]
    return "\n".join(parts)
