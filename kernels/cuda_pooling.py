"""Max and average pooling for CuPy in CUDA C (RawModule, compiled by NVRTC on first use).

**Not yet run on a GPU.** Like `cuda_im2col`: compiled under NVRTC with RawModule's
options (`scripts/nvrtc-check`) and run on the CPU emulator of the tests, bit for bit
against the array code of `vmem.kernels.pooling`; unverified on a device.

Why kernels: the array code moves one strided slice per window offset and, in max
pooling's backward, recomputes the maxima and routes gradients with five array
operations per offset, over groups of samples. Here each pass is one launch with no
scratch: one block per (sample, channel) plane, one thread per element.

- forward: each output scans its window in row-major order from -inf (max: NaN
  propagates, as `maximum` does) or from 0 (average: the sum, then one division by
  the window area counting padding, clipped at the padded edge under ceil_mode);
- backward, a gather per input pixel over the windows that read it, in the order the
  array code adds them (kernel offsets row-major): average adds dy / area; max adds
  dy where the pixel is its window's first maximum in row-major order (the window's
  maximum recomputed from x; a window whose maximum is NaN routes nothing).

Same geometry as `vmem.kernels.windows` (floor or ceil rule, padding never read).
float32 and float64; arrays C-contiguous. RawModule compiles with flush-to-zero (as
CuPy's own kernels, so the array code on CuPy behaves alike): float32 subnormals
compare and add as zero, so a window whose maximum is a subnormal, or a sum that
meets one, may differ from NumPy's.

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmem.kernels.cuda_im2col import (
    MAX_BLOCKS,
    NVRTC_OPTIONS,
    WINDOW_HELPERS,
    threads_for,
    window_scalars,
)
from vmem.kernels.cuda_module import TemplateKernels, template_arrays

Array = Any

KERNELS = ("max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward")

SOURCE = WINDOW_HELPERS + r"""
// vmem pooling. Not yet run on a GPU (see kernels/cuda_pooling.py).

template <typename T> __device__ __forceinline__ T vmem_neg_inf();
template <> __device__ __forceinline__ float vmem_neg_inf<float>() {
    return __uint_as_float(0xff800000u);
}
template <> __device__ __forceinline__ double vmem_neg_inf<double>() {
    return __longlong_as_double((long long)0xfff0000000000000ull);
}

// NumPy's maximum: NaN if either is NaN, else the larger (a when they compare equal).
template <typename T> __device__ __forceinline__ T vmem_maximum(T a, T b) {
    if (a != a) return a;
    if (b != b) return b;
    return a >= b ? a : b;
}

// The window of output (oy, ox): rows [y0, y0 + k) and columns [x0, x0 + k), clipped to
// the input; its maximum from -inf.
template <typename T>
__device__ __forceinline__ T vmem_window_max(const T* src, int h, int w, int k, int y0, int x0) {
    T m = vmem_neg_inf<T>();
    for (int iy = y0 > 0 ? y0 : 0; iy < y0 + k && iy < h; ++iy)
        for (int ix = x0 > 0 ? x0 : 0; ix < x0 + k && ix < w; ++ix)
            m = vmem_maximum(m, src[iy * w + ix]);
    return m;
}

// The window's area counting padding, clipped at the padded edge (ceil_mode's last window).
__device__ __forceinline__ int vmem_window_area(int h, int w, int k, int pad, int y0, int x0) {
    return (vmem_min_i(y0 + k, h + pad) - y0) * (vmem_min_i(x0 + k, w + pad) - x0);
}

// x (planes, H, W) -> y (planes, Ho, Wo): y = window(src, y0, x0) for the window of each
// output, rows [y0, y0 + k) and columns [x0, x0 + k) of its plane `src`; block b handles
// the planes b, b + grid, ...
template <typename T, typename F>
__device__ __forceinline__ void vmem_each_window(const T* x, T* y, long long planes, int h,
                                                 int w, int stride, int pad, int ho, int wo,
                                                 F window) {
    const int l = ho * wo;
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const T* src = x + plane * ((long long)h * w);
        T* out = y + plane * l;
        for (int p = threadIdx.x; p < l; p += blockDim.x) {
            const int oy = p / wo;
            out[p] = window(src, oy * stride - pad, (p - oy * wo) * stride - pad);
        }
    }
}

template <typename T>
__global__ void vmem_max_pool(const T* __restrict__ x, T* __restrict__ y, long long planes,
                              int h, int w, int k, int stride, int pad, int ho, int wo) {
    vmem_each_window(x, y, planes, h, w, stride, pad, ho, wo,
                     [&](const T* src, int y0, int x0) {
                         return vmem_window_max(src, h, w, k, y0, x0);
                     });
}

template <typename T>
__global__ void vmem_avg_pool(const T* __restrict__ x, T* __restrict__ y, long long planes,
                              int h, int w, int k, int stride, int pad, int ho, int wo) {
    vmem_each_window(x, y, planes, h, w, stride, pad, ho, wo,
                     [&](const T* src, int y0, int x0) {
                         T acc = T(0);
                         for (int iy = y0 > 0 ? y0 : 0; iy < y0 + k && iy < h; ++iy)
                             for (int ix = x0 > 0 ? x0 : 0; ix < x0 + k && ix < w; ++ix)
                                 acc += src[iy * w + ix];
                         return acc / T(vmem_window_area(h, w, k, pad, y0, x0));
                     });
}

