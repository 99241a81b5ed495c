"""The pooling CUDA kernels (vmem.kernels.cuda_pooling) bit for bit against the array
code on NumPy, outputs poisoned (NaN) first; inputs with exact ties, NaN and -inf; and
the pooling layers on CuPy. Skipped without CuPy and a CUDA device (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
from window_cases import POOL_GEOMETRIES, tied_input

from vmem.kernels import cuda_pooling, pooling
from vmem.kernels.pooling import output_hw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, stride, pad, ceil_mode", POOL_GEOMETRIES)
def test_kernels_match_the_array_code_bit_for_bit(cp, x_shape, k, stride, pad, ceil_mode,
                                                  dtype):
    rng = np.random.default_rng(abs(hash((x_shape, k, stride, pad))) % 2**32)
    x = tied_input(rng, x_shape, dtype, specials=True)
    finite = np.nan_to_num(x, nan=0.5, neginf=-2.5)
    y_shape = (*x_shape[:2], *output_hw(x_shape, k, stride, pad, ceil_mode))
    dy = rng.standard_normal(y_shape).astype(dtype)
    args = (k, stride, pad, ceil_mode)
    gx, gfinite, gdy = cp.asarray(x), cp.asarray(finite), cp.asarray(dy)

    def poisoned(shape):
        return cp.full(shape, cp.nan, dtype=dtype)

    got = cuda_pooling.max_pool_forward(gx, poisoned(y_shape), k, stride, pad)
    np.testing.assert_array_equal(cp.asnumpy(got), pooling.max_pool_forward(np, x, *args))
    got = cuda_pooling.max_pool_backward(gx, gdy, poisoned(x_shape), k, stride, pad)
    np.testing.assert_array_equal(cp.asnumpy(got), pooling.max_pool_backward(np, x, dy, *args))
    got = cuda_pooling.avg_pool_forward(gfinite, poisoned(y_shape), k, stride, pad)
    np.testing.assert_array_equal(cp.asnumpy(got), pooling.avg_pool_forward(np, finite, *args))
    got = cuda_pooling.avg_pool_backward(gdy, poisoned(x_shape), k, stride, pad)
    np.testing.assert_array_equal(cp.asnumpy(got),
                                  pooling.avg_pool_backward(np, dy, x_shape, *args))


def test_array_code_on_cupy_gives_the_kernels_bits(cp, monkeypatch):
    """VMEM_CUDA_POOLING=0 (the array code on CuPy) and the kernels agree bit for bit."""
    rng = np.random.default_rng(9)
    x = cp.asarray(tied_input(rng, (4, 16, 28, 28), np.float32, specials=False))
    args = (3, 2, 1, True)
    dy = cp.asarray(rng.standard_normal((4, 16, *output_hw(x.shape, *args))).astype(np.float32))
    monkeypatch.delenv("VMEM_CUDA_POOLING", raising=False)
    kernels = [pooling.max_pool_forward(cp, x, *args), pooling.max_pool_backward(cp, x, dy, *args),
               pooling.avg_pool_forward(cp, x, *args),
               pooling.avg_pool_backward(cp, dy, x.shape, *args)]
    monkeypatch.setenv("VMEM_CUDA_POOLING", "0")
    arrays = [pooling.max_pool_forward(cp, x, *args), pooling.max_pool_backward(cp, x, dy, *args),
              pooling.avg_pool_forward(cp, x, *args),
              pooling.avg_pool_backward(cp, dy, x.shape, *args)]
    for got, want in zip(kernels, arrays, strict=True):
        assert got.shape == want.shape and bool((got == want).all())
