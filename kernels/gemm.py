"""The convolution's GEMMs, called on cuBLAS directly where CuPy's general matmul costs
more than the product.

- `matmul_nt_sum`: out[g] (+)= sum over samples s of a[s, g] @ b[s, g].T, the weight
  gradient's sum of dy[n] @ cols[n].T. cuBLAS computes C = A B + beta C in one call,
  so on CuPy each sample's product is added into the gradient by its GEMM (beta = 1):
  no temporary, no separate add. NumPy's matmul cannot add into its output, so there
  each product goes through a scratch array and is added. Either way the sum runs in
  sample order, one 2-D product per sample and group.
- `matmul_shared_left`: out[s, g] = a[g] @ b[s, g], one weight matrix per group shared
  by every sample of a chunk. CuPy's matmul broadcasts `a` by building arrays of
  matrix pointers on the device (two small kernels per operand, per call); here each
  group is one strided-batched GEMM whose stride for `a` is 0: one launch.

Both go through cublas<t>gemmStridedBatched (a single product is a batch of one),
called from the binding CuPy itself uses, with little Python around it: the weight
gradient makes one call per sample, issued from one loop over precomputed call
descriptions (`GemmCall`, built by `nt_sum_calls` and `shared_left_calls`). cuBLAS is
column-major and a row-major matrix is its transpose, so row-major C = A B is called
as column-major C^T = B^T A^T. Not yet run on a GPU.

On NumPy every 2-D product is cut into tiles of output columns (GEMM_TILE_COLUMNS, or
SHARED_LEFT_TILE_COLUMNS for a convolution's shared-weight products), fixed by the
shape, each one BLAS call on one thread; the tiles spread over vmem's
threads (`kernels.threads`), so the bits are the same for every thread count and
BLAS threads times vmem's threads stay within the cores. Linear layers take the same
path (`matmul`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from vmem.kernels.cuda_module import kernels_on
from vmem.kernels.threads import Task, on_threads, run_tasks, single_threaded_blas, split

Array = Any


def on_cublas(xp: Any, *arrays: Array) -> bool:
    """Whether calls on these arrays go to cuBLAS directly: CuPy arrays of one dtype,
    float32 or float64, C-contiguous, unless `VMEM_CUDA_GEMM` is set to something
    other than "1"."""
    dtype = arrays[0].dtype
    return (kernels_on(xp, "gemm") and dtype in (np.float32, np.float64)
            and all(a.dtype == dtype and a.flags.c_contiguous for a in arrays))


def accumulates_in_place(xp: Any, *arrays: Array) -> bool:
    """Whether `matmul_nt_sum` on these arrays needs no scratch: on cuBLAS."""
    return on_cublas(xp, *arrays)


@dataclass(frozen=True)
class GemmCall:
    """The arguments of one column-major cublas<t>gemmStridedBatched call: for
    i < batch, C_i (m x n) = op(A_i) (m x k) B_i (k x n) [+ C_i with accumulate],
    op(A) = A^T when `trans_a` (A_i then stored k x m). X_i starts `offset_x +
    i * stride_x` elements into its buffer, with leading dimension ld_x."""

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
    trans_a: bool = False


@functools.lru_cache(maxsize=1024)  # the same shapes come back every chunk and step
def nt_sum_calls(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[GemmCall, ...]:
    """One call per (sample, group), samples outer, for out[g] (+)= a[s, g] @ b[s, g].T
    on C-contiguous a (S, G, M, K), b (S, G, N, K) and out (G, M, N): column-major
    out[g]^T = b[s, g] a[s, g]^T, with cuBLAS's A the buffer of b (stored K x N
    column-major, transposed) and its B the buffer of a (a^T, K x M)."""
    samples, g, m_rows, k = a_shape
    s_b, g_b, n, k_b = b_shape
    if (s_b, g_b, k_b) != (samples, g, k):
        raise ValueError(f"nt_sum_calls: a {a_shape} and b {b_shape} do not match")
    return tuple(GemmCall(m=n, n=m_rows, k=k, offset_a=(si * g + gi) * n * k, lda=k,
                          stride_a=0, offset_b=(si * g + gi) * m_rows * k, ldb=k, stride_b=0,
                          offset_c=gi * m_rows * n, ldc=n, stride_c=0, batch=1, trans_a=True)
                 for si in range(samples) for gi in range(g))


@functools.lru_cache(maxsize=1024)
def shared_left_calls(a_shape: tuple[int, ...], b_shape: tuple[int, ...]
                      ) -> tuple[GemmCall, ...]:
    """One call per group for out[s, g] = a[g] @ b[s, g] on C-contiguous a (G, M, K),
    b (S, G, K, N) and out (S, G, M, N): column-major out^T = b^T a^T, with cuBLAS's A
    the sample's b (stride G*K*N) and its B the group's weight (stride 0)."""
    g, m_rows, k = a_shape
    s, g_b, k_b, n = b_shape
    if (g_b, k_b) != (g, k):
        raise ValueError(f"shared_left_calls: a {a_shape} and b {b_shape} do not match")
    return tuple(GemmCall(m=n, n=m_rows, k=k,
                          offset_a=gi * k * n, lda=n, stride_a=g * k * n,
                          offset_b=gi * m_rows * k, ldb=k, stride_b=0,
                          offset_c=gi * m_rows * n, ldc=n, stride_c=g * m_rows * n, batch=s)
                 for gi in range(g))


def matmul_nt_sum(xp: Any, a: Array, b: Array, out: Array, start: bool,
                  scratch: Array | None = None) -> Array:
    """out[g] (+)= sum over s of a[s, g] @ b[s, g].T for a (S, G, M, K), b (S, G, N, K)
    and out (G, M, N), one dtype, out C-contiguous, in sample order: with `start` the
    first sample's product is written over out (its old values unused), else every
    product is added. `scratch` (out's shape) takes each product before it is added
    where the library cannot add into out (not `accumulates_in_place`). Returns out.

    On NumPy each task is one group's tile of columns (`column_tiles`, fixed by the
    shape), and runs the whole sum over the samples for it, in sample order."""
    if on_cublas(xp, a, b, out):
        calls = nt_sum_calls(tuple(a.shape), tuple(b.shape))
        first = a.shape[1] if start else 0  # the first sample's calls, one per group
        _run_gemms(xp, calls[:first], b, a, out, False)
        _run_gemms(xp, calls[first:], b, a, out, True)
        return out
    run_products(xp, nt_sum_tasks(xp, a, b, out, start, scratch))
    return out


def nt_sum_tasks(xp: Any, a: Array, b: Array, out: Array, start: bool,
                 scratch: Array | None = None) -> list[Task]:
    """`matmul_nt_sum`'s tasks off cuBLAS (for `run_products`), each one group's tile
    of columns summed over the samples in sample order."""
    if a.shape[0] > (1 if start else 0) and scratch is None:
        raise ValueError(f"matmul_nt_sum: {getattr(xp, '__name__', xp)} cannot add a "
                         "product into its output; give a scratch array")

    def tile(gi: int, lo: int, hi: int) -> None:
        for si in range(a.shape[0]):
            first = start and si == 0
            target = out[gi, :, lo:hi] if first else scratch[gi, :, lo:hi]
            xp.matmul(a[si, gi], b[si, gi, lo:hi].T, out=target)
            if not first:
                out[gi, :, lo:hi] += target

    samples, rows, depth = a.shape[0], a.shape[2], a.shape[3]
    return in_groups([(partial(tile, gi, lo, hi), 2 * samples * rows * depth * (hi - lo))
                      for gi in range(a.shape[1]) for lo, hi in column_tiles(xp, out.shape[-1])])


def matmul_shared_left(xp: Any, a: Array, b: Array, out: Array) -> Array:
    """out[s, g] = a[g] @ b[s, g] for a (G, M, K), b (S, G, K, N), out (S, G, M, N), all
    of one dtype, out not overlapping a or b. On cuBLAS one strided-batched GEMM per
    group; on NumPy one task per sample, group and tile of columns (`column_tiles`);
    elsewhere xp.matmul. Returns out."""
    if on_cublas(xp, a, b, out):
        _run_gemms(xp, shared_left_calls(tuple(a.shape), tuple(b.shape)), b, a, out, False)
        return out
    if not on_threads(xp):
        return xp.matmul(a, b, out=out)
    run_products(xp, shared_left_tasks(xp, a, b, out))
    return out


def shared_left_tasks(xp: Any, a: Array, b: Array, out: Array) -> list[Task]:
    """`matmul_shared_left`'s tasks on NumPy (for `run_products`): one per sample,
    group and tile of SHARED_LEFT_TILE_COLUMNS columns."""
    rows, depth = a.shape[1], a.shape[2]
    return in_groups([(partial(_product_tile, xp, a[gi], b[si, gi], out[si, gi], lo, hi),
                       2 * rows * depth * (hi - lo))
                      for si in range(b.shape[0]) for gi in range(a.shape[0])
                      for lo, hi in column_tiles(xp, out.shape[-1], SHARED_LEFT_TILE_COLUMNS)])


def pointwise_gradients(xp: Any, dy: Array, x: Array, weight_t: Array, dw: Array,
                        start: bool, scratch: Array | None, dx: Array) -> None:
    """A pointwise convolution's two gradient products, independent of each other:
    dw (+)= the sum over samples of dy[s, g] @ x[s, g].T (`matmul_nt_sum`) and
    dx[s, g] = weight_t[g] @ dy[s, g] (`matmul_shared_left`). On NumPy their tiles run
    in one fan-out, the weight gradient's few long ones first, each computed as the
    two calls compute it (the same bits); elsewhere the two calls."""
    if not on_threads(xp):
        matmul_nt_sum(xp, dy, x, dw, start, scratch)
        matmul_shared_left(xp, weight_t, dy, dx)
        return
    run_products(xp, nt_sum_tasks(xp, dy, x, dw, start, scratch)
                 + shared_left_tasks(xp, weight_t, dy, dx))


def matmul(xp: Any, a: Array, b: Array) -> Array:
    """a @ b for 2-D a and b, on NumPy one task per tile of columns (`column_tiles`)."""
    if not on_threads(xp):
        return a @ b
    out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a, b))
    run_products(xp, in_groups([(partial(_product_tile, xp, a, b, out, lo, hi),
                                 2 * a.shape[0] * a.shape[1] * (hi - lo))
                                for lo, hi in column_tiles(xp, out.shape[1])]))
    return out


def in_groups(products: list[tuple[Task, int]]) -> list[Task]:
    """GEMM tasks with their floating-point operations, consecutive ones joined into
    tasks of at least `GEMM_TASK_FLOPS` each (the last may have fewer), run one after
    another in order: each product is still its own BLAS call, so its bits are the
    same however the products group."""
    groups: list[list[Task]] = []
    flops = GEMM_TASK_FLOPS  # the first product opens a group
    for task, cost in products:
        if flops >= GEMM_TASK_FLOPS:
            groups.append([])
            flops = 0
        groups[-1].append(task)
        flops += cost
    return [group[0] if len(group) == 1 else partial(_in_order, group) for group in groups]


def _in_order(tasks: list[Task]) -> None:
    for task in tasks:
        task()


def run_products(xp: Any, tasks: list[Task]) -> None:
    """Run GEMM tasks over the threads, BLAS on one thread each (on NumPy): so BLAS
    threads times vmem's threads stay within the cores, and a tile's bits depend on
    its shape only, never on how many threads BLAS had. Tasks of independent products
    may share one call (a pointwise convolution's weight and data gradients), so a
    thread free of one product's few long tiles takes the other's."""
    if not on_threads(xp):
        run_tasks(xp, tasks)
        return
    with single_threaded_blas():
        run_tasks(xp, tasks)


def _product_tile(xp: Any, a: Array, b: Array, out: Array, lo: int, hi: int) -> None:
    xp.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


#: The fewest floating-point operations of a GEMM task on NumPy, read at each call
#: (tests lower it): about 0.1 ms of a core. A small map's per-sample products are
#: far smaller, and a fan-out of them costs more in waking threads and in their turns
#: at the GIL than it saves (a small CNN's step ran at half speed on two threads), so
#: consecutive ones go to one task (`in_groups`).
GEMM_TASK_FLOPS = 1 << 23

#: Columns of a product's output one task computes on NumPy (the last tile may be
#: narrower). Fixed, never taken from the thread count: each tile is its own BLAS
#: call, whose bits may depend on the call's shape, so a fixed cut gives the same
#: bits for every thread count. Wide enough that packing the left operand again for
#: each tile costs little beside the tile's product.
GEMM_TILE_COLUMNS = 256

#: The tile width of `matmul_shared_left` (a convolution's forward product and data
#: gradient, where the output has a column per pixel). With few rows in the right
#: operand (K = 64: the input channels of ResNet's and GoogLeNet's 1x1 convolutions,
#: the output channels of their data gradients) packing costs the most beside a tile's
#: product: on one core of a 2-core Xeon (OpenBLAS 0.3.31, SkylakeX kernels) 1024
#: columns ran 10-25 % faster than 256 for K = 64, no slower elsewhere, and every such
#: product of AlexNet, VGG-16, GoogLeNet and ResNet-50 gave the same bits at both
#: widths (bench/results/cpu-step.md). Still a fixed cut: the bits are the same for
#: every thread count whatever BLAS does.
SHARED_LEFT_TILE_COLUMNS = 1024


def column_tiles(xp: Any, columns: int, width: int | None = None) -> list[tuple[int, int]]:
    """The (start, stop) tiles of an output's columns: `width` (GEMM_TILE_COLUMNS
    unless given) wide on NumPy, one tile elsewhere."""
    width = GEMM_TILE_COLUMNS if width is None else width
    return split(columns, width if on_threads(xp) else columns)


# Host scalars 0 and 1 of each dtype, alive for the whole process (cuBLAS reads alpha
# and beta during the call), with their addresses: (array, address).
_SCALARS = {(dtype, value): (array, array.ctypes.data)
            for dtype in (np.dtype(np.float32), np.dtype(np.float64)) for value in (0, 1)
            for array in [np.array(value, dtype=dtype)]}


def _run_gemms(xp: Any, calls: tuple[GemmCall, ...], a: Array, b: Array, c: Array,
               accumulate: bool) -> None:
    """Issue `calls` with cuBLAS's A, B and C in the CuPy arrays a, b and c, alpha = 1,
    beta = 1 with `accumulate` else 0. The binding puts the handle on the current
    stream; the handle's math mode applies (TF32 where the backend set it). alpha and
    beta are host scalars, read during the call: the pointer mode is set to host
    (cuBLAS's default, and what CuPy restores after changing it)."""
    if not calls:
        return
    from cupy_backends.cuda.libs import cublas

    handle = xp.cuda.device.get_cublas_handle()
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    dtype = c.dtype
    gemm = cublas.sgemmStridedBatched if dtype == np.float32 else cublas.dgemmStridedBatched
    alpha, beta = _SCALARS[dtype, 1][1], _SCALARS[dtype, int(accumulate)][1]
    size = dtype.itemsize
    pa, pb, pc = a.data.ptr, b.data.ptr, c.data.ptr
    for call in calls:
        gemm(handle, cublas.CUBLAS_OP_T if call.trans_a else cublas.CUBLAS_OP_N,
             cublas.CUBLAS_OP_N, call.m, call.n, call.k,
             alpha, pa + call.offset_a * size, call.lda, call.stride_a,
             pb + call.offset_b * size, call.ldb, call.stride_b,
             beta, pc + call.offset_c * size, call.ldc, call.stride_c, call.batch)
