"""Convolution's CuPy path without a GPU. The CUDA C of vmem.kernels.cuda_im2col runs on
the CPU emulator (tests/cuda_emulator.py; needs g++, skipped without), bit for bit
against the array code of vmem.kernels.im2col on NumPy, with every output poisoned
(NaN) first so an element a kernel skips fails. The Conv layer runs on a stand-in for
CuPy (NumPy under CuPy's name, cuBLAS's accumulating GEMM done by NumPy) and must give
NumPy's bits: which calls take the kernels, which GEMMs add into the gradient, and the
cuBLAS strided-batched calls that replace CuPy's broadcasting matmul, run by a NumPy
stand-in that reads them column-major from flat buffers."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import emulator_fixture, numpy_as_cupy
from window_cases import GEOMETRIES

from vmem.kernels import cuda_im2col, gemm
from vmem.kernels.cuda_module import kernel_module
from vmem.kernels.im2col import col2im, cols_shape, im2col
from vmem.layers import Context, Conv

emulator = emulator_fixture(cuda_im2col)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, k, stride, pad", GEOMETRIES)
def test_kernels_match_the_array_code_bit_for_bit(emulator, x_shape, k, stride, pad, dtype):
    rng = np.random.default_rng(abs(hash((x_shape, k, stride, pad))) % 2**32)
    x = rng.standard_normal(x_shape).astype(dtype)
    cols = np.full(cols_shape(x_shape, k, stride, pad), np.nan, dtype=dtype)
    cuda_im2col.im2col(x, k, stride, pad, cols)
    expected = im2col(np, x, k, stride, pad)
    np.testing.assert_array_equal(cols, expected)

    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = np.full(x_shape, np.nan, dtype=dtype)
    cuda_im2col.col2im(dcols, x_shape, k, stride, pad, dx)
    np.testing.assert_array_equal(dx, col2im(np, dcols, x_shape, k, stride, pad))


def test_kernels_loop_past_their_grid(emulator, monkeypatch):
    """More rows and planes than blocks: each block takes every grid-th one."""
    monkeypatch.setattr(cuda_im2col, "MAX_BLOCKS", 3)
    x_shape, k, stride, pad = (2, 3, 6, 5), 3, 1, 1
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    cols = np.full(cols_shape(x_shape, k, stride, pad), np.nan, dtype=np.float32)
    np.testing.assert_array_equal(cuda_im2col.im2col(x, k, stride, pad, cols),
                                  im2col(np, x, k, stride, pad))
    dx = np.full(x_shape, np.nan, dtype=np.float32)
    np.testing.assert_array_equal(cuda_im2col.col2im(cols, x_shape, k, stride, pad, dx),
                                  col2im(np, cols, x_shape, k, stride, pad))


def test_cupy_calls_take_the_kernels(emulator, monkeypatch):
    """Through the array code's entry points: a CuPy float32 call runs the kernels (here
    on the emulator) and gives the array code's bits; VMEM_CUDA_IM2COL=0 turns them off."""
    cp = numpy_as_cupy()
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 5)).astype(np.float32)
    cols = im2col(cp, x, 3, 1, 1)
    np.testing.assert_array_equal(cols, im2col(np, x, 3, 1, 1))
    np.testing.assert_array_equal(col2im(cp, cols, x.shape, 3, 1, 1),
                                  col2im(np, cols, x.shape, 3, 1, 1))
    assert kernel_module(cp, "im2col", x, cols, x.shape, 3, 1) is cuda_im2col
    monkeypatch.setenv("VMEM_CUDA_IM2COL", "0")
    assert kernel_module(cp, "im2col", x, cols, x.shape, 3, 1) is None


def test_which_calls_the_kernels_take(monkeypatch):
    monkeypatch.delenv("VMEM_CUDA_IM2COL", raising=False)
    cp = numpy_as_cupy()
    x = np.zeros((2, 3, 6, 5), np.float32)
    cols = np.zeros(cols_shape(x.shape, 3, 1, 1), np.float32)
    assert kernel_module(np, "im2col", x, cols, x.shape, 3, 1) is None  # NumPy: the array code
    assert kernel_module(cp, "im2col", x, cols, x.shape, 3, 1) is cuda_im2col
    assert kernel_module(cp, "im2col", x.astype(np.float16), cols.astype(np.float16), x.shape, 3,
                         1) is None  # no float16 kernels
    assert kernel_module(cp, "im2col", x, cols.astype(np.float64), x.shape, 3, 1) is None
    assert kernel_module(cp, "im2col", x[:, :, :, ::2], cols, x.shape, 3, 1) is None  # strided
    big = (1, 1, 2**15, 2**15)  # a plane past 32-bit indexing once k*k columns are counted
    assert kernel_module(cp, "im2col", x, cols, big, 3, 1) is None


