"""The NumPy kernels split over threads give the same bits for every thread count
(1, 2, 3) and chunk size: each against a plain reference kept here (the k*k-slice
im2col, whole-batch loops, whole-array update rules), the GEMMs against each other
across thread counts and against float64, and whole training steps across thread
counts and policies (bit-identical losses and weights). No timings."""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import pytest
from test_policies import train
from window_cases import POOL_GEOMETRIES, tied_input

import vmem
from vmem.errors import UsageError
from vmem.kernels import batchnorm, gemm, lrn, pooling
from vmem.kernels import im2col as im2col_module
from vmem.kernels import threads as threads_module
from vmem.kernels.threads import ranges, resolve_threads, run_tasks, using_threads
from vmem.kernels.windows import conv_output_size, offsets_2d, pool_output_size
from vmem.layers.activation import relu_backward_into
from vmem.layers.base import Algorithm, Context
from vmem.layers.conv import Conv
from vmem.optim import SGD, AdamW

THREADS = (1, 2, 3)
RNG = np.random.default_rng(18)


@pytest.fixture(autouse=True)
def every_pass_fans_out(monkeypatch):
    """These tests' maps are small, and a pass shorter than a task's fewest elements
    or FLOPs runs as one task: without this the cuts under test would not happen."""
    monkeypatch.setattr(threads_module, "TASK_ELEMENTS", 1)
    monkeypatch.setattr(gemm, "GEMM_TASK_FLOPS", 1)


# ---------------------------------------------------------------- references


