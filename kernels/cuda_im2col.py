"""im2col and col2im for CuPy in CUDA C (RawModule, compiled by NVRTC on first use).

**Not yet run on a GPU.** The CUDA C compiles under NVRTC with the options CuPy's
RawModule uses (`scripts/nvrtc-check`) and runs on the CPU under the thread-per-CUDA-
thread emulator of the tests, bit for bit against the array code of
`vmem.kernels.im2col`; its speed and its behaviour on a device are unverified until
`tests/gpu/` and `vmem bench` run on one.

Why kernels: the array code moves one strided slice per kernel offset, k*k copies
per chunk (and, in col2im, k*k read-modify-writes of dx), which on an H200 costs
about seven times the convolution's GEMM (DESIGN.md). Here each direction is one
launch that touches every element once:

- `im2col`: one block per column row (sample, channel, ki, kj); its threads write
  the row's Ho*Wo entries in order (coalesced), reading the input or writing 0 where
  the window reads padding, so the buffer needs no zero fill first.
- `col2im`: a gather, not a scatter: one thread per input pixel, one block per tile
  of a (sample, channel) plane (a chunk of two samples of 64 channels is only 128
  planes, too few blocks for a GPU); each thread sums the column entries that read
  its pixel in row-major (ki, kj) order starting from 0 -- the order in which the
  array code adds them, so the sums have the same bits (no atomics, deterministic).
  The contributing output rows and columns are enumerated directly (ceil(k / stride)
  of each), with no divisibility test per offset.

Same layout as the array code: columns (N, C*k*k, Ho*Wo), row c*k*k + ki*k + kj.
float32 and float64; arrays C-contiguous. One difference in principle: RawModule
compiles with flush-to-zero, so a col2im sum that meets a subnormal float32 flushes
it where NumPy keeps it.

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmem.kernels.cuda_module import TemplateKernels, template_arrays

Array = Any

#: NVRTC options. CuPy adds the architecture of the current device itself.
NVRTC_OPTIONS = ("--std=c++17",)

#: Most threads per block; fewer when a row (im2col) or plane (col2im) is shorter.
MAX_THREADS = 256
#: Most blocks per launch: the kernels loop over rows or planes past it.
MAX_BLOCKS = 1 << 20

KERNELS = ("im2col", "col2im")

#: Window geometry for the gather kernels here and in `cuda_pooling`.
WINDOW_HELPERS = r"""
__device__ __forceinline__ int vmem_min_i(int a, int b) { return a < b ? a : b; }

// The output positions o in [0, out) whose window reads input index i: o * stride + off
// = i + pad for a kernel offset off in [0, k). Returns the largest such o in `hi` and the
// smallest in `lo` (lo > hi when there is none); off rises as o falls.
__device__ __forceinline__ void vmem_readers(int i, int pad, int k, int stride, int out,
                                             int& lo, int& hi) {
    const int t = i + pad;          // >= 0
    hi = vmem_min_i(t / stride, out - 1);
    const int first = t - k + 1;    // o * stride >= first
    lo = first <= 0 ? 0 : (first + stride - 1) / stride;
}

// Calls add(oy, ox) for every output position whose window reads input pixel (iy, ix), in
// row-major (ki, kj) order of the offset that reads it (oy falling, then ox falling): the
// order in which the array code adds contributions, so gathers made with it keep its bits.
template <typename F>
__device__ __forceinline__ void vmem_for_readers(int iy, int ix, int k, int stride, int pad,
                                                 int ho, int wo, F add) {
    int oy_lo, oy_hi, ox_lo, ox_hi;
    vmem_readers(iy, pad, k, stride, ho, oy_lo, oy_hi);
    vmem_readers(ix, pad, k, stride, wo, ox_lo, ox_hi);
    for (int oy = oy_hi; oy >= oy_lo; --oy)
        for (int ox = ox_hi; ox >= ox_lo; --ox)
            add(oy, ox);
}

"""

SOURCE = WINDOW_HELPERS + r"""
// vmem im2col / col2im. Not yet run on a GPU (see kernels/cuda_im2col.py).

// x (N, C, H, W) -> cols (N, C, k, k, Ho, Wo): block b handles the rows b, b + grid, ...
// of rows = N*C*k*k rows of L = Ho*Wo entries.
template <typename T>
__global__ void vmem_im2col(const T* __restrict__ x, T* __restrict__ cols, long long rows,
                            int h, int w, int k, int stride, int pad, int ho, int wo) {
    const int l = ho * wo;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const int kj = (int)(row % k);
        const int ki = (int)(row / k % k);
        const T* plane = x + row / ((long long)k * k) * ((long long)h * w);
        T* out = cols + row * l;
        for (int p = threadIdx.x; p < l; p += blockDim.x) {
            const int oy = p / wo;
            const int iy = oy * stride - pad + ki;
            const int ix = (p - oy * wo) * stride - pad + kj;
            out[p] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? plane[iy * w + ix] : T(0);
        }
    }
}