def test_launch_shapes():
    assert cuda_im2col.threads_for(1) == 32 and cuda_im2col.threads_for(196) == 224
    assert cuda_im2col.threads_for(50176) == cuda_im2col.MAX_THREADS
    assert len(cuda_im2col.all_name_expressions()) == 4


def column_major(flat: np.ndarray, offset: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """The rows x cols column-major matrix at `offset` of `flat` with leading dimension
    ld, as a view; it must lie inside the buffer."""
    assert ld >= rows and offset >= 0 and offset + (cols - 1) * ld + rows <= flat.size
    size = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(rows, cols),
                                           strides=(size, ld * size))


def run_gemms_on_numpy(xp, calls, a, b, c, accumulate) -> None:
    """cublas<t>gemmStridedBatched by its definition (C_i = op(A_i) B_i [+ C_i],
    column-major), each product computed as NumPy computes the row-major
    C_i^T = B_i^T op(A_i)^T, and then added: the bits of NumPy's matmul, and of its
    matmul into a temporary then added."""
    fa, fb, fc = a.reshape(-1), b.reshape(-1), c.reshape(-1)
    for call in calls:
        a_rows, a_cols = (call.k, call.m) if call.trans_a else (call.m, call.k)
        for i in range(call.batch):
            ma = column_major(fa, call.offset_a + i * call.stride_a, a_rows, a_cols, call.lda)
            mb = column_major(fb, call.offset_b + i * call.stride_b, call.k, call.n, call.ldb)
            mc = column_major(fc, call.offset_c + i * call.stride_c, call.m, call.n, call.ldc)
            product = np.matmul(mb.T, ma if call.trans_a else ma.T)
            if accumulate:
                mc.T[...] += product
            else:
                mc.T[...] = product


@pytest.mark.parametrize("groups, samples", [(1, 1), (1, 4), (3, 2)])
def test_strided_batched_calls_compute_the_shared_left_product(groups, samples):
    rng = np.random.default_rng(groups * 10 + samples)
    a = rng.standard_normal((groups, 5, 7))
    b = rng.standard_normal((samples, groups, 7, 6))
    out = np.full((samples, groups, 5, 6), np.nan)
    calls = gemm.shared_left_calls(a.shape, b.shape)
    assert len(calls) == groups and all(call.stride_b == 0 for call in calls)
    run_gemms_on_numpy(np, calls, b, a, out, False)  # cuBLAS's A is b, its B is a
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        gemm.shared_left_calls((groups, 5, 8), b.shape)


@pytest.mark.parametrize("samples, groups, m, n, k", [(3, 1, 5, 6, 7), (2, 2, 1, 4, 3),
                                                      (1, 1, 4, 1, 1)])
