"""out = a @ b.T, or out += a @ b.T where the library can add into out in one GEMM.

The convolution's weight gradient is a sum over samples of dy[n] @ cols[n].T. cuBLAS
computes C = A B + beta C in one call, so on CuPy each sample's product is added into
the gradient by its GEMM (beta = 1): no temporary, no separate add, one launch per
sample instead of two. NumPy's matmul cannot add into its output, so there the
caller keeps a temporary and adds it. Either way the sum runs in sample order, the
same order for every chunk size.
"""

from __future__ import annotations

import importlib
from typing import Any

Array = Any


def accumulates_in_place(xp: Any) -> bool:
    """Whether `matmul_nt(..., accumulate=True)` works for this array module."""
    return getattr(xp, "__name__", "") == "cupy"


def matmul_nt(xp: Any, a: Array, b: Array, out: Array, accumulate: bool = False) -> Array:
    """out = a @ b.T (2-D, one dtype; out C-contiguous), or with `accumulate` out +=
    a @ b.T in the same GEMM (only where `accumulates_in_place(xp)`). Returns out."""
    if not accumulate:
        return xp.matmul(a, b.T, out=out)
    if not accumulates_in_place(xp):
        raise ValueError(f"matmul_nt: {getattr(xp, '__name__', xp)} cannot add a product "
                         "into its output; use a temporary")
    # cupy.cublas is not imported by `import cupy`; gemm runs on the current stream
    # and follows the cuBLAS handle's math mode (TF32 when the backend set it).
    cublas = importlib.import_module(f"{xp.__name__}.cublas")
    return cublas.gemm("N", "T", a, b, out=out, beta=1.0)