// cols (N, C, k, k, Ho, Wo) -> dx (N, C, H, W): the N*C planes of H*W pixels are cut
// into `tiles` tiles of blockDim.x pixels each (enough blocks to fill the GPU even when
// a chunk has few planes); block b handles the tiles b, b + grid, ... Each pixel's sum
// runs over (ki, kj) in row-major order, i.e. over oy falling, then ox falling.
template <typename T>
__global__ void vmem_col2im(const T* __restrict__ cols, T* __restrict__ dx, long long planes,
                            int tiles, int h, int w, int k, int stride, int pad, int ho,
                            int wo) {
    const int l = ho * wo;
    const int hw = h * w;
    for (long long item = blockIdx.x; item < planes * tiles; item += gridDim.x) {
        const long long plane = item / tiles;
        const int q = (int)(item - plane * tiles) * blockDim.x + threadIdx.x;
        if (q >= hw) continue;
        const T* src = cols + plane * ((long long)k * k * l);
        const int iy = q / w;
        const int ix = q - iy * w;
        T acc = T(0);
        vmem_for_readers(iy, ix, k, stride, pad, ho, wo, [&](int oy, int ox) {
            const int ki = iy + pad - oy * stride;
            const int kj = ix + pad - ox * stride;
            acc += src[(long long)(ki * k + kj) * l + oy * wo + ox];
        });
        dx[plane * hw + q] = acc;
    }
}
"""

TEMPLATES = TemplateKernels("vmem.kernels.cuda_im2col", SOURCE, NVRTC_OPTIONS, KERNELS)

#: The launcher's slot (tests put the CPU emulator in it) and the instantiations.
_use_launcher = TEMPLATES.swap
all_name_expressions = TEMPLATES.names


def supports(src: Array, dst: Array, x_shape: tuple[int, ...], k: int, pad: int) -> bool:
    """Whether the kernels take this call (src -> dst: x -> columns or columns -> dx for
    an input of `x_shape`): a dtype they are compiled for, both arrays of that dtype and
    C-contiguous, and planes small enough for their 32-bit in-plane indexing."""
    h, w = x_shape[-2:]
    return template_arrays(src, dst) and (h + 2 * pad) * (w + 2 * pad) * k * k < 2**31


def threads_for(length: int) -> int:
    """Threads per block for rows or planes of `length` elements: a whole number of
    warps, at most MAX_THREADS."""
    return min(MAX_THREADS, max(32, -(-length // 32) * 32))


def _geometry(x_shape: tuple[int, ...], k: int, stride: int, pad: int) -> tuple[Any, ...]:
    from vmem.kernels.windows import conv_output_size

    n, c, h, w = x_shape
    return n, c, h, w, conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)


def window_scalars(h: int, w: int, k: int, stride: int, pad: int, ho: int, wo: int) -> tuple:
    """The window geometry as the window kernels (here and in cuda_pooling) take it."""
    return tuple(np.int32(v) for v in (h, w, k, stride, pad, ho, wo))


def im2col(x: Array, k: int, stride: int, pad: int, out: Array) -> Array:
    """Lower x (N, C, H, W) into `out` (N, C*k*k, Ho*Wo), both C-contiguous and of one
    dtype; zero where a window reads padding. Returns `out`."""
    n, c, h, w, ho, wo = _geometry(tuple(x.shape), k, stride, pad)
    rows = n * c * k * k
    if rows and ho * wo:
        TEMPLATES.launch("im2col", x.dtype, min(rows, MAX_BLOCKS), threads_for(ho * wo),
                         (x, out, np.int64(rows), *window_scalars(h, w, k, stride, pad, ho, wo)))
    return out


def col2im(cols: Array, x_shape: tuple[int, ...], k: int, stride: int, pad: int,
           out: Array) -> Array:
    """Sum columns (N, C*k*k, Ho*Wo) back into `out` (N, C, H, W), both C-contiguous
    and of one dtype, overwriting it. Returns `out`."""
    n, c, h, w, ho, wo = _geometry(tuple(x_shape), k, stride, pad)
    planes, threads = n * c, threads_for(h * w)
    tiles = -(-h * w // threads)
    if planes and h * w:
        TEMPLATES.launch("col2im", cols.dtype, min(planes * tiles, MAX_BLOCKS), threads,
                         (cols, out, np.int64(planes), np.int32(tiles),
                          *window_scalars(h, w, k, stride, pad, ho, wo)))
    return out