def test_nt_sum_calls_sum_a_times_b_transposed(samples, groups, m, n, k):
    rng = np.random.default_rng(samples * 1000 + m * 100 + n * 10 + k)
    a = rng.standard_normal((samples, groups, m, k))
    b = rng.standard_normal((samples, groups, n, k))
    c = rng.standard_normal((groups, m, n))
    calls = gemm.nt_sum_calls(a.shape, b.shape)
    assert len(calls) == samples * groups
    expected = np.einsum("sgmk,sgnk->gmn", a, b)
    out = np.full(c.shape, np.nan)  # start: the first sample's products write out
    run_gemms_on_numpy(np, calls[:groups], b, a, out, False)  # cuBLAS's A is b, its B is a
    run_gemms_on_numpy(np, calls[groups:], b, a, out, True)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    out = c.copy()
    run_gemms_on_numpy(np, calls, b, a, out, True)
    np.testing.assert_allclose(out, c + expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        gemm.nt_sum_calls(a.shape, (samples, groups, n, k + 1))


def test_matmul_nt_sum_on_numpy_needs_scratch_to_add():
    a = np.ones((2, 1, 2, 3))
    out = np.empty((1, 2, 2))
    with pytest.raises(ValueError, match="scratch"):
        gemm.matmul_nt_sum(np, a, a, out, start=False)
    np.testing.assert_array_equal(gemm.matmul_nt_sum(np, a, a, out, start=True,
                                                     scratch=np.empty_like(out)),
                                  np.full((1, 2, 2), 6.0))


@pytest.mark.parametrize("kernel, stride, pad", [(3, 2, 1), (1, 1, 0)])  # lowered; pointwise
@pytest.mark.parametrize("groups", [1, 2])
def test_conv_on_cupy_gives_numpys_bits_for_every_chunk(emulator, monkeypatch, groups, kernel,
                                                        stride, pad):
    """On CuPy the layer lowers with the kernels and makes every GEMM a cuBLAS call, the
    weight gradient's adding each sample's product into dW (no temp); with GEMMs that
    round as NumPy does, every output equals the NumPy path's, for every chunk size."""
    calls: list = []

    def record_and_run(xp, batch_calls, a, b, c, accumulate):
        calls.extend((call, accumulate) for call in batch_calls)
        run_gemms_on_numpy(xp, batch_calls, a, b, c, accumulate)

    monkeypatch.setattr(gemm, "_run_gemms", record_and_run)
    cp = numpy_as_cupy()
    layer = Conv(name="c", out_channels=6, kernel=kernel, stride=stride, pad=pad, groups=groups)
    in_shape = (5, 4, 9, 8)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(in_shape).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in layer.init_params([in_shape], rng).items()}
    dy = rng.standard_normal(layer.output_shape([in_shape])).astype(np.float32)
    algos = layer.algorithms([in_shape], 4)
    # chunks 5, 4, 2, 1 (one that does not divide the batch); pointwise, the whole batch
    assert [a.chunk for a in algos] == ([0] if layer.pointwise else [5, 4, 2, 1])
    for algo in algos:
        y_np, _ = layer.forward(np, [x], params, algo, Context())
        y_cp, _ = layer.forward(cp, [x], params, algo, Context())
        np.testing.assert_array_equal(y_cp, y_np)
        (dx_np,), g_np = layer.backward(np, dy, [x], None, params, (), algo, [in_shape], [True])
        (dx_cp,), g_cp = layer.backward(cp, dy, [x], None, params, (), algo, [in_shape], [True])
        np.testing.assert_array_equal(dx_cp, dx_np)
        for name in g_np:
            np.testing.assert_array_equal(g_cp[name], g_np[name], err_msg=f"{algo.name} {name}")
    # forward and dcol: one strided-batched call per group and chunk; dW: one call per
    # sample and group, every sample's but the first adding into dW
    chunks = sum(-(-in_shape[0] // (algo.chunk or in_shape[0])) for algo in algos)
    batched = [c for c, _ in calls if not c.trans_a]
    per_sample = [(c, acc) for c, acc in calls if c.trans_a]
    assert len(batched) == 2 * groups * chunks
    assert len(per_sample) == len(algos) * in_shape[0] * groups
    assert sum(acc for _, acc in per_sample) == len(algos) * (in_shape[0] - 1) * groups


def test_without_the_cublas_switch_conv_uses_cupys_matmul(emulator, monkeypatch):
    """VMEM_CUDA_GEMM=0: no direct cuBLAS call; dW through a temporary, as on NumPy."""
    monkeypatch.setenv("VMEM_CUDA_GEMM", "0")
    monkeypatch.setattr(gemm, "_run_gemms", lambda *args: pytest.fail("cuBLAS called"))
    cp = numpy_as_cupy()
    layer = Conv(name="c", out_channels=3, kernel=3, pad=1)
    in_shape = (3, 2, 5, 5)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(in_shape).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in layer.init_params([in_shape], rng).items()}
    dy = rng.standard_normal(layer.output_shape([in_shape])).astype(np.float32)
    algo = layer.algorithms([in_shape], 4)[0]
    assert not gemm.accumulates_in_place(cp, x)
    (dx_cp,), g_cp = layer.backward(cp, dy, [x], None, params, (), algo, [in_shape], [True])
    (dx_np,), g_np = layer.backward(np, dy, [x], None, params, (), algo, [in_shape], [True])
    np.testing.assert_array_equal(dx_cp, dx_np)
    np.testing.assert_array_equal(g_cp["weight"], g_np["weight"])
