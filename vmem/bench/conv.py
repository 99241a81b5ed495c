"""`vmem bench conv`: vmem's convolution layer (layers/conv.py, through the layer API
with CuPy as the array module) against torch.nn.functional.conv2d, for DESIGN.md's four
VGG-16 layer shapes (3x3, padding 1).

TF32: CuPy 14.2 reads CUPY_TF32 at the first float32 GEMM of the process and keeps it
(cupy/_core/_routines_linalg.pyx `get_compute_type`), and only its 2-D path (dot ->
cublasGemmEx) uses it; the layer's GEMMs are cuBLAS strided-batched calls of its own
(vmem.kernels.gemm), which follow the cuBLAS handle's math mode instead. So with
CUPY_TF32 set this sets that mode too (`use_tf32_math_mode`, as the cuda backend
does), and PyTorch is set to match (cuDNN and matmul TF32 on exactly when CUPY_TF32
asks for it); the report says which GEMMs ran in TF32. PyTorch runs with
cudnn.benchmark on (its fastest algorithm).

Not yet run on a GPU (see bench/results/README.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from vmem.bench.timing import (
    GpuTimer,
    device_line,
    markdown_table,
    rel_err,
    require_cuda,
    torch_cuda,
)
from vmem.kernels.cuda_module import kernels_on

#: (in channels, out channels, height = width): DESIGN.md's table, batch 64.
LAYERS = [(64, 64, 224), (128, 128, 112), (256, 256, 56), (512, 512, 14)]
#: DESIGN.md, H200, batch 64, TF32: PyTorch conv forward, ms.
DESIGN_TORCH_MS = {(64, 64, 224): 1.9, (128, 128, 112): 1.1, (256, 256, 56): 0.8,
                   (512, 512, 14): 0.2}


def _pick_algorithms(algorithms: Sequence[Any], every: bool) -> list[Any]:
    """Every algorithm, or the first listed of each family (the name before ':'), which
    the layer lists fastest first."""
    if every:
        return list(algorithms)
    seen: dict[str, Any] = {}
    for algo in algorithms:
        seen.setdefault(algo.name.split(":")[0], algo)
    return list(seen.values())


def _layer_rows(cp: Any, torch: Any, timer: GpuTimer, shape: tuple[int, int, int],
                batch: int, runs: int, warmup: int, backward: bool, every_algorithm: bool,
                rng: np.random.Generator) -> list[list[Any]]:
    """One table row per algorithm of one layer shape."""
    from vmem.layers.base import Context
    from vmem.layers.conv import Conv

    c, o, hw = shape
    layer = Conv(name=f"conv{c}_{o}_{hw}", out_channels=o, kernel=3, pad=1)
    in_shape = (batch, c, hw, hw)
    params = {k: cp.asarray(v) for k, v in layer.init_params([in_shape], rng).items()}
    x = cp.random.standard_normal(in_shape, dtype=cp.float32)
    flops = 2 * batch * o * hw * hw * c * 9
    ctx = Context(train=True)
    ref_y = torch_fwd = torch_bwd = None
    if torch is not None:
        conv = torch.nn.functional.conv2d
        tx, tw = torch.from_dlpack(x), torch.from_dlpack(params["weight"])
        tb = torch.from_dlpack(params["bias"]) if "bias" in params else None
        torch_fwd = timer.time(lambda i: conv(tx, tw, tb, padding=1), warmup=warmup, runs=runs)
        ref_y = conv(tx, tw, tb, padding=1)
        if backward:
            tdy = torch.randn_like(ref_y)
            grad = torch.ops.aten.convolution_backward
            torch_bwd = timer.time(lambda i: grad(tdy, tx, tw, [o], [1, 1], [1, 1], [1, 1], False,
                                                  [0, 0], 1, [True, True, True]),
                                   warmup=warmup, runs=runs)
    rows = []
    picked = _pick_algorithms(layer.algorithms([in_shape], 4), every_algorithm)
    # the fastest algorithm once more with the strided-copy im2col, where the kernels ran
    variants = [(algo, False) for algo in picked] + (
        [(picked[0], True)] if kernels_on(cp, "im2col") else [])
    for algo, strided in variants:
        with _strided_im2col(strided):
            fwd = timer.time(lambda i, algo=algo: layer.forward(cp, [x], params, algo, ctx),
                             warmup=warmup, runs=runs)
            y, saved = layer.forward(cp, [x], params, algo, ctx)
            err = None if ref_y is None else rel_err(cp.asnumpy(y), ref_y.cpu().numpy())
            bwd = None
            if backward:
                dy = cp.random.standard_normal(y.shape, dtype=cp.float32)
                bwd = timer.time(lambda i, algo=algo, y=y, saved=saved, dy=dy: layer.backward(
                    cp, dy, [x], y, params, saved, algo, [in_shape], [True]),
                    warmup=min(warmup, 2), runs=runs)
        name = f"{algo.name}, strided copies" if strided else algo.name
        rows.append([f"{c}→{o}, {hw}²", name, algo.workspace_bytes / 2**30,
                     fwd.median_ms, flops / (fwd.median_ms * 1e9),
                     None if torch_fwd is None else torch_fwd.median_ms,
                     None if torch_fwd is None else fwd.median_ms / torch_fwd.median_ms,
                     DESIGN_TORCH_MS.get(shape) if batch == 64 else None,
                     None if bwd is None else bwd.median_ms,
                     None if torch_bwd is None else torch_bwd.median_ms,
                     "–" if err is None else f"{err:.1e}"])
        y = saved = dy = None
        cp.get_default_memory_pool().free_all_blocks()
    return rows


@contextlib.contextmanager
def _strided_im2col(on: bool) -> Iterator[None]:
    """With `on`, the layer's im2col and col2im use the strided-copy array code."""
    if not on:
        yield
        return
    previous = os.environ.get("VMEM_CUDA_IM2COL")
    os.environ["VMEM_CUDA_IM2COL"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["VMEM_CUDA_IM2COL"]
        else:
            os.environ["VMEM_CUDA_IM2COL"] = previous


def bench_conv(*, batch: int = 64, runs: int = 10, warmup: int = 3, backward: bool = True,
               every_algorithm: bool = False, layers: Sequence[tuple[int, int, int]] = LAYERS
               ) -> str:
    """The markdown report of `vmem bench conv`."""
    from vmem.backends.cuda import restore_math_mode, tf32_requested, use_tf32_math_mode

    cp = require_cuda("conv")
    torch = torch_cuda()
    tf32 = tf32_requested()
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    timer = GpuTimer(cp)
    rng = np.random.default_rng(0)
    rows = []
    previous_mode, tf32_gemms = use_tf32_math_mode()
    try:
        for shape in layers:
            rows += _layer_rows(cp, torch, timer, shape, batch, runs, warmup, backward,
                                every_algorithm, rng)
            cp.get_default_memory_pool().free_all_blocks()
            if torch is not None:
                torch.cuda.empty_cache()
    finally:
        restore_math_mode(previous_mode)
    headers = [f"layer (batch {batch})", "algorithm", "workspace GiB", "fwd ms",
               "fwd TFLOP/s", "torch fwd ms", "vmem/torch fwd", "DESIGN.md torch ms (H200)",
               "bwd ms", "torch bwd ms", "rel err vs torch"]
    tf = "1" if tf32 else "0"
    notes = [f"CUPY_TF32={tf}; PyTorch TF32 {'on' if tf32 else 'off'} to match, "
             "cudnn.benchmark on." if torch is not None else f"CUPY_TF32={tf}; no PyTorch here.",
             f"vmem's GEMMs in TF32: {tf32_gemms}.",
             "vmem's im2col / col2im: " + ("one CUDA kernel each; the rows marked 'strided "
                                           "copies' use the array code (VMEM_CUDA_IM2COL=0)."
                                           if kernels_on(cp, "im2col") else
                                           "strided array copies (VMEM_CUDA_IM2COL)."),
             f"Median of {runs} runs after {warmup} warm-up calls; 3x3 kernels, padding 1; "
             "backward = input and weight gradients (vmem: the layer's backward; PyTorch: "
             "aten.convolution_backward)."]
    return "\n".join(["# vmem bench conv", "", device_line(cp), "", *notes, "",
                      markdown_table(headers, rows)]) + "\n"
