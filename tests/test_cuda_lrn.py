"""The CUDA C of vmem.kernels.cuda_lrn on the CPU emulator (tests/cuda_emulator.py; needs
g++, skipped without) against the array code of vmem.kernels.lrn on NumPy, outputs
poisoned (NaN) first. The kernels do the array code's operations in its order, so
with the same pow on both sides -- the C library's, which the emulator calls and
which the array code gets here in place of NumPy's own -- every bit agrees; with
NumPy's pow, to a few units in the last place. And which calls take the kernels."""

from __future__ import annotations

import ctypes
import ctypes.util
import types

import numpy as np
import pytest
from cuda_emulator import emulator_fixture, numpy_as_cupy

from vmem.kernels import cuda_lrn, lrn
from vmem.kernels.cuda_module import kernel_module

CASES = [  # (shape, size, alpha, beta, k)
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),     # AlexNet's constants
    ((1, 5, 2, 3), 5, 1e-2, 0.75, 1.0),     # GoogLeNet's k, a large alpha (visible terms)
    ((2, 3, 4), 4, 0.5, 0.5, 1.0),          # an even window; one trailing axis
    ((3, 2), 3, 0.3, 0.9, 1.5),             # rank 2; the window wider than the channels
    ((1, 9, 20, 20), 5, 0.1, 0.75, 2.0),    # planes longer than a block's threads
]


def libc_pow_numpy() -> types.ModuleType:
    """NumPy with `power` computed element by element by the C library's powf / pow
    (what the emulated kernels call), so that only the order of operations can differ."""
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    for name, ctype in (("powf", ctypes.c_float), ("pow", ctypes.c_double)):
        getattr(libm, name).argtypes = [ctype, ctype]
        getattr(libm, name).restype = ctype

    def power(a, b):
        fn = libm.powf if a.dtype == np.float32 else libm.pow
        exponent = float(a.dtype.type(b))
        return np.array([fn(float(v), exponent) for v in a.reshape(-1)],
                        dtype=a.dtype).reshape(a.shape)

    module = types.ModuleType("numpy_with_libc_pow")
    module.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined]
    module.power = power  # type: ignore[attr-defined]
    return module


emulator = emulator_fixture(cuda_lrn)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, size, alpha, beta, k", CASES)
def test_kernels_match_the_array_code(emulator, shape, size, alpha, beta, k, dtype):
    rng = np.random.default_rng(abs(hash((shape, size))) % 2**32)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    args = (size, alpha, beta, k)
    xp = libc_pow_numpy()
    y = cuda_lrn.lrn_forward(x, np.full(shape, np.nan, dtype), *args)
    np.testing.assert_array_equal(y, lrn.lrn_forward(xp, x, *args))
    dx = cuda_lrn.lrn_backward(x, dy, np.full(shape, np.nan, dtype), *args)
    np.testing.assert_array_equal(dx, lrn.lrn_backward(xp, x, dy, *args))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, lrn.lrn_forward(np, x, *args), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, lrn.lrn_backward(np, x, dy, *args), rtol=tol, atol=tol)


def test_kernels_loop_past_their_grid(emulator, monkeypatch):
    monkeypatch.setattr(cuda_lrn, "MAX_BLOCKS", 3)
    x = np.random.default_rng(2).standard_normal((2, 6, 3, 3)).astype(np.float32)
    dy = np.ones_like(x)
    args = (5, 0.1, 0.75, 2.0)
    xp = libc_pow_numpy()
    np.testing.assert_array_equal(cuda_lrn.lrn_forward(x, np.full_like(x, np.nan), *args),
                                  lrn.lrn_forward(xp, x, *args))
    np.testing.assert_array_equal(cuda_lrn.lrn_backward(x, dy, np.full_like(x, np.nan), *args),
                                  lrn.lrn_backward(xp, x, dy, *args))


def test_which_calls_take_the_kernels(emulator, monkeypatch):
    monkeypatch.delenv("VMEM_CUDA_LRN", raising=False)
    cp = numpy_as_cupy()
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 3)).astype(np.float32)
    args = (5, 0.1, 0.75, 2.0)
    assert kernel_module(cp, "lrn", x) is cuda_lrn
    np.testing.assert_array_equal(lrn.lrn_backward(cp, x, x, *args),
                                  lrn.lrn_backward(libc_pow_numpy(), x, x, *args))
    assert kernel_module(np, "lrn", x) is None
    assert kernel_module(cp, "lrn", x.astype(np.float16)) is None
    assert kernel_module(cp, "lrn", x[:, :, ::2]) is None
    assert kernel_module(cp, "lrn", x[0, 0, 0]) is None  # rank 1: no channel axis
    monkeypatch.setenv("VMEM_CUDA_LRN", "0")
    assert kernel_module(cp, "lrn", x) is None


def test_a_gradient_of_the_wrong_shape_is_refused_before_any_kernel(emulator):
    x = np.zeros((2, 6, 3, 3), np.float32)
    for xp in (np, numpy_as_cupy()):
        with pytest.raises(ValueError, match="lrn backward: dy has shape"):
            lrn.lrn_backward(xp, x, x[:1], 5, 0.1, 0.75, 2.0)
