"""Local response normalization for CuPy in CUDA C (RawModule, compiled by NVRTC on
first use).

**Not yet run on a GPU.** Like `cuda_im2col`: compiled under NVRTC with RawModule's
options (`scripts/nvrtc-check`) and run on the CPU emulator of the tests against the
array code of `vmem.kernels.lrn`; unverified on a device.

Why kernels: the array code builds the channel-window sums from shifted views and
chains about a dozen element-wise passes (each a launch and a trip through memory,
with temporaries the size of the feature map). Here each pass is one launch with no
scratch: one block per (sample, channel) plane, one thread per element, the window's
scales recomputed from x where an element needs them.

Every operation is the array code's, in its order: the window sum runs a[c], a[c+1],
..., then a[c-1], ...; products, sums and quotients use the round-to-nearest
intrinsics so that the compiler cannot fuse a multiply and an add the array code
keeps apart; the power is CUDA's pow, as CuPy's `power` uses. float32 and float64;
arrays C-contiguous; channels on axis 1, any number of trailing axes.

CuPy is imported lazily: this module imports on a machine without CuPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vmem.kernels.cuda_im2col import MAX_BLOCKS, NVRTC_OPTIONS, threads_for
from vmem.kernels.cuda_module import TemplateKernels, template_arrays

Array = Any

KERNELS = ("lrn", "lrn_backward")

SOURCE = r"""
// vmem LRN. Not yet run on a GPU (see kernels/cuda_lrn.py).

__device__ __forceinline__ float vmem_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float vmem_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float vmem_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float vmem_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double vmem_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double vmem_add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double vmem_div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double vmem_pow(double a, double b) { return pow(a, b); }

// scale[c] = k + alpha/size * (x[c]^2 + x[c+1]^2 + ... + x[c+after]^2 + x[c-1]^2 + ...
// + x[c-before]^2), channels outside [0, C) left out; `at` points at channel 0 of this
// element's column, channels `step` apart.
template <typename T>
__device__ __forceinline__ T vmem_lrn_scale(const T* at, long long step, int c, int channels,
                                            int before, int after, T alpha_over_size, T k) {
    T s = vmem_mul(at[c * step], at[c * step]);
    for (int d = 1; d <= after && c + d < channels; ++d)
        s = vmem_add(s, vmem_mul(at[(c + d) * step], at[(c + d) * step]));
    for (int d = 1; d <= before && c - d >= 0; ++d)
        s = vmem_add(s, vmem_mul(at[(c - d) * step], at[(c - d) * step]));
    return vmem_add(vmem_mul(s, alpha_over_size), k);
}

// x, y (N, C, P): block b handles the planes b, b + grid, ... of N*C planes of P elements.
template <typename T>
__global__ void vmem_lrn(const T* __restrict__ x, T* __restrict__ y, long long planes,
                         int channels, int p_len, int before, int after, T alpha_over_size,
                         T k, T neg_beta) {
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const int c = (int)(plane % channels);
        const T* column = x + (plane - c) * p_len;  // sample's channel 0
        for (int p = threadIdx.x; p < p_len; p += blockDim.x) {
            const T scale = vmem_lrn_scale(column + p, p_len, c, channels, before, after,
                                           alpha_over_size, k);
            y[plane * p_len + p] = vmem_mul(column[(long long)c * p_len + p],
                                            vmem_pow(scale, neg_beta));
        }
    }
}

// dx[c] = (sum over the transposed window, in the array code's order, of
// dy[i] * x[i] * scale[i]^-beta / scale[i]) * x[c] * coef + scale[c]^-beta * dy[c]
template <typename T>
__global__ void vmem_lrn_backward(const T* __restrict__ x, const T* __restrict__ dy,
                                  T* __restrict__ dx, long long planes, int channels,
                                  int p_len, int before, int after, T alpha_over_size, T k,
                                  T neg_beta, T coef) {
    for (long long plane = blockIdx.x; plane < planes; plane += gridDim.x) {
        const int c = (int)(plane % channels);
        const long long start = (plane - c) * p_len;
        const T* column = x + start;
        const T* grad = dy + start;
        for (int p = threadIdx.x; p < p_len; p += blockDim.x) {
            // the transposed window: after and before swap
            T back = T(0);
            bool first = true;
            for (int pass = 0; pass < 3; ++pass) {
                const int count = pass == 0 ? 0 : pass == 1 ? before : after;
                for (int d = pass == 0 ? 0 : 1; d <= count; ++d) {
                    const int i = pass == 2 ? c - d : c + d;
                    if (i < 0 || i >= channels) break;
                    const long long at = (long long)i * p_len + p;
                    const T scale = vmem_lrn_scale(column + p, p_len, i, channels, before, after,
                                                   alpha_over_size, k);
                    const T ratio = vmem_div(vmem_mul(vmem_mul(grad[at], column[at]),
                                                      vmem_pow(scale, neg_beta)), scale);
                    back = first ? ratio : vmem_add(back, ratio);
                    first = false;
                }
            }
            const long long at = (long long)c * p_len + p;
            const T scale = vmem_lrn_scale(column + p, p_len, c, channels, before, after,
                                           alpha_over_size, k);
            back = vmem_mul(vmem_mul(back, column[at]), coef);
            dx[start + at] = vmem_add(back, vmem_mul(vmem_pow(scale, neg_beta), grad[at]));
        }
    }
}
"""

TEMPLATES = TemplateKernels("vmem.kernels.cuda_lrn", SOURCE, NVRTC_OPTIONS, KERNELS)

#: The launcher's slot (tests put the CPU emulator in it) and the instantiations.
_use_launcher = TEMPLATES.swap
all_name_expressions = TEMPLATES.names


def supports(*arrays: Array) -> bool:
    """Whether the kernels take these arrays: one dtype they are compiled for, all
    C-contiguous, rank >= 2, a sample's channels times its trailing elements under
    2**31."""
    return template_arrays(*arrays) and arrays[0].ndim >= 2 and arrays[0][:1].size < 2**31


def _launch(kernel: str, x: Array, arrays: tuple[Array, ...], size: int, alpha: float,
            beta: float, k: float, *extra: Any) -> None:
    """One launch over x's N*C planes of P elements: the arrays, then (planes, channels,
    P, before, after, alpha/size, k, -beta), then `extra`; the scalars rounded to the
    array's dtype as the array code's Python floats are."""
    if not x.size:
        return
    n, channels = x.shape[:2]
    p_len = int(np.prod(x.shape[2:], dtype=np.int64))
    t = np.dtype(x.dtype).type
    TEMPLATES.launch(kernel, x.dtype, min(n * channels, MAX_BLOCKS), threads_for(p_len),
                     (*arrays, np.int64(n * channels), np.int32(channels), np.int32(p_len),
                      np.int32(size // 2), np.int32((size - 1) // 2), t(alpha / size), t(k),
                      t(-beta), *extra))


def lrn_forward(x: Array, out: Array, size: int, alpha: float, beta: float, k: float) -> Array:
    _launch("lrn", x, (x, out), size, alpha, beta, k)
    return out


def lrn_backward(x: Array, dy: Array, out: Array, size: int, alpha: float, beta: float,
                 k: float) -> Array:
    coef = np.dtype(x.dtype).type(-2.0 * alpha * beta / size)
    _launch("lrn_backward", x, (x, dy, out), size, alpha, beta, k, coef)
    return out