// dx (planes, H, W) from dy (planes, Ho, Wo): each pixel sums over the windows that read
// it, offsets row-major (oy falling, then ox falling), from 0.
template <typename T>
__global__ void vmem_avg_pool_backward(const T* __restrict__ dy, T* __restrict__ dx,
                                       long long planes, int h, int w, int k, int stride,
                                       int pad, int ho, int wo) {
    const int l = ho * wo;
    const int hw = h * w;
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const T* grad = dy + plane * l;
        T* out = dx + plane * hw;
        for (int q = threadIdx.x; q < hw; q += blockDim.x) {
            const int iy = q / w;
            T acc = T(0);
            vmem_for_readers(iy, q - iy * w, k, stride, pad, ho, wo, [&](int oy, int ox) {
                const int area = vmem_window_area(h, w, k, pad, oy * stride - pad,
                                                  ox * stride - pad);
                acc += grad[oy * wo + ox] / T(area);
            });
            out[q] = acc;
        }
    }
}

// Max pooling's dx: a pixel takes dy of each window that reads it and whose first maximum
// in row-major order it is (the maximum recomputed from x).
template <typename T>
__global__ void vmem_max_pool_backward(const T* __restrict__ x, const T* __restrict__ dy,
                                       T* __restrict__ dx, long long planes, int h, int w,
                                       int k, int stride, int pad, int ho, int wo) {
    const int l = ho * wo;
    const int hw = h * w;
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const T* src = x + plane * hw;
        const T* grad = dy + plane * l;
        T* out = dx + plane * hw;
        for (int q = threadIdx.x; q < hw; q += blockDim.x) {
            const int iy = q / w;
            const int ix = q - iy * w;
            const T v = src[q];
            T acc = T(0);
            vmem_for_readers(iy, ix, k, stride, pad, ho, wo, [&](int oy, int ox) {
                const int y0 = oy * stride - pad;
                const int x0 = ox * stride - pad;
                const T m = vmem_window_max(src, h, w, k, y0, x0);
                if (!(v == m)) return;  // not a maximum (or the maximum is NaN)
                bool first = true;      // no earlier pixel of the window equals m
                for (int jy = y0 > 0 ? y0 : 0; first && jy <= iy; ++jy)
                    for (int jx = x0 > 0 ? x0 : 0; jx < x0 + k && jx < w; ++jx) {
                        if (jy == iy && jx >= ix) break;
                        if (src[jy * w + jx] == m) { first = false; break; }
                    }
                if (first) acc += grad[oy * wo + ox];
            });
            out[q] = acc;
        }
    }
}
"""

TEMPLATES = TemplateKernels("vmem.kernels.cuda_pooling", SOURCE, NVRTC_OPTIONS, KERNELS)

#: The launcher's slot (tests put the CPU emulator in it) and the instantiations.
_use_launcher = TEMPLATES.swap
all_name_expressions = TEMPLATES.names


def supports(*arrays: Array) -> bool:
    """Whether the kernels take these arrays: one dtype they are compiled for, all
    C-contiguous, planes under 2**31 elements."""
    return template_arrays(*arrays) and all(a.shape[-2] * a.shape[-1] < 2**31 for a in arrays)


def _launch(kernel: str, arrays: tuple[Array, ...], x_shape: tuple[int, ...],
            out_hw: tuple[int, int], k: int, stride: int, pad: int, per_output: bool) -> None:
    """One launch over the N*C planes; threads per block sized to the plane each thread
    runs over (the output's for forward, the input's for backward)."""
    n, c, h, w = x_shape
    ho, wo = out_hw
    planes = n * c
    if planes == 0:
        return
    TEMPLATES.launch(kernel, arrays[0].dtype, min(planes, MAX_BLOCKS),
                     threads_for(ho * wo if per_output else h * w),
                     (*arrays, np.int64(planes), *window_scalars(h, w, k, stride, pad, ho, wo)))


def max_pool_forward(x: Array, out: Array, k: int, stride: int, pad: int) -> Array:
    _launch("max_pool", (x, out), tuple(x.shape), tuple(out.shape[-2:]), k, stride, pad, True)
    return out


def avg_pool_forward(x: Array, out: Array, k: int, stride: int, pad: int) -> Array:
    _launch("avg_pool", (x, out), tuple(x.shape), tuple(out.shape[-2:]), k, stride, pad, True)
    return out


def max_pool_backward(x: Array, dy: Array, out: Array, k: int, stride: int, pad: int) -> Array:
    _launch("max_pool_backward", (x, dy, out), tuple(x.shape), tuple(dy.shape[-2:]), k,
            stride, pad, False)
    return out


def avg_pool_backward(dy: Array, out: Array, k: int, stride: int, pad: int) -> Array:
    _launch("avg_pool_backward", (dy, out), tuple(out.shape), tuple(dy.shape[-2:]), k, stride,
            pad, False)
    return out
