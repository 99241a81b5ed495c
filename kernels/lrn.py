"""Local response normalization across channels (axis 1), PyTorch's convention:

    scale[c] = k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x[c']^2
    y[c]     = x[c] * scale[c] ** -beta

(channels outside [0, C) contribute zero). For odd `size` this is also Caffe's
ACROSS_CHANNELS window. The gradient is

    dx[j] = dy[j] * scale[j] ** -beta
            - 2 * alpha * beta / size * x[j] * sum_{i : j in window(i)} dy[i] * y[i] / scale[i]

where the sum runs over the transposed window [j - (size-1)//2, j + size//2].

Both passes run over groups of samples (axis 0), as many at once as there are
threads (`kernels.threads`), so that their temporaries -- a few arrays the size of
a group's feature map -- stay together within LRN_SCRATCH_BYTES however large the
batch: the device then holds little beyond the input, output and gradients the
arena counts. Samples are independent, so the results are the same for every
grouping and thread count.

On CuPy, float32 and float64 calls on C-contiguous arrays go to the CUDA kernels of
`vmem.kernels.cuda_lrn` instead (one launch per pass, no scratch, the same
operations in the same order), unless `VMEM_CUDA_LRN` is set to something other
than "1".
"""

from __future__ import annotations

from typing import Any

from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.threads import for_ranges

Array = Any


# Scratch of either pass, whatever the batch: at most this many bytes of temporaries
# (each pass holds up to SCRATCH_ARRAYS arrays of its group's size), at least one sample.
LRN_SCRATCH_BYTES = 64 * 2**20
SCRATCH_ARRAYS = 5


def scratch_per_sample(x: Array) -> int:
    """Bytes of temporaries a pass holds per sample of its group."""
    return max(1, x[:1].nbytes * SCRATCH_ARRAYS)


def channel_window_sum(xp: Any, a: Array, before: int, after: int, out: Array | None = None
                       ) -> Array:
    """out[:, c] = sum of a[:, c'] for c' in [c - before, c + after] within [0, C);
    `out`, when given, is overwritten and returned."""
    if out is None:
        out = a.copy()
    else:
        out[...] = a
    channels = a.shape[1]
    for d in range(1, min(after, channels - 1) + 1):
        view = out[:, : channels - d]
        view += a[:, d:]
    for d in range(1, min(before, channels - 1) + 1):
        view = out[:, d:]
        view += a[:, : channels - d]
    return out


def lrn_scale(xp: Any, x: Array, size: int, alpha: float, k: float) -> Array:
    scale = channel_window_sum(xp, x * x, size // 2, (size - 1) // 2)
    scale *= alpha / size
    scale += k
    return scale


def lrn_forward(xp: Any, x: Array, size: int, alpha: float, beta: float, k: float) -> Array:
    y = xp.empty_like(x)
    kernels = kernel_module(xp, "lrn", x)
    if kernels is not None:
        return kernels.lrn_forward(x, y, size, alpha, beta, k)
    def normalize(lo: int, hi: int) -> None:
        xs = x[lo:hi]
        scale = lrn_scale(xp, xs, size, alpha, k)
        xp.multiply(xs, xp.power(scale, -beta), out=y[lo:hi])

    for_ranges(xp, x.shape[0], normalize, scratch_per_sample(x), LRN_SCRATCH_BYTES,
               item_elements=x[0].size)
    return y


def lrn_backward(xp: Any, x: Array, dy: Array, size: int, alpha: float, beta: float,
                 k: float) -> Array:
    """dx from the input alone: scale and y are recomputed."""
    if tuple(dy.shape) != tuple(x.shape):  # a kernel would read past the smaller one
        raise ValueError(f"lrn backward: dy has shape {tuple(dy.shape)}, x {tuple(x.shape)}")
    dx = xp.empty_like(dy)
    kernels = kernel_module(xp, "lrn", x, dy)
    if kernels is not None:
        return kernels.lrn_backward(x, dy, dx, size, alpha, beta, k)
    def gradient(lo: int, hi: int) -> None:
        xs, dys = x[lo:hi], dy[lo:hi]
        scale = lrn_scale(xp, xs, size, alpha, k)
        scale_pow = xp.power(scale, -beta)
        ratio = dys * xs  # dy * y / scale, built in place
        ratio *= scale_pow
        ratio /= scale
        back = channel_window_sum(xp, ratio, (size - 1) // 2, size // 2, out=dx[lo:hi])
        back *= xs
        back *= -2.0 * alpha * beta / size
        scale_pow *= dys
        back += scale_pow

    for_ranges(xp, x.shape[0], gradient, scratch_per_sample(x), LRN_SCRATCH_BYTES,
               item_elements=x[0].size)
    return dx
