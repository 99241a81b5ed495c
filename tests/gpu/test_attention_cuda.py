"""The causal flash attention kernels (vmem.kernels.cuda_attention) on the GPU against a
float64 NumPy reference (the materialized algorithm), against PyTorch's
scaled_dot_product_attention(is_causal=True) forward and backward, and through
attention's flash functions with VMEM_CUDA_ATTENTION=1. CuPy's pool is filled with NaN
before each call (best effort: freed blocks of those sizes come back first), so elements
a kernel skips are likely to show. Skipped without CuPy and a CUDA device (conftest.py).

On the NumPy stand-in of tests/gpu_on_numpy.py the kernels run on the CPU emulator, so
the long sequences are left out there (LONG_SHAPES)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from vmem.kernels import attention, cuda_attention

#: True under tests/gpu_on_numpy.py (NumPy under CuPy's name, the kernels emulated).
STAND_IN = bool(getattr(sys.modules.get("cupy"), "vmem_stand_in", False))

# float32 against float64 for O(1) values: measured ~1e-6 on the emulator
FLOAT32_ATOL = 2e-5

SHORT_SHAPES = [(2, 3, 37, 16), (1, 2, 33, 64), (1, 1, 1, 32), (1, 2, 17, 128)]
LONG_SHAPES = [(2, 4, 1024, 64), (1, 2, 777, 128), (4, 2, 300, 32), (1, 1, 2048, 64)]
SHAPES = SHORT_SHAPES + ([] if STAND_IN else LONG_SHAPES)
HALF_SHAPES = [(1, 2, 37, 64)] + ([] if STAND_IN else [(2, 4, 1024, 64), (1, 2, 500, 128)])


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """Every instantiation in one NVRTC run (on the stand-in the emulator has them)."""
    if not STAND_IN:
        cuda_attention.precompile()


def inputs(shape: tuple[int, int, int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(4)]


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, d_out: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Output, log-sum-exp and (dQ, dK, dV) in float64, materialized."""
    q, k, v, d_out = (a.astype(np.float64) for a in (q, k, v, d_out))
    t, d = q.shape[-2:]
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(d)
    scores = np.where(np.triu(np.ones((t, t), bool), k=1), -np.inf, scores)
    top = scores.max(axis=-1, keepdims=True)
    lse = (top + np.log(np.exp(scores - top).sum(axis=-1, keepdims=True)))[..., 0]
    out, p = attention.attention_forward(np, q, k, v)
    return out, lse, attention.attention_backward(np, d_out, q, k, v, p)


def poison_pool(cp, *arrays) -> None:  # noqa: ANN001
    """Fill blocks of these arrays' sizes with NaN and free them: CuPy's pool hands the
    same blocks to the next allocations of those sizes (a no-op on the stand-in, whose
    outputs tests/test_cuda_attention.py poisons itself)."""
    held = [cp.full(a.shape, cp.nan, dtype=a.dtype) for a in arrays for _ in range(3)]
    del held


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_kernels_match_float64(cp, shape):
    q, k, v, d_out = inputs(shape, seed=sum(shape))
    g = [cp.asarray(a.astype(np.float32)) for a in (q, k, v, d_out)]
    poison_pool(cp, g[0], cp.empty(shape[:3], np.float32))
    out, lse = cuda_attention.flash_forward(*g[:3])
    expected, expected_lse, expected_grads = reference(q, k, v, d_out)
    np.testing.assert_allclose(cp.asnumpy(out), expected, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(cp.asnumpy(lse), expected_lse, atol=FLOAT32_ATOL, rtol=0)
    poison_pool(cp, g[0])
    grads = cuda_attention.flash_backward(g[3], *g[:3], out, lse)
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got), want, atol=FLOAT32_ATOL, rtol=0)


