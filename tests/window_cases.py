"""What the sliding-window kernel tests on the CPU emulator (tests/test_cuda_conv.py,
tests/test_cuda_pooling.py) and on the GPU (tests/gpu/test_conv_cuda.py) share: window
geometries that reach every branch of the kernels, and pooling inputs full of ties."""

from __future__ import annotations

import numpy as np

#: (x shape (N, C, H, W), k, stride, pad)
GEOMETRIES = [
    ((2, 3, 5, 7), 1, 1, 0),      # 1x1: one offset, no padding
    ((2, 3, 6, 5), 3, 1, 1),      # VGG's 3x3, padding 1, H != W
    ((1, 2, 9, 8), 5, 2, 2),      # stride 2
    ((1, 3, 23, 23), 11, 4, 2),   # AlexNet's conv1 geometry
    ((2, 2, 7, 7), 2, 3, 1),      # stride > k: pixels no window reads (dx = 0 there)
    ((1, 2, 5, 6), 3, 2, 2),      # padding wider than half the window
    ((3, 1, 1, 1), 1, 1, 0),      # 1x1 planes
    ((1, 2, 1, 5), 3, 1, 1),      # one row: windows read mostly padding
    ((1, 1, 20, 21), 3, 1, 1),    # rows longer than a block's threads
]

#: (x shape (N, C, H, W), k, stride, pad, ceil_mode)
POOL_GEOMETRIES = [
    ((2, 3, 8, 8), 2, 2, 0, False),      # VGG's pools
    ((1, 2, 13, 13), 3, 2, 0, True),     # AlexNet's overlapping pools, ceil rule
    ((1, 2, 8, 9), 3, 2, 1, True),       # padding and a last row of windows clipped at the edge
    ((2, 1, 5, 5), 3, 1, 1, False),      # GoogLeNet's 3x3 stride-1 pool in an inception
    ((1, 2, 9, 9), 2, 3, 0, False),      # stride > k: pixels no window reads
    ((1, 1, 1, 1), 1, 1, 0, False),      # one pixel
    ((1, 1, 20, 21), 2, 2, 0, True),     # planes longer than a block's threads
]


def tied_input(rng: np.random.Generator, shape: tuple[int, ...], dtype, specials: bool
               ) -> np.ndarray:
    """Small integers (ties in most windows); with `specials`, some NaN and -inf."""
    x = rng.integers(-3, 3, size=shape).astype(dtype)
    if specials:
        flat = x.reshape(-1)
        flat[rng.random(flat.size) < 0.05] = np.nan
        flat[rng.random(flat.size) < 0.1] = -np.inf
    return x
