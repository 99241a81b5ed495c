"""Array kernels with NumPy reference semantics. Every function takes the array
module `xp` (numpy or cupy) first and uses only what both provide, so the same
code runs on the CPU and, through CuPy, on the GPU. Nothing here upcasts: the
result has the dtype of the floating input."""

from __future__ import annotations

from vmem.kernels import im2col, lrn, pooling, softmax, windows

__all__ = ["im2col", "lrn", "pooling", "softmax", "windows"]
