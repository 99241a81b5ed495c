"""The convolution's GEMMs where cuBLAS can do better than CuPy's general matmul.

- `matmul_nt`: out = a @ b.T, or out += a @ b.T. The weight gradient is a sum over
  samples of dy[n] @ cols[n].T; cuBLAS computes C = A B + beta C in one call, so on
  CuPy each sample's product is added into the gradient by its GEMM (beta = 1): no
  temporary, no separate add. NumPy's matmul cannot add into its output, so there the
  caller keeps a temporary and adds it. Either way the sum runs in sample order.
- `matmul_shared_left`: out[s, g] = a[g] @ b[s, g], one weight matrix per group shared
  by every sample of a chunk. CuPy's matmul broadcasts `a` by building arrays of
  matrix pointers on the device (two small kernels per operand, per call); here each
  group is one strided-batched GEMM whose stride for `a` is 0: one launch.

cuBLAS is column-major; a row-major matrix is its transpose, so row-major C = A B is
called as column-major C^T = B^T A^T (`shared_left_calls`). Not yet run on a GPU.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class StridedBatchedCall:
    """The arguments of one column-major cublas<t>gemmStridedBatched call without
    transposes: for i < batch, C_i (m x n) = A_i (m x k) B_i (k x n), where X_i starts
    `offset_x + i * stride_x` elements into its buffer and has leading dimension
    ld_x. Offsets and strides count elements."""

    m: int
    n: int
    k: int
    offset_a: int
    lda: int
    stride_a: int
    offset_b: int
    ldb: int
    stride_b: int
    offset_c: int
    ldc: int
    stride_c: int
    batch: int


def shared_left_calls(a_shape: tuple[int, ...], b_shape: tuple[int, ...]
                      ) -> list[StridedBatchedCall]:
    """One call per group for out[s, g] = a[g] @ b[s, g] on C-contiguous a (G, M, K),
    b (S, G, K, N) and out (S, G, M, N): column-major out^T = b^T a^T, with cuBLAS's A
    the sample's b (stride G*K*N) and its B the group's weight (stride 0)."""
    g, m_rows, k = a_shape
    s, g_b, k_b, n = b_shape
    if (g_b, k_b) != (g, k):
        raise ValueError(f"shared_left_calls: a {a_shape} and b {b_shape} do not match")
    return [StridedBatchedCall(m=n, n=m_rows, k=k,
                               offset_a=gi * k * n, lda=n, stride_a=g * k * n,
                               offset_b=gi * m_rows * k, ldb=k, stride_b=0,
                               offset_c=gi * m_rows * n, ldc=n, stride_c=g * m_rows * n,
                               batch=s)
            for gi in range(g)]


def matmul_shared_left(xp: Any, a: Array, b: Array, out: Array) -> Array:
    """out[s, g] = a[g] @ b[s, g] for a (G, M, K), b (S, G, K, N), out (S, G, M, N), all
    of one dtype, out not overlapping a or b. On CuPy (float32 or float64, all
    C-contiguous) one strided-batched GEMM per group; elsewhere xp.matmul. Returns out."""
    if (getattr(xp, "__name__", "") == "cupy" and a.dtype in (np.float32, np.float64)
            and a.dtype == b.dtype == out.dtype
            and all(x.flags.c_contiguous for x in (a, b, out))):
        _run_strided_batched(xp, shared_left_calls(tuple(a.shape), tuple(b.shape)), b, a, out)
        return out
    return xp.matmul(a, b, out=out)


def _run_strided_batched(xp: Any, calls: list[StridedBatchedCall], a: Array, b: Array,
                         c: Array) -> None:
    """Issue `calls` with cuBLAS's A, B and C in the CuPy arrays a, b and c, on the
    current stream (the binding sets it on the handle), alpha = 1 and beta = 0 as host
    scalars (the handle's default pointer mode, which CuPy restores after changing)."""
    from cupy_backends.cuda.libs import cublas

    handle = xp.cuda.device.get_cublas_handle()
    gemm = cublas.sgemmStridedBatched if c.dtype == np.float32 else cublas.dgemmStridedBatched
    one, zero = np.ones((), dtype=c.dtype), np.zeros((), dtype=c.dtype)
    size = c.dtype.itemsize
    for call in calls:
        gemm(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, call.m, call.n, call.k,
             one.ctypes.data, a.data.ptr + call.offset_a * size, call.lda, call.stride_a,
             b.data.ptr + call.offset_b * size, call.ldb, call.stride_b,
             zero.ctypes.data, c.data.ptr + call.offset_c * size, call.ldc, call.stride_c,
             call.batch)