def reference_im2col(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """One strided slice per kernel offset, zeros where a window reads padding."""
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    cols = np.zeros((n, c, k, k, ho, wo), dtype=x.dtype)
    for ki, kj, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        cols[:, :, ki, kj, orow, ocol] = x[:, :, irow, icol]
    return cols.reshape(n, c * k * k, ho * wo)


def reference_col2im(cols: np.ndarray, shape: tuple[int, ...], k: int, stride: int,
                     pad: int) -> np.ndarray:
    """Each pixel's contributions added in row-major offset order, from zero."""
    n, c, h, w = shape
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    out = np.zeros(shape, dtype=cols.dtype)
    cols6 = cols.reshape(n, c, k, k, ho, wo)
    for ki, kj, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        out[:, :, irow, icol] += cols6[:, :, ki, kj, orow, ocol]
    return out


def reference_max_pool(x: np.ndarray, k: int, stride: int, pad: int, ceil_mode: bool,
                       dy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Window maxima and, for dy (else `reference_dy`), dx routed to each window's
    first maximum (row-major), over the whole batch at once."""
    n, c, h, w = x.shape
    ho, wo = (pool_output_size(h, k, stride, pad, ceil_mode),
              pool_output_size(w, k, stride, pad, ceil_mode))
    y = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        y[:, :, orow, ocol] = np.maximum(y[:, :, orow, ocol], x[:, :, irow, icol])
    dy = reference_dy(y.shape, x.dtype) if dy is None else dy
    dx = np.zeros(x.shape, dtype=x.dtype)
    pending = np.ones(y.shape, dtype=bool)
    for _, _, (orow, ocol), (irow, icol) in offsets_2d((ho, wo), (h, w), k, stride, pad):
        hit = (x[:, :, irow, icol] == y[:, :, orow, ocol]) & pending[:, :, orow, ocol]
        pending[:, :, orow, ocol] &= ~hit
        dx[:, :, irow, icol] += np.where(hit, dy[:, :, orow, ocol], 0)
    return y, dx


def reference_dy(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.random.default_rng(7).standard_normal(shape).astype(dtype)


def reference_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    out = a.copy()
    channels = a.shape[1]
    for d in range(1, min(after, channels - 1) + 1):
        out[:, : channels - d] += a[:, d:]
    for d in range(1, min(before, channels - 1) + 1):
        out[:, d:] += a[:, : channels - d]
    return out


def reference_lrn(x: np.ndarray, dy: np.ndarray, size: int, alpha: float, beta: float,
                  k: float) -> tuple[np.ndarray, np.ndarray]:
    """LRN forward and backward over the whole batch, in the kernels' operation order."""
    scale = reference_window_sum(x * x, size // 2, (size - 1) // 2) * (alpha / size) + k
    y = x * np.power(scale, -beta)
    ratio = dy * x * np.power(scale, -beta) / scale
    back = reference_window_sum(ratio, (size - 1) // 2, size // 2) * x
    back *= -2.0 * alpha * beta / size
    return y, back + np.power(scale, -beta) * dy


# ---------------------------------------------------------------- kernels


IM2COL_CASES = [((4, 3, 9, 8), 3, 1, 1), ((5, 2, 11, 11), 5, 2, 2), ((3, 3, 15, 15), 11, 4, 0),
                ((2, 4, 7, 5), 1, 1, 0), ((6, 2, 6, 6), 3, 3, 2), ((1, 3, 5, 5), 2, 1, 0)]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("group_elements", [1, 3 * 3 * 9 * 8, 1 << 16])
@pytest.mark.parametrize(("shape", "k", "stride", "pad"), IM2COL_CASES)
def test_im2col_and_col2im_equal_the_slice_references(shape, k, stride, pad, threads,
                                                     group_elements, monkeypatch):
    """Samples lowered one at a time, two or three at a time (the last group short), or
    all at once, on every thread count: the reference's columns and col2im's sums."""
    monkeypatch.setattr(im2col_module, "LOWER_GROUP_ELEMENTS", group_elements)
    x = RNG.standard_normal(shape).astype(np.float32)
    expected = reference_im2col(x, k, stride, pad)
    with using_threads(threads):
        cols = im2col_module.im2col(np, x, k, stride, pad)
        out = np.full(cols.shape, np.nan, dtype=np.float32)  # every element is written
        im2col_module.im2col(np, x, k, stride, pad, out=out)
        # a non-contiguous input (a transposed copy viewed back) lowers the same
        strided = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
        lowered_strided = im2col_module.im2col(np, strided, k, stride, pad)
        dcols = RNG.standard_normal(cols.shape).astype(np.float32)
        dx = im2col_module.col2im(np, dcols, shape, k, stride, pad)
    np.testing.assert_array_equal(cols, expected)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(lowered_strided, expected)
    np.testing.assert_array_equal(dx, reference_col2im(dcols, shape, k, stride, pad))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(("k", "stride", "pad", "ceil_mode"),
                         [(3, 2, 0, False), (3, 2, 1, True), (2, 2, 0, False), (3, 1, 1, True)])
def test_max_pool_equals_the_whole_batch_reference(k, stride, pad, ceil_mode, threads,
                                                   monkeypatch):
    x = RNG.integers(0, 3, (7, 3, 9, 9)).astype(np.float32)  # many tied maxima
    y_ref, dx_ref = reference_max_pool(x, k, stride, pad, ceil_mode)
    dy = reference_dy(y_ref.shape, x.dtype)
    with using_threads(threads):
        y = pooling.max_pool_forward(np, x, k, stride, pad, ceil_mode)
        dx = pooling.max_pool_backward(np, x, dy, k, stride, pad, ceil_mode)
        for name in ("MAX_POOL_TASK_BYTES", "MAX_POOL_THREADED_TASK_BYTES"):
            monkeypatch.setattr(pooling, name, 1)  # one plane a task
        y_small = pooling.max_pool_forward(np, x, k, stride, pad, ceil_mode)
        dx_small = pooling.max_pool_backward(np, x, dy, k, stride, pad, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(y_small, y_ref)
    np.testing.assert_array_equal(dx_small, dx_ref)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize(("shape", "k", "stride", "pad", "ceil_mode"), POOL_GEOMETRIES)
def test_max_pool_on_the_padded_grid_equals_the_reference(shape, k, stride, pad, ceil_mode,
                                                          threads, monkeypatch):
    """The 1-D passes over padded planes give the reference's bits for every geometry,
    for tied inputs, with NaN, and with NaN and -inf (planes holding -inf are routed
    the reference way), for finite dy and for dy holding inf and NaN (added only where a
    window routes), in tasks of one plane, three planes and all of them."""
    rng = np.random.default_rng(sum(shape) + k)
    nan_only = tied_input(rng, shape, np.float32, True)
    nan_only[nan_only == -np.inf] = np.nan  # the padded grid's path, NaN included
    for x in (tied_input(rng, shape, np.float32, False), nan_only,
              tied_input(rng, shape, np.float32, True)):
        y_ref, _ = reference_max_pool(x, k, stride, pad, ceil_mode)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        dy_special = dy.copy()
        dy_special.reshape(-1)[::3] = np.inf
        dy_special.reshape(-1)[1::5] = np.nan
        for task_bytes in (pooling.MAX_POOL_TASK_BYTES, 1, 3 * pooling.PaddedGrid.of(
                shape[2:], k, stride, pad, y_ref.shape[2:]).backward_bytes(4, 4)):
            for name in ("MAX_POOL_TASK_BYTES", "MAX_POOL_THREADED_TASK_BYTES"):
                monkeypatch.setattr(pooling, name, task_bytes)
            with using_threads(threads):
                y = pooling.max_pool_forward(np, x, k, stride, pad, ceil_mode)
                np.testing.assert_array_equal(y, y_ref)
                for grad in (dy, dy_special):
                    _, dx_ref = reference_max_pool(x, k, stride, pad, ceil_mode, grad)
                    dx = pooling.max_pool_backward(np, x, grad, k, stride, pad, ceil_mode)
                    np.testing.assert_array_equal(dx, dx_ref)
                    assert not np.signbit(dx[dx == 0]).any()  # never -0, as the reference


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", [5, 4, 1])
def test_lrn_equals_the_whole_batch_reference(size, threads, monkeypatch):
    x = RNG.standard_normal((9, 7, 4, 3)).astype(np.float32)
    dy = RNG.standard_normal(x.shape).astype(np.float32)
    args = (size, 1e-2, 0.75, 2.0)
    y_ref, dx_ref = reference_lrn(x, dy, *args)
    for scratch in (lrn.LRN_SCRATCH_BYTES, 1):
        monkeypatch.setattr(lrn, "LRN_SCRATCH_BYTES", scratch)
        with using_threads(threads):
            np.testing.assert_array_equal(lrn.lrn_forward(np, x, *args), y_ref)
            np.testing.assert_array_equal(lrn.lrn_backward(np, x, dy, *args), dx_ref)


@pytest.mark.parametrize("block_bytes", [batchnorm.BN_BLOCK_BYTES, 1, 3 * 6 * 4 * 5 * 4])
@pytest.mark.parametrize("shape", [(6, 7, 4, 5), (5, 9), (2, 3, 2, 2, 3)])
def test_batchnorm_in_channel_blocks_matches_float64_and_every_thread_count(
        shape, block_bytes, monkeypatch):
    """The blocked passes (one channel a block, three, or all) against the formulas in
    float64, and bit-identical for 1, 2 and 3 threads; the whole-map passes that
    CuPy runs against the same formulas."""
    monkeypatch.setattr(batchnorm, "BN_BLOCK_BYTES", block_bytes)
    x = (RNG.standard_normal(shape) * 3 + 1.5).astype(np.float32)
    dy = RNG.standard_normal(shape).astype(np.float32)
    c = shape[1]
    weight = RNG.uniform(0.5, 1.5, c).astype(np.float32)
    bias = RNG.standard_normal(c).astype(np.float32)
    axes, bshape = (0, *range(2, x.ndim)), (1, c, *([1] * (x.ndim - 2)))
    x64, dy64, w64 = x.astype(np.float64), dy.astype(np.float64), weight.astype(np.float64)
    mean64, var64 = x64.mean(axis=axes), x64.var(axis=axes)
    inv64 = 1 / np.sqrt(var64 + 1e-5)
    x_hat64 = (x64 - mean64.reshape(bshape)) * inv64.reshape(bshape)
    y64 = x_hat64 * w64.reshape(bshape) + bias.reshape(bshape)
    db64, dw64 = dy64.sum(axis=axes), (dy64 * x_hat64).sum(axis=axes)
    m = x.size // c
    dx64 = (dy64 - x_hat64 * (dw64 / m).reshape(bshape) - (db64 / m).reshape(bshape)) * (
        w64 * inv64).reshape(bshape)
    results = []
    for threads in THREADS:
        with using_threads(threads):
            results.append((*batchnorm.train_forward(np, x, weight, bias, 1e-5),
                            *batchnorm.train_backward(np, x, dy, weight, 1e-5, True)))
            dx_none, *grads = batchnorm.train_backward(np, x, dy, weight, 1e-5, False)
            assert dx_none is None
            for got, want in zip(grads, results[-1][4:], strict=True):
                np.testing.assert_array_equal(got, want)
    for other in results[1:]:
        for got, want in zip(other, results[0], strict=True):
            np.testing.assert_array_equal(got, want)
    whole = (*batchnorm._forward_whole(np, x, weight, bias, 1e-5),
             *batchnorm._backward_whole(np, x, dy, weight, 1e-5, True))
    for values in (results[0], whole):
        for got, want in zip(values, (y64, mean64, var64, dx64, dw64, db64), strict=True):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("mask_elements", [1 << 24, 7])
def test_relu_backward_equals_where(threads, mask_elements, monkeypatch):
    import vmem.layers.activation as activation

    monkeypatch.setattr(activation, "RELU_MASK_ELEMENTS", mask_elements)
    for dtype in (np.float32, np.float64):
        y = np.maximum(RNG.standard_normal((5, 3, 7)), 0).astype(dtype)
        y[1, 1, :3] = np.nan
        dy = RNG.standard_normal(y.shape).astype(dtype)
        dy[0, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]  # kept where y > 0, else +0
        y[0, 0, :4] = [1, 2, 3, 4]
        dy[2, 2, :4] = [np.nan, np.inf, -np.inf, -0.0]
        y[2, 2, :4] = 0
        expected = np.where(y > 0, dy, 0).astype(dtype)
        with using_threads(threads):
            assert relu_backward_into(np, dy, y) is dy
        assert dy.dtype == dtype
        # the same bits: NaN, the infinities and -0 kept, +0 (never -0) written
        np.testing.assert_array_equal(dy.view(f"u{dy.itemsize}"),
                                      expected.view(f"u{dy.itemsize}"))


@pytest.mark.parametrize("threads", THREADS)
def test_elementwise_passes_equal_one_array_operation(threads, monkeypatch):
    """The residual sum, the gradient added in place, the copy and ReLU, split over the
    threads (and into pieces of a few elements), give a single operation's bits; a
    transposed (not contiguous) operand takes the plain operation."""
    from vmem.kernels import elementwise

    monkeypatch.setattr(threads_module, "TASK_ELEMENTS", 4)
    a = RNG.standard_normal((4, 3, 5, 7)).astype(np.float32)
    b = RNG.standard_normal(a.shape).astype(np.float32)
    with using_threads(threads):
        total = elementwise.add(np, a, b)
        np.testing.assert_array_equal(total, a + b)
        target = a.copy()
        assert elementwise.add_into(np, target, b) is target
        np.testing.assert_array_equal(target, a + b)
        copied = elementwise.copy(np, a)
        assert copied is not a and not np.shares_memory(copied, a)
        np.testing.assert_array_equal(copied, a)
        flipped = b.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2)
        np.testing.assert_array_equal(elementwise.add(np, a, flipped), a + b)
        for inplace in (False, True):
            source = a.copy()
            rectified = elementwise.relu(np, source, inplace)
            assert (rectified is source) == inplace
            np.testing.assert_array_equal(rectified, np.maximum(a, 0))
        weight = a.reshape(3, 20, 7)
        turned = elementwise.transposed(np, weight)
        assert turned.flags.c_contiguous
        np.testing.assert_array_equal(turned, weight.transpose(0, 2, 1))


@pytest.mark.parametrize("threads", THREADS)
def test_one_fan_out_of_many_updates_equals_each_update_alone(threads, monkeypatch):
    """`apply_updates` runs the blocks of every parameter in one fan-out, a task's
    range running across parameters (a bias shares one with a weight), and a
    parameter that is not C-contiguous runs whole: the same bits as each parameter's
    own update on one thread, in one block."""
    import vmem.optim as optim

    shapes = [(3,), (37, 11), (5,), (9, 13)]
    arrays = [[RNG.standard_normal(shape).astype(np.float32) for _ in range(3)]
              for shape in shapes]
    arrays[3] = [a.T.copy().T for a in arrays[3]]  # Fortran order: no flat blocks
    sgd = SGD(lr=0.1, momentum=0.9, weight_decay=1e-2)
    expected = [[a.copy() for a in group] for group in arrays]
    with using_threads(1):
        for w, g, v in expected:
            sgd.update(np, w, g, {"velocity": v}, decay=True, step=1)
    monkeypatch.setattr(optim, "UPDATE_BLOCK_ELEMENTS", 4)
    monkeypatch.setattr(optim, "UPDATE_TASK_BLOCKS", 3)  # ranges cross the parameters
    with using_threads(threads):
        optim.apply_updates(np, [sgd.update_of(np, w, g, {"velocity": v}, True, step=1)
                                 for w, g, v in arrays])
    for got, want in zip(arrays, expected, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("task_elements", [1 << 18, 4])
def test_bias_passes_give_numpys_bits_for_every_cut(threads, task_elements, monkeypatch):
    """A convolution's bias added and summed per channel, in channel ranges (down to
    one channel a task) over the threads: the bits of `y + bias` and of
    `dy.sum(axis=2).sum(axis=0)` (which sums a map of one channel pairwise) for batches
    below, at and past NumPy's pairwise block of 8."""
    from vmem.kernels import channels

    monkeypatch.setattr(threads_module, "TASK_ELEMENTS", task_elements)
    for n, c, length in ((1, 5, 49), (8, 3, 7), (9, 64, 30), (33, 1, 20), (16, 130, 1)):
        a = (RNG.standard_normal((n, c, length)) * 100).astype(np.float32)
        bias = RNG.standard_normal(c).astype(np.float32)
        with using_threads(threads):
            sums = channels.channel_sums(np, a)
            added = channels.add_bias(np, a.copy(), bias)
        want = a.sum(axis=2).sum(axis=0)
        np.testing.assert_array_equal(sums.view(np.uint32), want.view(np.uint32))
        np.testing.assert_array_equal(added, a + bias.reshape(1, -1, 1))
        np.testing.assert_allclose(sums, a.astype(np.float64).sum(axis=(0, 2)), rtol=1e-4,
                                   atol=1e-2)


def reference_sgd(w, g, v, lr, momentum, wd):
    v = momentum * v + (g + wd * w)
    return w - lr * v, v


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("block", [1 << 14, 5])
def test_updates_in_blocks_equal_the_whole_array_rules(threads, block, monkeypatch):
    """SGD (momentum and none, decay and none) and AdamW, in blocks of `block`
    elements over the threads, against the rules written out on whole arrays with the
    same operations in the same order."""
    import vmem.optim as optim

    monkeypatch.setattr(optim, "UPDATE_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(optim, "UPDATE_TASK_BLOCKS", 1)  # a task may hold one block
    shape = (37, 11)
    w0, g0 = (RNG.standard_normal(shape).astype(np.float32) for _ in range(2))
    v0 = RNG.standard_normal(shape).astype(np.float32)
    m0, s0 = v0.copy(), np.abs(RNG.standard_normal(shape)).astype(np.float32)

    sgd = SGD(lr=0.1, momentum=0.9, weight_decay=1e-2)
    w, g, v = w0.copy(), g0.copy(), v0.copy()
    with using_threads(threads):
        sgd.update(np, w, g, {"velocity": v}, decay=True, step=1)
    v_ref = v0 * np.float32(0.9) + g0
    v_ref += w0 * np.float32(1e-2)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(w, w0 - v_ref * np.float32(0.1))

    plain = SGD(lr=0.1, momentum=0.0, weight_decay=1e-2)
    w, g = w0.copy(), g0.copy()
    with using_threads(threads):
        plain.update(np, w, g, {}, decay=True, step=1)
    np.testing.assert_array_equal(w, w0 * np.float32(1 - 0.1 * 1e-2) - g0 * np.float32(0.1))

    adamw = AdamW(lr=0.01, weight_decay=0.1)
    w, g, m, s = w0.copy(), g0.copy(), m0.copy(), s0.copy()
    with using_threads(threads):
        adamw.update(np, w, g, {"exp_avg": m, "exp_avg_sq": s}, decay=True, step=3)
    w_ref = w0 * np.float32(1 - 0.01 * 0.1)
    m_ref = (m0 - g0) * np.float32(0.9) + g0
    s_ref = (s0 - g0 * g0) * np.float32(0.999) + g0 * g0
    denominator = np.sqrt(s_ref) / np.float32(math.sqrt(1 - 0.999 ** 3)) + np.float32(1e-8)
    w_ref -= m_ref / denominator * np.float32(0.01 / (1 - 0.9 ** 3))
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(s, s_ref)
    np.testing.assert_array_equal(w, w_ref)


def test_gemms_give_the_same_bits_for_every_thread_count(monkeypatch):
    """The tiles are fixed by the shape: 1, 2 and 3 threads give the same bits, and
    the products agree with float64 to float32 rounding. Narrow tiles make several
    per product."""
    monkeypatch.setattr(gemm, "GEMM_TILE_COLUMNS", 7)
    monkeypatch.setattr(gemm, "SHARED_LEFT_TILE_COLUMNS", 5)
    a = RNG.standard_normal((2, 5, 30)).astype(np.float32)  # (G, M, K)
    b = RNG.standard_normal((3, 2, 30, 23)).astype(np.float32)  # (S, G, K, N)
    dy = RNG.standard_normal((3, 2, 5, 23)).astype(np.float32)  # (S, G, M, N)
    results = []
    for threads in THREADS:
        with using_threads(threads):
            shared = gemm.matmul_shared_left(np, a, b, np.empty((3, 2, 5, 23), np.float32))
            summed = gemm.matmul_nt_sum(np, dy, b, np.empty((2, 5, 30), np.float32),
                                        start=True, scratch=np.empty((2, 5, 30), np.float32))
            plain = gemm.matmul(np, a[0], b[0, 0])
        results.append((shared, summed, plain))
    for later in results[1:]:
        for got, first in zip(later, results[0], strict=True):
            np.testing.assert_array_equal(got, first)
    shared, summed, plain = results[0]
    f64 = np.float64
    np.testing.assert_allclose(shared, np.matmul(a.astype(f64), b.astype(f64)), rtol=1e-5,
                               atol=1e-5)
    expected = np.einsum("sgmn,sgkn->gmk", dy.astype(f64), b.astype(f64))
    np.testing.assert_allclose(summed, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(plain, a[0].astype(f64) @ b[0, 0].astype(f64), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("threads", THREADS)
def test_pointwise_gradients_in_one_fan_out_equal_the_two_products(threads):
    """A pointwise convolution's dW and dx tiles share one fan-out: the bits of
    matmul_nt_sum and matmul_shared_left called one after the other on one thread,
    with dW's columns in two tiles and the sum starting or adding."""
    from vmem.kernels import gemm

    dy = RNG.standard_normal((3, 2, 40, 30)).astype(np.float32)
    x = RNG.standard_normal((3, 2, gemm.GEMM_TILE_COLUMNS + 44, 30)).astype(np.float32)
    weight_t = RNG.standard_normal((2, x.shape[2], 40)).astype(np.float32)
    before = RNG.standard_normal((2, 40, x.shape[2])).astype(np.float32)
    for start in (True, False):
        dw_ref, dx_ref = before.copy(), np.empty((3, 2, x.shape[2], 30), np.float32)
        with using_threads(1):
            gemm.matmul_nt_sum(np, dy, x, dw_ref, start, np.empty_like(dw_ref))
            gemm.matmul_shared_left(np, weight_t, dy, dx_ref)
        dw, dx = before.copy(), np.full_like(dx_ref, np.nan)
        with using_threads(threads):
            gemm.pointwise_gradients(np, dy, x, weight_t, dw, start, np.empty_like(dw), dx)
        np.testing.assert_array_equal(dw, dw_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        f64 = np.float64
        expected = np.einsum("sgmk,sgnk->gmn", dy.astype(f64), x.astype(f64))
        if not start:
            expected += before
        np.testing.assert_allclose(dw, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", [3, 1])  # 1: pointwise, dW and dx in one fan-out
def test_conv_every_chunk_and_thread_count_equals_one_thread_whole_batch(groups, kernel):
    layer = Conv(name="c", out_channels=4, kernel=kernel, stride=1, pad=kernel // 2,
                 groups=groups)
    x = RNG.standard_normal((5, 4, 7, 6)).astype(np.float32)
    params = {k: v for k, v in layer.init_params([x.shape], RNG).items()}
    dy = RNG.standard_normal(layer.output_shape([x.shape])).astype(np.float32)
    runs = {}
    for threads in THREADS:
        for chunk in (5, 4, 2, 1):
            algo = Algorithm(f"im2col:{chunk}", 0, chunk)
            with using_threads(threads):
                y, _ = layer.forward(np, [x], params, algo, Context())
                (dx,), grads = layer.backward(np, dy, [x], None, params, (), algo,
                                              [x.shape], [True])
            runs[threads, chunk] = (y, dx, grads["weight"], grads["bias"])
    reference = runs[1, 5]
    for key, got in runs.items():
        for value, expected in zip(got, reference, strict=True):
            np.testing.assert_array_equal(value, expected, err_msg=str(key))


# ---------------------------------------------------------------- whole steps


@pytest.mark.parametrize("profile", ["alexnet-tiny", "googlenet-tiny", "resnet18-tiny"])
def test_training_steps_are_bit_identical_for_every_thread_count(profile):
    """Losses and weights after three steps: 1 thread under `none` is the reference
    for 2 and 3 threads, and for vdnn-all (other algorithms, moved maps)."""
    reference_losses, reference_weights, runtime = train(profile, "none", threads=1)
    assert runtime.threads == 1
    runtime.close()
    for policy, threads in (("none", 2), ("none", 3), ("vdnn-all", 2), ("vdnn-all", 3)):
        losses, weights, runtime = train(profile, policy, threads=threads)
        runtime.close()
        assert losses == reference_losses, (policy, threads)
        for name, value in reference_weights.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{policy} {threads}")


# ---------------------------------------------------------------- the setting


def test_thread_setting_resolves_argument_then_environment_then_cores(monkeypatch):
    monkeypatch.delenv(threads_module.THREADS_ENV, raising=False)
    assert resolve_threads() == threads_module.available_cores()
    monkeypatch.setenv(threads_module.THREADS_ENV, "3")
    assert resolve_threads() == 3
    assert resolve_threads(2) == 2
    for bad in ("0", "x", "-1", "2.5"):
        monkeypatch.setenv(threads_module.THREADS_ENV, bad)
        with pytest.raises(UsageError, match=f"VMEM_THREADS must be an integer .* got '{bad}'"):
            resolve_threads()
    for bad in (0, True, 1.0, "2"):
        with pytest.raises(UsageError, match="threads must be an integer"):
            vmem.Runtime("alexnet-tiny", device="cpu", threads=bad)


def test_using_threads_restores_the_previous_count():
    with using_threads(3):
        assert threads_module.current_threads() == 3
        with using_threads(1):
            assert threads_module.current_threads() == 1
        assert threads_module.current_threads() == 3


def test_run_tasks_runs_each_task_once_and_raises_the_first_failure_after_all():
    done: list[int] = []

    def task(i: int) -> None:
        if i == 2:
            raise ValueError("task 2")
        done.append(i)

    with using_threads(3), pytest.raises(ValueError, match="task 2"):
        run_tasks(np, [lambda i=i: task(i) for i in range(6)])
    assert len(done) == len(set(done)) and 2 not in done
    with using_threads(2):
        done.clear()
        run_tasks(np, [lambda i=i: done.append(i) for i in range(50)])
    assert sorted(done) == list(range(50))


def test_single_threaded_blas_nests_and_restores_blas_threads():
    """BLAS runs on one thread inside the block, still inside a nested one after that
    one ends (the runtime's step holds the outer block, each product an inner one),
    and on its own count again after the outer block."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from vmem.kernels.threads import single_threaded_blas

    def blas_threads() -> list[int]:  # NumPy's BLAS (other libraries may load theirs)
        return [info["num_threads"] for info in threadpoolctl.threadpool_info()
                if info["user_api"] == "blas" and "numpy" in info["filepath"]]

    before = blas_threads()
    if not before:
        pytest.skip("NumPy's BLAS is not one threadpoolctl sees in NumPy's own files")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        with single_threaded_blas():
            assert set(blas_threads()) == {1}
            with single_threaded_blas():
                assert set(blas_threads()) == {1}
            assert set(blas_threads()) == {1}
        assert blas_threads() == [2] * len(before)
    assert blas_threads() == before


def test_a_fan_out_does_not_wait_for_a_helper_that_has_not_woken():
    """A helper that takes no task (the caller ran them all first) starts none once
    run_tasks has returned: each task runs once, and only before the return."""
    ran: list[int] = []
    returned = threading.Event()
    late: list[int] = []

    def task(i: int) -> None:
        if returned.is_set():
            late.append(i)
        ran.append(i)

    with using_threads(2):
        for _ in range(200):
            returned.clear()
            ran.clear()
            run_tasks(np, [lambda i=i: task(i) for i in range(3)])
            returned.set()
            assert sorted(ran) == [0, 1, 2]
    assert not late


def test_ranges_cover_every_item_once_within_the_budget():
    with using_threads(3):
        cut = ranges(np, 100, item_bytes=4, budget_bytes=3 * 4 * 5)
    assert [lo for lo, _ in cut] == list(range(0, 100, 5)) and cut[-1][1] == 100
    with using_threads(1):
        assert ranges(np, 100) == [(0, 100)]
    assert ranges(object(), 100) == [(0, 100)]  # not NumPy: one range, one thread


def test_ranges_hold_at_least_a_tasks_elements_and_short_passes_stay_on_the_caller(
        monkeypatch):
    """Items of `item_elements` make no more ranges than the pass has TASK_ELEMENTS,
    and a pass of fewer than two tasks' worth is one range: run_tasks then runs it on
    the calling thread, without a fan-out."""
    monkeypatch.setattr(threads_module, "TASK_ELEMENTS", 100)
    with using_threads(2):
        assert ranges(np, 10, item_elements=19) == [(0, 10)]  # 190 elements: one task
        cut = ranges(np, 10, item_elements=30)  # 300 elements: three tasks
        assert cut == [(0, 4), (4, 8), (8, 10)]
        assert len(ranges(np, 1000, item_elements=1000)) == 2 * threads_module.TASKS_PER_THREAD
        assert ranges(np, 10, item_bytes=4, budget_bytes=2 * 4 * 2, item_elements=19) == [
            (lo, lo + 2) for lo in range(0, 10, 2)]  # the scratch bound still holds
        ran_on = set()
        threads_module.for_ranges(np, 10, lambda lo, hi: ran_on.add(threading.get_ident()),
                                  item_elements=19)
    assert ran_on == {threading.get_ident()}


def test_small_products_go_several_to_a_task_in_order(monkeypatch):
    """GEMM tasks under GEMM_TASK_FLOPS join the next ones until a task has that many
    (the last may have fewer), each product still its own call, in the order given."""
    monkeypatch.setattr(gemm, "GEMM_TASK_FLOPS", 10)
    done: list[int] = []
    tasks = gemm.in_groups([(lambda i=i: done.append(i), cost)
                            for i, cost in enumerate([4, 4, 4, 20, 1, 9, 3])])
    groups = []
    for task in tasks:
        start = len(done)
        task()
        groups.append(done[start:])
    assert groups == [[0, 1, 2], [3], [4, 5], [6]]
    assert gemm.in_groups([]) == []


def test_tasks_on_helper_threads_keep_the_callers_floating_point_settings() -> None:
    """np.errstate lives in a context variable: tasks that run on the pool's threads
    see the caller's, so a step that silences overflow is silent on every thread."""
    big = np.full(4, 3e38, dtype=np.float32)
    seen: list[str] = []

    def task() -> None:
        seen.append(np.geterr()["over"])
        _ = big * np.float32(10)

    with using_threads(3), np.errstate(over="raise"), pytest.raises(FloatingPointError):
        run_tasks(np, [task] * 6)
    with using_threads(3), np.errstate(all="ignore"):
        seen.clear()
        run_tasks(np, [task] * 6)
    assert seen == ["ignore"] * 6


# ---------------------------------------------------------------- the benchmark's peer


@pytest.mark.parametrize("profile", ["alexnet-tiny", "googlenet-tiny", "resnet18-tiny"])
def test_the_benchmarks_pytorch_network_has_vmems_parameters_and_trains(profile):
    """`vmem bench cpu-step` builds the profile in PyTorch layer for layer: the same
    parameter count, and a step's loss near ln(classes) at initialization."""
    torch = pytest.importorskip("torch")
    from vmem.bench.cpu_step import torch_module
    from vmem.profile import load_profile

    network = load_profile(profile).network
    model = torch_module(torch, network)
    assert sum(p.numel() for p in model.parameters()) == network.num_params()
    classes = network.shapes(1)[network.logits][1]
    x = torch.from_numpy(RNG.standard_normal((2, *network.input_shape)).astype(np.float32))
    loss = model(x, torch.tensor([0, classes - 1]))
    loss.backward()
    value = loss.item()
    assert math.isfinite(value) and 0 < value < 4 * math.log(classes)


def test_borrowed_lends_one_buffer_within_a_block_and_drops_it_after():
    """Inside `lending`, passes one after another get views of one buffer (grown to
    the largest asked); a pass asking while it is out, any pass outside the block,
    and CuPy-like modules get new arrays; the buffer goes when the block ends."""
    from vmem.kernels import workspace

    with workspace.lending():
        with workspace.borrowed(np, (4, 5), np.float32) as first:
            first[...] = 1
            with workspace.borrowed(np, (4, 5), np.float32) as second:  # the buffer is out
                assert not np.shares_memory(first, second)
        with workspace.borrowed(np, (2, 3), np.float64) as again:
            assert again.shape == (2, 3) and again.dtype == np.float64
            assert np.shares_memory(again, first)  # lent again: no new pages
        with workspace.borrowed(np, (100,), np.float32) as larger:
            assert larger.shape == (100,) and not np.shares_memory(larger, first)
        held = workspace._LENDER.buffer
        assert held is not None and held.nbytes == 400
    assert workspace._LENDER.buffer is None
    with (workspace.borrowed(np, (4, 5), np.float32) as outside,
          workspace.borrowed(np, (4, 5), np.float32) as other):
        assert not np.shares_memory(outside, other)


def test_a_lent_column_buffer_changes_no_bit_of_a_training_step():
    """Convolutions' column buffers lent from pass to pass (the runtime's
    `lending`) against new ones each pass: the same losses and weights."""
    from vmem.kernels import workspace

    reference_losses, reference_weights, runtime = train("alexnet-tiny", "none", threads=2)
    runtime.close()
    import vmem.layers.conv as conv

    def fresh(xp, shape, dtype):  # a new array every pass
        return contextlib.nullcontext(xp.empty(shape, dtype=dtype))

    assert conv.borrowed is workspace.borrowed
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "borrowed", fresh)
        losses, weights, runtime = train("alexnet-tiny", "none", threads=2)
        runtime.close()
    assert losses == reference_losses
    for name, value in reference_weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)
