"""The CuPy softmax kernels (vmem.kernels.cuda_softmax) against the NumPy float64
references, on fresh random inputs each run, with every output poisoned (NaN) before
the kernel writes it, so an element a kernel skips fails the comparison. Every path
(warp, block, stream, split; safe; top-k rows and split) runs, forced where the shape
alone would not choose it. Skipped without CuPy and a CUDA device."""

from __future__ import annotations

import time

import numpy as np
import pytest
from softmax_cases import fresh_rng, rel_err, seed_of, special_rows

cp = pytest.importorskip("cupy")

from vmem.kernels import cuda_softmax as cs  # noqa: E402
from vmem.kernels import softmax as sm  # noqa: E402

if not cs.softmax_kernels_available():
    pytest.skip("no CUDA device for the softmax kernels", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """Compile every instantiation in one NVRTC run (printed: it counts against the
    GPU check's time)."""
    start = time.perf_counter()
    cs.precompile()
    print(f"\ncuda_softmax: {len(cs.all_name_expressions())} kernels compiled or loaded "
          f"in {time.perf_counter() - start:.1f} s")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return fresh_rng(request)


def ref_softmax(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return sm.safe_softmax(x.astype(np.float64))


def sample_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """All rows of a small problem; else the first and last 16 and 32 others: the float64
    references of big problems cost host time, and rows are independent."""
    if n <= 64:
        return np.arange(n)
    return np.unique(np.concatenate([np.arange(16), np.arange(n - 16, n),
                                     rng.integers(16, n - 16, 32)]))


def check_rows(out: cp.ndarray, x: np.ndarray, ref_fn, rng: np.random.Generator,  # noqa: ANN001
               what: str, tol: float = 1e-5) -> None:
    """Every element written (no NaN left from the poison: inputs here have none) and
    sampled rows against the float64 reference."""
    assert not bool(cp.isnan(out).any()), f"{what}: elements left unwritten (NaN)"
    rows = sample_rows(x.shape[0], rng)
    err = rel_err(cp.asnumpy(out[cp.asarray(rows)]), ref_fn(x[rows]))
    assert err < tol, f"seed {seed_of(rng)}: {what}: {err:.2e}"


def ref_log_softmax(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return sm.log_softmax(np, x.astype(np.float64))


def poisoned(shape: tuple[int, ...], dtype: type = np.float32) -> cp.ndarray:
    out = cp.empty(shape, dtype=dtype)
    out.fill(np.nan if np.dtype(dtype).kind == "f" else -12345)
    return out


def same_with_nan(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert np.array_equal(np.isnan(out), np.isnan(ref)), what
    finite = ~np.isnan(ref)
    assert rel_err(out[finite], ref[finite]) < 1e-5, what


SHAPES = [(1, 1), (7, 1), (33, 5), (300, 100), (64, 1000), (1000, 1024), (37, 1030),
          (130, 4097), (512, 8192), (9, 16384), (5, 20000), (300, 40000), (3, 250_001)]


def methods_for(cols: int) -> list[str]:
    out = ["auto", "stream", "split"]
    if cols <= cs.REGISTER_COLS:
        out.append("block")
    if cols <= cs.WARP_COLS:
        out.append("warp")
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_online_softmax_and_log_softmax(rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    xd = cp.asarray(x)
    for method in methods_for(shape[1]):
        y = poisoned(shape)
        cs.online_softmax(xd, out=y, method=method)
        check_rows(y, x, ref_softmax, rng, f"online {shape} {method}")
        logp = poisoned(shape)
        cs.log_softmax(xd, out=logp, method=method)
        check_rows(logp, x, ref_log_softmax, rng, f"log {shape} {method}")
    assert bool((xd == cp.asarray(x)).all())  # input untouched


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_safe_softmax(rng, shape):
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    for method in ("auto", "stream", "split"):
        y = poisoned(shape)
        cs.safe_softmax(cp.asarray(x), out=y, method=method)
        check_rows(y, x, ref_softmax, rng, f"safe {shape} {method}")


@pytest.mark.parametrize("shape", [(8192, 1024), (1024, 8192), (256, 32768), (64, 131072),
                                   (16, 1 << 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_benchmark_shapes(rng, shape):
    """The paths the benchmarks time are the paths tested."""
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    xd = cp.asarray(x)
    y = poisoned(shape)
    cs.online_softmax(xd, out=y)
    check_rows(y, x, ref_softmax, rng, f"online {shape} {cs.describe_plan(shape)}")
    y = poisoned(shape)
    cs.safe_softmax(xd, out=y)
    check_rows(y, x, ref_softmax, rng, f"safe {shape}")
    values, indices = cs.softmax_topk(xd, 5)
    assert not bool(cp.isnan(values).any())
    rows = sample_rows(shape[0], rng)
    ref_v, ref_i = sm.softmax_topk(x[rows].astype(np.float64), 5)
    np.testing.assert_array_equal(cp.asnumpy(indices)[rows], ref_i)
    assert rel_err(cp.asnumpy(values)[rows], ref_v) < 1e-5


HALF_TOL = 1e-3  # float16 outputs: a unit roundoff of 4.9e-4, one rounding from float32


@pytest.mark.parametrize("shape", [(7, 1), (33, 5), (64, 1000), (1000, 1024), (37, 1030),
                                   (130, 4104), (9, 16384), (5, 20000), (3, 250_008),
                                   (16, 1 << 20)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_float16_in_and_out(rng, shape):
    """float16 read and written (eight-half vectors where the columns allow, else single
    halves), computed in float32; top-k indices exact among float16's many ties."""
    x = (rng.standard_normal(shape) * 4).astype(np.float16)
    xd = cp.asarray(x)
    for method in methods_for(shape[1]):
        y = poisoned(shape, np.float16)
        cs.online_softmax(xd, out=y, method=method)
        check_rows(y, x, ref_softmax, rng, f"float16 online {shape} {method}", HALF_TOL)
        logp = poisoned(shape, np.float16)
        cs.log_softmax(xd, out=logp, method=method)
        check_rows(logp, x, ref_log_softmax, rng, f"float16 log {shape} {method}", HALF_TOL)
    for method in ("auto", "stream", "split"):
        y = poisoned(shape, np.float16)
        cs.safe_softmax(xd, out=y, method=method)
        check_rows(y, x, ref_softmax, rng, f"float16 safe {shape} {method}", HALF_TOL)
    k = min(5, shape[1])
    rows = sample_rows(shape[0], rng)
    ref_v, ref_i = sm.softmax_topk(x[rows].astype(np.float64), k)
    for method in ("rows", "split"):
        values, indices = cs.softmax_topk(xd, k, method=method)
        assert values.dtype == cp.float16
        np.testing.assert_array_equal(cp.asnumpy(indices)[rows], ref_i,
                                      err_msg=f"seed {seed_of(rng)}: {shape} {method}")
        assert rel_err(cp.asnumpy(values)[rows], ref_v) < HALF_TOL


@pytest.mark.parametrize("cols", [1, 5, 40, 1030, 20000])
def test_special_values(rng, cols):
    x = special_rows(rng, cols)
    ref = ref_softmax(x)
    with np.errstate(all="ignore"):  # x - m - log d: finite where exp underflows
        ref_log = sm.log_softmax(np, x.astype(np.float64))
    for method in methods_for(cols):
        y = cp.asarray(x)
        cs.online_softmax(y, out=y, method=method)  # in place
        same_with_nan(cp.asnumpy(y), ref, f"softmax {cols} {method}")
        logp = cp.asnumpy(cs.log_softmax(cp.asarray(x), method=method))
        assert np.array_equal(np.isfinite(logp), np.isfinite(ref_log)), f"log {cols} {method}"
        finite = np.isfinite(ref_log)
        np.testing.assert_allclose(logp[finite], ref_log[finite], rtol=1e-5, atol=1e-5)
    for method in ("auto", "split"):
        same_with_nan(cp.asnumpy(cs.safe_softmax(cp.asarray(x), method=method)), ref,
                      f"safe {cols} {method}")
    for k in sorted({1, min(cols, 5), min(cols, 32)}):
        rv, ri = sm.softmax_topk(x.astype(np.float64), k)
        for method in ("auto", "rows", "split"):
            v, i = cs.softmax_topk(cp.asarray(x), k, method=method)
            np.testing.assert_array_equal(cp.asnumpy(i), ri, err_msg=f"{cols} {k} {method}")
            same_with_nan(cp.asnumpy(v), rv, f"topk {cols} {k} {method}")


@pytest.mark.parametrize("shape", [(4, 1), (64, 7), (300, 1000), (50, 1024), (20, 5000),
                                   (3, 300_000), (600, 3000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_topk_every_k_with_ties(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x[:, ::3] = np.round(x[:, ::3])  # exact ties among the largest values
    xd = cp.asarray(x)
    for k in sorted({min(k, shape[1]) for k in (1, 2, 5, 9, 17, 32)}):
        ref_v, ref_i = sm.softmax_topk(x.astype(np.float64), k)
        for method in ("auto", "rows", "split"):
            values, indices = cs.softmax_topk(xd, k, method=method)
            assert values.dtype == cp.float32 and indices.dtype == cp.int64
            np.testing.assert_array_equal(cp.asnumpy(indices), ref_i,
                                          err_msg=f"seed {seed_of(rng)}: {shape} k={k} {method}")
            assert rel_err(cp.asnumpy(values), ref_v) < 1e-5


def test_topk_all_equal_rows_take_the_first_indices():
    x = cp.full((5, 3000), 1.5, dtype=cp.float32)
    for method in ("rows", "split"):
        values, indices = cs.softmax_topk(x, 32, method=method)
        np.testing.assert_array_equal(cp.asnumpy(indices), np.tile(np.arange(32), (5, 1)))
        np.testing.assert_allclose(cp.asnumpy(values), 1 / 3000, rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 1), (64, 10), (128, 1000), (8, 4099), (4, 70000)])
def test_softmax_backward(rng, shape):
    y = ref_softmax((rng.standard_normal(shape) * 2).astype(np.float32)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    ref = sm.softmax_backward(y.astype(np.float64), dy.astype(np.float64))
    dx = poisoned(shape)
    cs.softmax_backward(cp.asarray(y), cp.asarray(dy), out=dx)
    assert rel_err(cp.asnumpy(dx), ref) < 1e-5, f"seed {seed_of(rng)}: {shape}"


@pytest.mark.parametrize("shape", [(1, 1), (64, 10), (256, 1000), (32, 4099), (4, 100_000)])
def test_cross_entropy_forward_and_gradients(rng, shape):
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    labels = rng.integers(0, c, n)
    ref = ref_softmax(x)
    ref_loss = -np.log(ref[np.arange(n), labels]).mean()
    ref_grad = sm.cross_entropy_grad(ref, labels)
    loss, probs = cs.cross_entropy(cp.asarray(x), cp.asarray(labels))
    assert loss.shape == () and loss.dtype == cp.float32
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert rel_err(cp.asnumpy(probs), ref) < 1e-5
    grad = poisoned(shape)
    loss2, _ = cs.softmax_cross_entropy_grad(cp.asarray(x), cp.asarray(labels), out=grad)
    assert float(loss2) == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert rel_err(cp.asnumpy(grad), ref_grad) < 1e-5
    grad2 = cs.cross_entropy_backward(probs, cp.asarray(labels), out=probs)  # in place
    assert rel_err(cp.asnumpy(grad2), ref_grad) < 1e-5


def test_the_array_functions_use_the_kernels_when_enabled(rng, monkeypatch):
    monkeypatch.setenv("VMEM_CUDA_SOFTMAX", "1")
    x = (rng.standard_normal((64, 1000)) * 3).astype(np.float32)
    labels = rng.integers(0, 1000, 64)
    ref = ref_softmax(x)
    assert rel_err(cp.asnumpy(sm.softmax(cp, cp.asarray(x))), ref) < 1e-5
    assert rel_err(cp.asnumpy(sm.log_softmax(cp, cp.asarray(x))), np.log(ref)) < 1e-5
    loss, probs = sm.cross_entropy(cp, cp.asarray(x), cp.asarray(labels))
    assert float(loss) == pytest.approx(-np.log(ref[np.arange(64), labels]).mean(), rel=1e-5)
    assert rel_err(cp.asnumpy(probs), ref) < 1e-5
    xt = cp.asarray(x).T  # not contiguous, other axis: array code or a contiguous copy
    assert rel_err(cp.asnumpy(sm.softmax(cp, xt, axis=0)), ref.T) < 1e-5


def test_invalid_arguments():
    x = cp.zeros((4, 6), dtype=cp.float32)
    for call, words in [
        (lambda: cs.softmax_topk(x, 7), "between 1 and the row length 6"),
        (lambda: cs.softmax_topk(x, 0), "between 1"),
        (lambda: cs.softmax_topk(cp.zeros((2, 40), cp.float32), 33), "up to 32"),
        (lambda: cs.online_softmax(cp.zeros((4, 6), cp.int32)), "non-floating"),
        (lambda: cs.online_softmax(cp.zeros((4, 6), cp.float64)), "float32"),
        (lambda: cs.online_softmax(cp.zeros((6, 4), cp.float32).T), "C-contiguous"),
        (lambda: cs.safe_softmax(x[:, ::2]), "C-contiguous"),
        (lambda: cs.online_softmax(np.zeros((4, 6), np.float32)), "CuPy array"),
        (lambda: cs.online_softmax(x, out=cp.zeros((4, 5), cp.float32)), "out must be"),
        (lambda: cs.online_softmax(cp.zeros((2, 2048), cp.float32), method="warp"), "at most"),
        (lambda: cs.cross_entropy(x, cp.zeros(3, cp.int64)), "labels of shape (4,)"),
        (lambda: cs.softmax_backward(x, cp.zeros((4, 5), cp.float32)), "differ in shape"),
    ]:
        with pytest.raises(ValueError) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)


def test_empty_inputs():
    assert cs.online_softmax(cp.zeros((0, 5), cp.float32)).shape == (0, 5)
    assert cs.safe_softmax(cp.zeros((3, 0), cp.float32)).shape == (3, 0)
    values, indices = cs.softmax_topk(cp.zeros((0, 5), cp.float32), 2)
    assert values.shape == indices.shape == (0, 2)
