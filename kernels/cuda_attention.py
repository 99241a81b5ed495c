"""Causal flash attention for CuPy in CUDA C (kernels/cuda_attention.cu, compiled by
NVRTC through RawModule on first use).

**Not yet run on a GPU.** The CUDA C has run on the CPU under the tests' thread-per-CUDA-
thread emulator (tests/cuda_emulator.py) against the NumPy flash algorithm and a float64
reference (tests/test_cuda_attention.py); every instantiation compiles with nvcc 13.0
for sm_90 (no spills beyond a few bytes in the forward kernels, 17-42 KiB of shared
memory a block), and `scripts/nvrtc-check` compiles it with NVRTC where CuPy is
installed; its speed and its behaviour under the device's memory model are
unverified until `tests/gpu/test_attention_cuda.py` and `vmem bench attention` run on a
card (`scripts/gpu-check`). Off by default: `VMEM_CUDA_ATTENTION=1` turns it on.

The algorithm is `vmem.kernels.attention`'s flash algorithm (FlashAttention, Dao et al.
2022; the backward pass as FlashAttention-2, Dao 2023), with the kernels' own tiles
(TILES: query and key rows per tile by head size) in place of the array code's `tile`:

- forward: one block per (batch x head, query tile) walks the key tiles its queries see,
  merging each into every row's running maximum and sum (the online softmax's merge)
  and into its running output; writes the output and each row's log-sum-exp (float32);
- backward: D = rowsum(dO * O) (one warp per row); then one block per (batch x head, key
  tile) walks the query tiles that see it, computing P = exp(S - lse) and
  dS = P (dO V^T - D) again and accumulating dK, dV; and one block per (batch x head,
  query tile) does the same for dQ. Two kernels rather than atomic adds into dQ, so every
  output is written once and runs give the same bits.

Scores, sums and accumulators are float32 whatever the arrays' type: float32, or float16
read and written as float16 (float16 outputs, float32 log-sum-exp). Queries, keys and
values are (N, heads, T, d) with d up to MAX_HEAD_DIM; rows past the causal diagonal are
never computed with -inf, so no row gives NaN. Tiles sit in static shared memory (at
most 48 KiB a block, checked by the source's static_asserts).

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vmem.kernels.cuda_module import HALF_SOURCE, LauncherSlot

Array = Any

#: NVRTC options. CuPy adds the architecture of the current device itself.
NVRTC_OPTIONS = ("--std=c++17",)
#: The CUDA C, shipped beside this module (package data).
SOURCE = HALF_SOURCE + (Path(__file__).resolve().parent / "cuda_attention.cu").read_text()

#: Threads per block of every kernel (VMEM_ATTN_THREADS in the source).
THREADS = 128
#: Head sizes compiled for: a head of size d runs on the smallest at least d (the tiles'
#: columns past d are zeros).
HEAD_DIMS = (32, 64, 128)
MAX_HEAD_DIM = HEAD_DIMS[-1]
#: (query rows, key rows) per tile for each compiled head size: float32 tiles of d + 1
#: columns within 48 KiB of shared memory in the backward dK/dV kernel, which holds four.
TILES = {32: (32, 32), 64: (32, 32), 128: (16, 16)}
#: Blocks of the delta kernel at most (it loops over rows past them).
DELTA_BLOCKS = 4096
#: The C++ element type of each dtype the kernels take (float16 travels as its bits).
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float16): "Half"}


_SLOT = LauncherSlot("vmem.kernels.cuda_attention", SOURCE, NVRTC_OPTIONS)


def _get_launcher() -> Any:
    return _SLOT.get()


def _use_launcher(launcher: Any) -> Any:
    """Swap the launcher (the CPU emulator in tests); returns the previous one."""
    return _SLOT.swap(launcher)


def head_dim_compiled(d: int) -> int:
    """The compiled head size a head of size d runs on."""
    return next(h for h in HEAD_DIMS if h >= d)


def supports(*arrays: Array) -> bool:
    """Whether the kernels take these (N, heads, T, d) arrays: one dtype of CTYPES, the
    same shape, 1 <= d <= MAX_HEAD_DIM, T >= 1, and N * heads * T * d under 2**62.
    (Contiguity is not asked: the callers make the arrays contiguous.)"""
    first = arrays[0]
    if first.ndim != 4 or np.dtype(first.dtype) not in CTYPES:
        return False
    if any(a.dtype != first.dtype or tuple(a.shape) != tuple(first.shape) for a in arrays):
        return False
    n, h, t, d = (int(s) for s in first.shape)
    return 1 <= d <= MAX_HEAD_DIM and t >= 1 and n * h >= 1 and t < 2**31 and first.size < 2**62


def _kernel(kernel: str, dtype: Any, d: int) -> str:
    dmax = head_dim_compiled(d)
    bq, bk = TILES[dmax]
    return f"vmem_{kernel}<{CTYPES[np.dtype(dtype)]}, {dmax}, {bq}, {bk}>"


def kernel_names(head_dims: Any = HEAD_DIMS, dtypes: Any = tuple(CTYPES)) -> list[str]:
    """The instantiations heads of these sizes and arrays of these dtypes launch."""
    names = []
    for dtype in dtypes:
        ct = CTYPES[np.dtype(dtype)]
        for dmax in sorted({head_dim_compiled(d) for d in head_dims}):
            bq, bk = TILES[dmax]
            names += [f"vmem_{kernel}<{ct}, {dmax}, {bq}, {bk}>"
                      for kernel in ("flash_forward", "flash_backward_dkdv",
                                     "flash_backward_dq")]
        names.append(f"vmem_flash_delta<{ct}>")
    return names


def all_name_expressions() -> list[str]:
    """Every kernel instantiation the functions below can launch (for nvrtc-check, the
    emulator, and CuPy's cache)."""
    return kernel_names()


def precompile(names: list[str] | None = None) -> None:
    """Compile these instantiations (default: all) now, in one NVRTC run."""
    _get_launcher().precompile(list(names) if names is not None else all_name_expressions())


def _check(fn: str, launcher: Any, *arrays: Array) -> tuple[int, int, int, int]:
    """(N, heads, T, d) of arrays the kernels take, or one line saying why not."""
    first = arrays[0]
    for a in arrays:
        if not launcher.is_array(a):
            raise ValueError(f"{fn}: needs CuPy arrays, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{fn}: needs C-contiguous arrays (cupy.ascontiguousarray), got "
                             f"strides {a.strides}")
    if not supports(*arrays):
        shapes = ", ".join(f"{np.dtype(a.dtype)} {tuple(a.shape)}" for a in arrays)
        raise ValueError(f"{fn}: the CUDA kernels take (N, heads, T, d) float32 or float16 "
                         f"arrays of one shape and dtype with d <= {MAX_HEAD_DIM}, got {shapes}")
    n, h, t, d = (int(s) for s in first.shape)
    return n, h, t, d


def _rows(fn: str, launcher: Any, x: Array, shape: tuple[int, int, int], what: str) -> Array:
    """A float32 C-contiguous (N, heads, T) array of row statistics."""
    if not launcher.is_array(x) or tuple(x.shape) != shape:
        raise ValueError(f"{fn}: {what} must be a CuPy array of shape {shape}, got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    return launcher.xp.ascontiguousarray(x, dtype=np.float32)


def flash_forward(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """The output (q's dtype) and each row's log-sum-exp of scaled scores, float32
    (N, heads, T), of causal attention over C-contiguous (N, heads, T, d) arrays."""
    launcher = _get_launcher()
    n, h, t, d = _check("flash_forward", launcher, q, k, v)
    xp = launcher.xp
    out = xp.empty_like(q)
    lse = xp.empty((n, h, t), dtype=np.float32)
    bq, _ = TILES[head_dim_compiled(d)]
    blocks = n * h * -(-t // bq)
    launcher.launch(_kernel("flash_forward", q.dtype, d), blocks, THREADS,
                    (q, k, v, out, lse, np.int64(n * h), np.int32(t), np.int32(d),
                     np.float32(1.0 / math.sqrt(d))))
    return out, lse


def flash_backward(d_out: Array, q: Array, k: Array, v: Array, out: Array, lse: Array
                   ) -> tuple[Array, Array, Array]:
    """dQ, dK, dV (q's dtype) from the output and the log-sum-exp of `flash_forward`
    (any float dtype; used as float32)."""
    fn = "flash_backward"
    launcher = _get_launcher()
    n, h, t, d = _check(fn, launcher, d_out, q, k, v, out)
    xp = launcher.xp
    lse = _rows(fn, launcher, lse, (n, h, t), "lse")
    rows = n * h * t
    delta = xp.empty((n, h, t), dtype=np.float32)
    launcher.launch(f"vmem_flash_delta<{CTYPES[np.dtype(q.dtype)]}>",
                    min(-(-rows // (THREADS // 32)), DELTA_BLOCKS), THREADS,
                    (d_out, out, delta, np.int64(rows), np.int32(d)))
    dq, dk, dv = xp.empty_like(q), xp.empty_like(k), xp.empty_like(v)
    bq, bk = TILES[head_dim_compiled(d)]
    scale = np.float32(1.0 / math.sqrt(d))
    common = (np.int64(n * h), np.int32(t), np.int32(d), scale)
    launcher.launch(_kernel("flash_backward_dkdv", q.dtype, d), n * h * -(-t // bk), THREADS,
                    (q, k, v, d_out, lse, delta, dk, dv, *common))
    launcher.launch(_kernel("flash_backward_dq", q.dtype, d), n * h * -(-t // bq), THREADS,
                    (q, k, v, d_out, lse, delta, dq, *common))
    return dq, dk, dv


def attention_kernels_available() -> bool:
    """True when CuPy imports and sees a CUDA device (the kernels compile on first use)."""
    from vmem.backends import cuda

    return cuda.available()
