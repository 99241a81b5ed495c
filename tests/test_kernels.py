"""Kernels against naive float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from vmem.kernels.im2col import col2im, im2col
from vmem.kernels.softmax import cross_entropy, log_softmax, softmax
from vmem.kernels.windows import conv_output_size, pool_output_size


def naive_im2col(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    cols = np.zeros((n, c, k, k, ho, wo), dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            for ki in range(k):
                for kj in range(k):
                    r, s = i * stride - pad + ki, j * stride - pad + kj
                    if 0 <= r < h and 0 <= s < w:
                        cols[:, :, ki, kj, i, j] = x[:, :, r, s]
    return cols.reshape(n, c * k * k, ho * wo)


def naive_col2im(cols: np.ndarray, x_shape: tuple[int, ...], k: int, stride: int, pad: int
                 ) -> np.ndarray:
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, k, stride, pad), conv_output_size(w, k, stride, pad)
    cols6 = cols.reshape(n, c, k, k, ho, wo)
    x = np.zeros(x_shape, dtype=cols.dtype)
    for i in range(ho):
        for j in range(wo):
            for ki in range(k):
                for kj in range(k):
                    r, s = i * stride - pad + ki, j * stride - pad + kj
                    if 0 <= r < h and 0 <= s < w:
                        x[:, :, r, s] += cols6[:, :, ki, kj, i, j]
    return x


GEOMETRIES = [  # (x_shape, k, stride, pad)
    ((2, 3, 5, 5), 3, 1, 0),
    ((2, 3, 5, 5), 3, 1, 1),
    ((1, 2, 7, 6), 3, 2, 1),
    ((2, 2, 6, 7), 2, 2, 0),
    ((1, 1, 4, 4), 5, 3, 2),
    ((2, 3, 5, 5), 1, 1, 0),
    ((1, 2, 3, 3), 3, 1, 2),
]


@pytest.mark.parametrize(("x_shape", "k", "stride", "pad"), GEOMETRIES)
def test_im2col_matches_naive(x_shape, k, stride, pad):
    x = np.random.default_rng(0).standard_normal(x_shape)
    expected = naive_im2col(x, k, stride, pad)
    np.testing.assert_array_equal(im2col(np, x, k, stride, pad), expected)
    out = np.full(expected.shape, np.nan)  # stale contents must be overwritten
    assert im2col(np, x, k, stride, pad, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("x_shape", "k", "stride", "pad"), GEOMETRIES)
def test_col2im_matches_naive_and_is_adjoint(x_shape, k, stride, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape)
    cols = rng.standard_normal(naive_im2col(x, k, stride, pad).shape)
    got = col2im(np, cols, x_shape, k, stride, pad)
    np.testing.assert_allclose(got, naive_col2im(cols, x_shape, k, stride, pad),
                               rtol=1e-13, atol=1e-13)
    out = np.full(x_shape, np.nan)
    col2im(np, cols, x_shape, k, stride, pad, out=out)
    np.testing.assert_array_equal(out, got)
    # <im2col(x), cols> == <x, col2im(cols)>
    lhs = np.sum(im2col(np, x, k, stride, pad) * cols)
    assert lhs == pytest.approx(np.sum(x * got), rel=1e-12)


def test_im2col_keeps_dtype_and_input():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    before = x.copy()
    cols = im2col(np, x, 3, 2, 1)
    assert cols.dtype == np.float32
    assert col2im(np, cols, x.shape, 3, 2, 1).dtype == np.float32
    np.testing.assert_array_equal(x, before)


def test_pool_output_size_rules():
    assert pool_output_size(55, 3, 2, 0, False) == 27  # AlexNet
    assert pool_output_size(112, 3, 2, 0, True) == 56  # GoogLeNet, ceil
    assert pool_output_size(112, 3, 2, 0, False) == 55
    assert pool_output_size(6, 3, 2, 0, True) == 3
    assert pool_output_size(5, 2, 2, 1, True) == 3  # a 4th window would start in padding
    assert pool_output_size(5, 2, 2, 1, False) == 3
    assert pool_output_size(4, 3, 2, 1, True) == 3  # last window starts inside the input


# ---------------------------------------------------------------- softmax

def reference_log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise, float64, finite-or--inf entries, one finite entry per row."""
    out = np.empty_like(x, dtype=np.float64)
    for i, row in enumerate(np.asarray(x, dtype=np.float64)):
        m = row[np.isfinite(row)].max()
        out[i] = row - m - np.log(np.sum(np.exp(row - m)))
    return out


LOGITS = {
    "moderate": np.random.default_rng(3).standard_normal((4, 7)) * 3,
    "large": np.array([[1e4, 1e4 - 1.0, 0.0], [3e30, -3e30, 3e30], [800.0, 790.0, 810.0]]),
    "very_negative": np.array([[-1e4, -1e4 - 2.0, -1e4 + 1.0], [-800.0, -790.0, -810.0]]),
    "with_minus_inf": np.array([[0.5, -np.inf, 1.5, -np.inf], [-np.inf, -np.inf, 2.0, -3.0]]),
}


@pytest.mark.parametrize("case", sorted(LOGITS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_and_log_softmax(case, dtype):
    x = LOGITS[case].astype(dtype)
    before = x.copy()
    expected_log = reference_log_softmax(x)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    logp = log_softmax(np, x)
    p = softmax(np, x)
    assert logp.dtype == dtype and p.dtype == dtype
    finite = np.isfinite(expected_log)
    assert np.array_equal(np.isfinite(logp), finite)
    assert np.all(logp[~finite] == -np.inf)
    np.testing.assert_allclose(logp[finite], expected_log[finite], rtol=tol, atol=tol)
    np.testing.assert_allclose(p, np.exp(expected_log), rtol=tol, atol=tol)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=tol)
    np.testing.assert_array_equal(x, before)


def test_softmax_other_axis():
    x = np.random.default_rng(4).standard_normal((3, 5, 2))
    np.testing.assert_allclose(softmax(np, x, axis=1),
                               np.moveaxis(softmax(np, np.moveaxis(x, 1, -1)), -1, 1))
    np.testing.assert_allclose(log_softmax(np, x, axis=0), np.log(softmax(np, x, axis=0)))


def test_all_minus_inf_row_is_nan():
    with np.errstate(invalid="ignore"):
        p = softmax(np, np.array([[-np.inf, -np.inf], [0.0, 1.0]]))
    assert np.all(np.isnan(p[0])) and np.all(np.isfinite(p[1]))


@pytest.mark.parametrize("case", sorted(LOGITS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy(case, dtype):
    x = LOGITS[case].astype(dtype)
    expected_log = reference_log_softmax(x)
    n = x.shape[0]
    labels = np.array([int(np.argmax(row)) for row in expected_log])  # finite picks
    labels[0] = int(np.flatnonzero(np.isfinite(expected_log[0]))[-1])
    loss, probs = cross_entropy(np, x, labels)
    assert loss.shape == () and loss.dtype == dtype and probs.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    expected = -expected_log[np.arange(n), labels].mean()
    assert float(loss) == pytest.approx(expected, rel=tol, abs=tol)
    np.testing.assert_allclose(probs, np.exp(expected_log), rtol=tol, atol=tol)


def test_cross_entropy_label_on_minus_inf_is_infinite():
    loss, _ = cross_entropy(np, np.array([[0.0, -np.inf]]), np.array([1]))
    assert float(loss) == np.inf
