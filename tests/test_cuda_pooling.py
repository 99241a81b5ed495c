"""The CUDA C of vmem.kernels.cuda_pooling on the CPU emulator (tests/cuda_emulator.py;
needs g++, skipped without), bit for bit against the array code of
vmem.kernels.pooling on NumPy, with every output poisoned (NaN) first; inputs with
many exact ties (the first maximum in row-major order takes the gradient), NaN and
-inf; and which calls take the kernels."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import emulator_fixture, numpy_as_cupy
from window_cases import POOL_GEOMETRIES, tied_input

from vmem.kernels import cuda_pooling, pooling
from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.pooling import output_hw

emulator = emulator_fixture(cuda_pooling)


def poisoned(shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.full(shape, np.nan, dtype=dtype)


@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, stride, pad, ceil_mode", POOL_GEOMETRIES)
def test_kernels_match_the_array_code_bit_for_bit(emulator, x_shape, k, stride, pad,
                                                  ceil_mode, dtype, specials):
    rng = np.random.default_rng(abs(hash((x_shape, k, stride, pad, specials))) % 2**32)
    x = tied_input(rng, x_shape, dtype, specials)
    y_shape = (*x_shape[:2], *output_hw(x_shape, k, stride, pad, ceil_mode))
    dy = rng.standard_normal(y_shape).astype(dtype)
    args = (k, stride, pad, ceil_mode)

    y = cuda_pooling.max_pool_forward(x, poisoned(y_shape, dtype), k, stride, pad)
    np.testing.assert_array_equal(y, pooling.max_pool_forward(np, x, *args))
    dx = cuda_pooling.max_pool_backward(x, dy, poisoned(x_shape, dtype), k, stride, pad)
    np.testing.assert_array_equal(dx, pooling.max_pool_backward(np, x, dy, *args))

    finite = np.nan_to_num(x, nan=0.5, neginf=-2.5)  # averages of finite values
    y = cuda_pooling.avg_pool_forward(finite, poisoned(y_shape, dtype), k, stride, pad)
    np.testing.assert_array_equal(y, pooling.avg_pool_forward(np, finite, *args))
    dx = cuda_pooling.avg_pool_backward(dy, poisoned(x_shape, dtype), k, stride, pad)
    np.testing.assert_array_equal(dx, pooling.avg_pool_backward(np, dy, x_shape, *args))


def test_kernels_loop_past_their_grid(emulator, monkeypatch):
    monkeypatch.setattr(cuda_pooling, "MAX_BLOCKS", 2)
    x_shape, k, stride, pad, ceil_mode = (2, 3, 8, 8), 3, 2, 1, True
    rng = np.random.default_rng(4)
    x = tied_input(rng, x_shape, np.float32, False)
    y_shape = (*x_shape[:2], *output_hw(x_shape, k, stride, pad, ceil_mode))
    dy = rng.standard_normal(y_shape).astype(np.float32)
    y = cuda_pooling.max_pool_forward(x, poisoned(y_shape, np.float32), k, stride, pad)
    np.testing.assert_array_equal(y, pooling.max_pool_forward(np, x, k, stride, pad, ceil_mode))
    dx = cuda_pooling.max_pool_backward(x, dy, poisoned(x_shape, np.float32), k, stride, pad)
    np.testing.assert_array_equal(dx, pooling.max_pool_backward(np, x, dy, k, stride, pad,
                                                                ceil_mode))


def test_which_calls_take_the_kernels(emulator, monkeypatch):
    """Through the array code's entry points: CuPy float32 calls run the kernels (here
    on the emulator, NumPy under CuPy's name) with the array code's bits;
    VMEM_CUDA_POOLING=0, other dtypes and strided arrays keep the array code."""
    monkeypatch.delenv("VMEM_CUDA_POOLING", raising=False)
    cp = numpy_as_cupy()
    rng = np.random.default_rng(8)
    x = tied_input(rng, (2, 3, 8, 8), np.float32, False)
    dy = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    args = (2, 2, 0, False)
    assert kernel_module(cp, "pooling", x, dy) is cuda_pooling
    np.testing.assert_array_equal(pooling.max_pool_backward(cp, x, dy, *args),
                                  pooling.max_pool_backward(np, x, dy, *args))
    np.testing.assert_array_equal(pooling.avg_pool_forward(cp, x, *args),
                                  pooling.avg_pool_forward(np, x, *args))
    assert kernel_module(np, "pooling", x) is None
    assert kernel_module(cp, "pooling", x.astype(np.float16)) is None
    assert kernel_module(cp, "pooling", x, dy.astype(np.float64)) is None
    assert kernel_module(cp, "pooling", x[:, :, :, ::2]) is None
    monkeypatch.setenv("VMEM_CUDA_POOLING", "0")
    assert kernel_module(cp, "pooling", x) is None


def test_every_kernel_is_named():
    assert len(cuda_pooling.all_name_expressions()) == 2 * len(cuda_pooling.KERNELS)


def test_a_gradient_of_the_wrong_shape_is_refused_before_any_kernel(emulator):
    """The kernels index dy by the geometry; a mismatched dy would be read past its end."""
    cp = numpy_as_cupy()
    x = np.zeros((2, 3, 8, 8), np.float32)
    wrong = np.zeros((2, 3, 3, 3), np.float32)  # the output is 4 x 4
    for backward in (lambda xp: pooling.max_pool_backward(xp, x, wrong, 2, 2, 0, False),
                     lambda xp: pooling.avg_pool_backward(xp, wrong, x.shape, 2, 2, 0, False)):
        for xp in (np, cp):
            with pytest.raises(ValueError, match=r"dy has shape \(2, 3, 3, 3\), expected"):
                backward(xp)