@pytest.mark.parametrize("shape", HALF_SHAPES)
def test_float16_kernels_match_float64_on_the_float16_values(cp, shape):
    q, k, v, d_out = (a.astype(np.float16) for a in inputs(shape, seed=3))
    g = [cp.asarray(a) for a in (q, k, v, d_out)]
    poison_pool(cp, g[0])
    out, lse = cuda_attention.flash_forward(*g[:3])
    assert out.dtype == np.float16 and lse.dtype == np.float32
    expected, expected_lse, expected_grads = reference(q, k, v, d_out)
    np.testing.assert_allclose(cp.asnumpy(out).astype(np.float64), expected, rtol=2**-10,
                               atol=1e-4)
    np.testing.assert_allclose(cp.asnumpy(lse), expected_lse, atol=FLOAT32_ATOL, rtol=0)
    grads = cuda_attention.flash_backward(g[3], *g[:3], out, lse)
    for got, want in zip(grads, expected_grads, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got).astype(np.float64), want, rtol=4e-3,
                                   atol=4e-3 * np.abs(want).max())


# torch's CPU SDPA (the stand-in's) in float16 is no reference: float32 only there
@pytest.mark.parametrize("dtype, atol", [(np.float32, 5e-5)]
                         + ([] if STAND_IN else [(np.float16, 4e-3)]))
def test_kernels_match_torch_scaled_dot_product_attention(cp, dtype, atol):
    """Forward and backward against torch's causal SDPA on the same values (on the GPU
    where torch has CUDA, else on its CPU build)."""
    torch = pytest.importorskip("torch")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = (1, 2, 45, 32) if STAND_IN else (2, 8, 1000, 64)
    host = [a.astype(dtype) for a in inputs(shape, seed=9)]
    tq, tk, tv = (torch.tensor(a, device=device, requires_grad=True) for a in host[:3])
    expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
    expected.backward(torch.tensor(host[3], device=device))
    g = [cp.asarray(a) for a in host]
    out, lse = cuda_attention.flash_forward(*g[:3])
    scale = max(1.0, float(np.abs(host[2]).max()))
    np.testing.assert_allclose(cp.asnumpy(out).astype(np.float32),
                               expected.detach().float().cpu().numpy(), atol=atol * scale, rtol=0)
    grads = cuda_attention.flash_backward(g[3], *g[:3], out, lse)
    for got, t in zip(grads, (tq, tk, tv), strict=True):
        want = t.grad.float().cpu().numpy()
        np.testing.assert_allclose(cp.asnumpy(got).astype(np.float32), want,
                                   atol=atol * max(1.0, float(np.abs(want).max())), rtol=0)


def test_flash_functions_take_the_kernels_when_switched_on(cp, monkeypatch):
    """attention.flash_forward / flash_backward on CuPy: the kernels' results with
    VMEM_CUDA_ATTENTION=1 (strided views made contiguous), the array code's with 0."""
    shape = (2, 2, 50, 32)
    host = [a.astype(np.float32) for a in inputs(shape, seed=4)]
    g = [cp.asarray(a) for a in host]
    monkeypatch.setenv("VMEM_CUDA_ATTENTION", "1")
    strided = [cp.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for a in g]
    out, lse = attention.flash_forward(cp, *strided[:3])
    kernel_out, kernel_lse = cuda_attention.flash_forward(*g[:3])
    np.testing.assert_array_equal(cp.asnumpy(out), cp.asnumpy(kernel_out))
    np.testing.assert_array_equal(cp.asnumpy(lse), cp.asnumpy(kernel_lse))
    grads = attention.flash_backward(cp, strided[3], *strided[:3], out, lse)
    kernel_grads = cuda_attention.flash_backward(g[3], *g[:3], kernel_out, kernel_lse)
    for got, want in zip(grads, kernel_grads, strict=True):
        np.testing.assert_array_equal(cp.asnumpy(got), cp.asnumpy(want))
    monkeypatch.setenv("VMEM_CUDA_ATTENTION", "0")
    array_out, array_lse = attention.flash_forward(cp, *g[:3], tile=16)
    np.testing.assert_allclose(cp.asnumpy(array_out), cp.asnumpy(kernel_out),
                               atol=FLOAT32_ATOL, rtol=0)
    array_grads = attention.flash_backward(cp, g[3], *g[:3], array_out, array_lse, tile=16)
    for got, want in zip(array_grads, kernel_grads, strict=True):
        np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(want), atol=FLOAT32_ATOL, rtol=0)
