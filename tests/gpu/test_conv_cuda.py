"""Convolution on CuPy: the im2col / col2im CUDA kernels (vmem.kernels.cuda_im2col)
bit for bit against the array code on NumPy, the GEMM that adds into its output
(vmem.kernels.gemm), and the Conv layer on CuPy against the same layer on NumPy, for
every chunk size. Outputs are poisoned (NaN) before a kernel writes them. Skipped
without CuPy and a CUDA device (conftest.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from window_cases import GEOMETRIES

from vmem.kernels import cuda_im2col
from vmem.kernels.gemm import matmul_nt_sum, matmul_shared_left
from vmem.kernels.im2col import col2im, cols_shape, im2col
from vmem.layers import Context, Conv

TF32 = os.environ.get("CUPY_TF32") == "1"
GEMM_RTOL = 2e-2 if TF32 else 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, stride, pad", GEOMETRIES)
def test_kernels_match_the_array_code_bit_for_bit(cp, x_shape, k, stride, pad, dtype,
                                                  monkeypatch):
    monkeypatch.delenv("VMEM_CUDA_IM2COL", raising=False)
    rng = np.random.default_rng(abs(hash((x_shape, k, stride, pad))) % 2**32)
    x = rng.standard_normal(x_shape).astype(dtype)
    cols = cp.full(cols_shape(x_shape, k, stride, pad), cp.nan, dtype=dtype)
    cuda_im2col.im2col(cp.asarray(x), k, stride, pad, cols)
    np.testing.assert_array_equal(cp.asnumpy(cols), im2col(np, x, k, stride, pad))

    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = cp.full(x_shape, cp.nan, dtype=dtype)
    cuda_im2col.col2im(cp.asarray(dcols), x_shape, k, stride, pad, dx)
    np.testing.assert_array_equal(cp.asnumpy(dx), col2im(np, dcols, x_shape, k, stride, pad))
    # the array module's entry points take the kernels, and give the same bits
    np.testing.assert_array_equal(cp.asnumpy(col2im(cp, cp.asarray(dcols), x_shape, k, stride,
                                                    pad)), cp.asnumpy(dx))


def test_array_code_on_cupy_gives_the_kernels_bits(cp, monkeypatch):
    """VMEM_CUDA_IM2COL=0 (the strided-copy fallback) and the kernels agree bit for bit."""
    x_shape, k, stride, pad = (4, 16, 28, 28), 3, 1, 1
    x = cp.asarray(np.random.default_rng(5).standard_normal(x_shape).astype(np.float32))
    monkeypatch.delenv("VMEM_CUDA_IM2COL", raising=False)
    cols = im2col(cp, x, k, stride, pad)
    dx = col2im(cp, cols, x_shape, k, stride, pad)
    monkeypatch.setenv("VMEM_CUDA_IM2COL", "0")
    assert bool((im2col(cp, x, k, stride, pad) == cols).all())
    assert bool((col2im(cp, cols, x_shape, k, stride, pad) == dx).all())


@pytest.mark.parametrize("start", [True, False])
def test_gemm_adds_each_sample_into_its_output(cp, start):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((3, 2, 64, 300)), rng.standard_normal((3, 2, 72, 300))
    c = rng.standard_normal((2, 64, 72)).astype(np.float32)
    a, b = a.astype(np.float32), b.astype(np.float32)
    ref = np.einsum("sgmk,sgnk->gmn", a.astype(np.float64), b) + (0 if start else c)
    out = cp.asarray(c)
    matmul_nt_sum(cp, cp.asarray(a), cp.asarray(b), out, start=start)
    np.testing.assert_allclose(cp.asnumpy(out), ref, rtol=GEMM_RTOL, atol=GEMM_RTOL * 100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_shares_the_left_matrix_across_samples(cp, dtype):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((2, 24, 40)).astype(dtype)
    b = rng.standard_normal((3, 2, 40, 33)).astype(dtype)
    out = cp.full((3, 2, 24, 33), cp.nan, dtype=dtype)
    matmul_shared_left(cp, cp.asarray(a), cp.asarray(b), out)
    tol = GEMM_RTOL if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(out), np.matmul(a.astype(np.float64), b),
                               rtol=tol, atol=tol * 30)


@pytest.mark.parametrize("kernel, pad", [(3, 1), (1, 0)])  # lowered by im2col; pointwise
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_layer_on_cupy_matches_numpy_for_every_chunk(cp, groups, kernel, pad):
    layer = Conv(name="c", out_channels=8, kernel=kernel, stride=1, pad=pad, groups=groups)
    in_shape = (5, 4, 12, 10)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(in_shape).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in layer.init_params([in_shape], rng).items()}
    params["bias"] = rng.standard_normal(params["bias"].shape).astype(np.float32)
    algos = layer.algorithms([in_shape], 4)
    y_ref, _ = layer.forward(np, [x], params, algos[0], Context())
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    (dx_ref,), g_ref = layer.backward(np, dy.copy(), [x], None, params, (), algos[0],
                                      [in_shape], [True])
    gparams = {k: cp.asarray(v) for k, v in params.items()}
    for algo in algos:
        y, _ = layer.forward(cp, [cp.asarray(x)], gparams, algo, Context())
        (dx,), grads = layer.backward(cp, cp.asarray(dy), [cp.asarray(x)], None, gparams, (),
                                      algo, [in_shape], [True])
        tol = {"rtol": GEMM_RTOL * 10, "atol": GEMM_RTOL * 10}
        np.testing.assert_allclose(cp.asnumpy(y), y_ref, err_msg=algo.name, **tol)
        np.testing.assert_allclose(cp.asnumpy(dx), dx_ref, err_msg=algo.name, **tol)
        for name, g in grads.items():
            np.testing.assert_allclose(cp.asnumpy(g), g_ref[name], err_msg=f"{algo.name} {name}",
                                       **tol)
