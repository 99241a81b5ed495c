"""Local response normalization across channels (axis 1), PyTorch's convention:

    scale[c] = k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x[c']^2
    y[c]     = x[c] * scale[c] ** -beta

(channels outside [0, C) contribute zero). For odd `size` this is also Caffe's
ACROSS_CHANNELS window. The gradient is

    dx[j] = dy[j] * scale[j] ** -beta
            - 2 * alpha * beta / size * x[j] * sum_{i : j in window(i)} dy[i] * y[i] / scale[i]

where the sum runs over the transposed window [j - (size-1)//2, j + size//2].
"""

from __future__ import annotations

from typing import Any

Array = Any


def channel_window_sum(xp: Any, a: Array, before: int, after: int) -> Array:
    """out[:, c] = sum of a[:, c'] for c' in [c - before, c + after] within [0, C)."""
    out = a.copy()
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
    scale = lrn_scale(xp, x, size, alpha, k)
    return x * xp.power(scale, -beta)


def lrn_backward(xp: Any, x: Array, dy: Array, size: int, alpha: float, beta: float,
                 k: float) -> Array:
    """dx from the input alone: scale and y are recomputed."""
    scale = lrn_scale(xp, x, size, alpha, k)
    scale_pow = xp.power(scale, -beta)
    ratio = dy * x  # dy * y / scale, built in place
    ratio *= scale_pow
    ratio /= scale
    back = channel_window_sum(xp, ratio, (size - 1) // 2, size // 2)
    back *= x
    back *= -2.0 * alpha * beta / size
    back += dy * scale_pow
    return back
