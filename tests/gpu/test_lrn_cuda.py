"""The LRN CUDA kernels (vmem.kernels.cuda_lrn) against the array code, on NumPy and on
CuPy (VMEM_CUDA_LRN=0), outputs poisoned (NaN) first. To rounding, not bit for bit:
the kernels call CUDA's pow, NumPy its own, and CuPy's `power` may take another path
to the same function. Skipped without CuPy and a CUDA device (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vmem.kernels import cuda_lrn, lrn


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape, size", [((4, 96, 27, 27), 5), ((2, 7, 3, 4), 4), ((3, 2), 3)])
def test_kernels_match_the_array_code(cp, monkeypatch, shape, size, dtype, tol):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    args = (size, 1e-2, 0.75, 2.0)
    gx, gdy = cp.asarray(x), cp.asarray(dy)
    y = cuda_lrn.lrn_forward(gx, cp.full(shape, cp.nan, dtype=dtype), *args)
    dx = cuda_lrn.lrn_backward(gx, gdy, cp.full(shape, cp.nan, dtype=dtype), *args)
    monkeypatch.setenv("VMEM_CUDA_LRN", "0")
    for ref_y, ref_dx in ((lrn.lrn_forward(np, x, *args), lrn.lrn_backward(np, x, dy, *args)),
                          (cp.asnumpy(lrn.lrn_forward(cp, gx, *args)),
                           cp.asnumpy(lrn.lrn_backward(cp, gx, gdy, *args)))):
        np.testing.assert_allclose(cp.asnumpy(y), ref_y, rtol=tol, atol=tol)
        np.testing.assert_allclose(cp.asnumpy(dx), ref_dx, rtol=tol, atol=tol)
