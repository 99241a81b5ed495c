"""Causal attention kernels (vmem.kernels.attention): the flash algorithm against
the materialized one and both against a float64 reference; gradients against
float64 finite differences; and against PyTorch's scaled_dot_product_attention."""

from __future__ import annotations

import numpy as np
import pytest

from vmem.kernels.attention import (
    attention_backward,
    attention_forward,
    flash_backward,
    flash_forward,
)

# float32 against float64, inputs of unit variance: outputs and gradients agree
# to within this absolute error (they are O(1)); measured errors are ~1e-6
FLOAT32_ATOL = 2e-5


def qkv(shape: tuple[int, int, int, int], dtype: type = np.float32, seed: int = 0
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal attention in float64, row by row: the output and each row's
    log-sum-exp of scaled scores."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    n, h, t, d = q.shape
    out, lse = np.zeros_like(q), np.zeros((n, h, t))
    for i in range(t):
        s = q[:, :, i, None, :] @ np.swapaxes(k[:, :, : i + 1], -1, -2) / np.sqrt(d)
        s = s[:, :, 0]
        top = s.max(axis=-1, keepdims=True)
        lse[:, :, i] = (top + np.log(np.exp(s - top).sum(axis=-1, keepdims=True)))[..., 0]
        out[:, :, i] = (np.exp(s - lse[:, :, i, None])[:, :, None] @ v[:, :, : i + 1])[:, :, 0]
    return out, lse


@pytest.mark.parametrize(("shape", "tile"), [
    ((2, 3, 37, 16), 8), ((1, 2, 64, 32), 64), ((1, 1, 5, 4), 128), ((2, 2, 130, 8), 32)])
def test_flash_forward_matches_materialized_and_float64(shape: tuple[int, int, int, int],
                                                        tile: int) -> None:
    q, k, v = qkv(shape)
    expected, expected_lse = reference(q, k, v)
    out, lse = flash_forward(np, q, k, v, tile=tile)
    materialized, p = attention_forward(np, q, k, v)
    assert out.dtype == np.float32 and lse.shape == shape[:3]
    np.testing.assert_allclose(out, expected, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(lse, expected_lse, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(materialized, expected, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(out, materialized, atol=FLOAT32_ATOL, rtol=0)
    assert np.all(np.triu(p[0, 0], k=1) == 0)  # nothing attends to a later key


@pytest.mark.parametrize("tile", [4, 7, 64])
def test_flash_backward_matches_materialized_and_finite_differences(tile: int) -> None:
    """float64 throughout: both backward passes against central differences of
    the loss sum(out * dO) in every input element."""
    shape = (1, 2, 9, 3)
    q, k, v = qkv(shape, np.float64, seed=1)
    d_out = np.random.default_rng(2).standard_normal(shape)
    out, lse = flash_forward(np, q, k, v, tile=tile)
    flash = flash_backward(np, d_out, q, k, v, out, lse, tile=tile)
    _, p = attention_forward(np, q, k, v)
    materialized = attention_backward(np, d_out, q, k, v, p)
    eps = 1e-6
    inputs = [q, k, v]
    for which, x in enumerate(inputs):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            saved = x[index]
            x[index] = saved + eps
            plus = (attention_forward(np, *inputs)[0] * d_out).sum()
            x[index] = saved - eps
            minus = (attention_forward(np, *inputs)[0] * d_out).sum()
            x[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(flash[which], numeric, atol=1e-7, rtol=1e-6)
        np.testing.assert_allclose(materialized[which], numeric, atol=1e-7, rtol=1e-6)


def test_flash_backward_in_float32_matches_float64() -> None:
    shape = (2, 2, 50, 16)
    q, k, v = qkv(shape, seed=3)
    d_out = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    out, lse = flash_forward(np, q, k, v, tile=16)
    got = flash_backward(np, d_out, q, k, v, out, lse, tile=16)
    wide = [x.astype(np.float64) for x in (q, k, v)]
    _, p = attention_forward(np, *wide)
    expected = attention_backward(np, d_out.astype(np.float64), *wide, p)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, atol=FLOAT32_ATOL, rtol=0)


def test_flash_matches_torch_scaled_dot_product_attention() -> None:
    torch = pytest.importorskip("torch")
    shape = (2, 4, 70, 32)
    q, k, v = qkv(shape, seed=5)
    d_out = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    expected.backward(torch.tensor(d_out))
    out, lse = flash_forward(np, q, k, v, tile=32)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=FLOAT32_ATOL, rtol=0)
    grads = flash_backward(np, d_out, q, k, v, out, lse, tile=32)
    for g, t in zip(grads, (tq, tk, tv), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), atol=FLOAT32_ATOL, rtol=0)
