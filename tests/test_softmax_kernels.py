"""The NumPy references of the softmax kernels (vmem.kernels.softmax) against float64
formulas written independently here, on fresh random inputs each run (the seed is in
every failure message), plus the CUDA module's planning, which needs no GPU.

With VMEM_EMULATE_CUDA=1 (and g++ with C++20), the CUDA C of vmem.kernels.cuda_softmax
also runs here under a CPU emulator (one std::thread per CUDA thread, real barriers,
emulated warp shuffles) against the same references: about a minute, off by default.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
from cuda_emulator import UNAVAILABLE, EmulatorLauncher, RecordingLauncher, build_emulator
from softmax_cases import fresh_rng, rel_err, seed_of, special_rows

from vmem.errors import DeviceUnavailable
from vmem.kernels import cuda_softmax
from vmem.kernels import softmax as sm
from vmem.kernels.cuda_module import KERNEL_SWITCHES

TOL = {np.float32: 1e-5, np.float64: 1e-12, np.float16: 2e-3}


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    return fresh_rng(request)


# ------------------------------------------------------------------ float64 formulas


def softmax64(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 by the textbook formula; NaN for rows without a
    distribution (all -inf, or any +inf or NaN)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    flat, res = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    for i, row in enumerate(flat):
        if np.isnan(row).any() or np.isposinf(row).any() or np.isneginf(row).all():
            continue
        e = np.exp(row - row.max())
        res[i] = e / e.sum()
    return out


def topk64(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by sorting (logit desc, index asc) with Python's sort, row by row."""
    p = softmax64(x)
    flat, pf = x.reshape(-1, x.shape[-1]), p.reshape(-1, x.shape[-1])
    idx = np.empty((flat.shape[0], k), dtype=np.int64)
    for i, row in enumerate(flat):
        def key(j: int, row: np.ndarray = row) -> tuple[float, int]:
            v = float(row[j])
            return (-np.inf if np.isnan(v) else -v, j)  # NaN first, then descending
        idx[i] = sorted(range(row.size), key=key)[:k]
    vals = np.take_along_axis(pf, idx, axis=1)
    return vals.reshape(*x.shape[:-1], k), idx.reshape(*x.shape[:-1], k)


def logits(rng: np.random.Generator, kind: str, rows: int, cols: int) -> np.ndarray:
    x = rng.standard_normal((rows, cols)) * 3
    if kind == "large":
        x = x * 1e4 + np.where(rng.random((rows, cols)) < 0.2, 3e30, 0.0)
    elif kind == "very_negative":
        x = x - 1e4
    elif kind == "minus_inf":
        x[rng.random((rows, cols)) < 0.4] = -np.inf
        x[np.arange(rows), rng.integers(0, cols, rows)] = rng.standard_normal(rows)
    elif kind == "equal":
        x = np.repeat(rng.standard_normal((rows, 1)) * 5, cols, axis=1)
    return x


KINDS = ["normal", "large", "very_negative", "minus_inf", "equal"]
LENGTHS = [1, 2, 7, 255, 256, 257, 1000, 4099]


# ------------------------------------------------------------------ softmax references


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["safe", "online"])
def test_softmax_references_against_float64(rng, fn, dtype, kind):
    for cols in LENGTHS:
        x = logits(rng, kind, 5, cols).astype(dtype)
        before = x.copy()
        out = sm.safe_softmax(x) if fn == "safe" else sm.online_softmax(x, block=64)
        ref = softmax64(x)
        assert out.dtype == dtype and out.shape == x.shape
        err = rel_err(out, ref)
        assert err < TOL[dtype], f"seed {seed_of(rng)}: {fn} {kind} cols={cols}: {err:.2e}"
        np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("block", [1, 3, 64, 256, 5000])
def test_online_softmax_any_block_size(rng, block):
    x = rng.standard_normal((4, 1001)).astype(np.float32) * 4
    assert rel_err(sm.online_softmax(x, block=block), softmax64(x)) < 1e-5, seed_of(rng)


def test_online_normalizer_equals_the_elementwise_recurrence(rng):
    """block=1 merges [x_k, 1] pairs as a tree; the paper's recurrence goes left to right."""
    x = rng.standard_normal((3, 37)) * 5
    x[0, 5] = -np.inf
    m_seq, d_seq = np.full(3, -np.inf), np.zeros(3)
    for j in range(x.shape[1]):
        m_new = np.fmax(m_seq, x[:, j])
        d_seq = d_seq * np.exp(m_seq - m_new) + np.exp(x[:, j] - m_new)
        m_seq = m_new
    m, d = sm.online_normalizer(x, block=1)
    np.testing.assert_array_equal(m, x.max(axis=1))
    np.testing.assert_allclose(m, m_seq)
    np.testing.assert_allclose(d, d_seq, rtol=1e-12)
    m2, d2 = sm.online_normalizer(x, block=7)
    np.testing.assert_allclose(d2, d_seq, rtol=1e-12)


def test_merge_is_associative_and_commutative_with_an_identity(rng):
    m = rng.standard_normal((3, 50)) * 20
    m[:, :5] = -np.inf
    d = np.where(m == -np.inf, 0.0, rng.random((3, 50)) + 0.1)
    (ma, mb, mc), (da, db, dc) = m, d
    left = sm.merge_normalizers(*sm.merge_normalizers(ma, da, mb, db), mc, dc)
    right = sm.merge_normalizers(ma, da, *sm.merge_normalizers(mb, db, mc, dc))
    np.testing.assert_array_equal(left[0], right[0])
    np.testing.assert_allclose(left[1], right[1], rtol=1e-12)
    ab, ba = sm.merge_normalizers(ma, da, mb, db), sm.merge_normalizers(mb, db, ma, da)
    np.testing.assert_array_equal(ab[0], ba[0])
    np.testing.assert_array_equal(ab[1], ba[1])
    ident = sm.merge_normalizers(np.full(50, -np.inf), np.zeros(50), ma, da)
    np.testing.assert_array_equal(ident[0], ma)
    np.testing.assert_allclose(ident[1], da, rtol=1e-15)


def test_split_rows_merge_to_the_whole_row(rng):
    x = rng.standard_normal((2, 300)) * 4
    cut = int(rng.integers(1, 299))
    m, d = sm.merge_normalizers(*sm.online_normalizer(x[:, :cut]),
                                *sm.online_normalizer(x[:, cut:]))
    mw, dw = sm.online_normalizer(x)
    np.testing.assert_array_equal(m, mw)
    np.testing.assert_allclose(d, dw, rtol=1e-12)
    np.testing.assert_allclose(d, np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1), rtol=1e-12)


@pytest.mark.parametrize("fn", [sm.safe_softmax, sm.online_softmax])
def test_rows_without_a_distribution_are_nan(fn):
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, np.inf, 1.0], [np.nan, 1.0, 2.0],
                  [1.0, -np.inf, 2.0]], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        y = fn(x)
    assert np.isnan(y[:3]).all()
    np.testing.assert_allclose(y[3], softmax64(x[3:])[0], rtol=1e-6)
    assert y[3, 1] == 0.0


@pytest.mark.parametrize("fn", [sm.safe_softmax, sm.online_softmax])
def test_more_axes_non_contiguous_and_empty_rows(rng, fn):
    x = rng.standard_normal((3, 4, 129)).astype(np.float32)
    assert rel_err(fn(x), softmax64(x)) < 1e-5
    xt = rng.standard_normal((130, 6)).astype(np.float32).T  # non-contiguous rows
    assert not xt.flags.c_contiguous
    assert rel_err(fn(xt), softmax64(np.ascontiguousarray(xt))) < 1e-5
    assert fn(np.zeros((3, 0), np.float32)).shape == (3, 0)


def test_half_precision_accumulates_in_float32(rng):
    x = (rng.standard_normal((4, 3000)) * 3).astype(np.float16)
    for fn in (sm.safe_softmax, sm.online_softmax):
        y = fn(x)
        assert y.dtype == np.float16
        assert rel_err(y, softmax64(x)) < TOL[np.float16]


def test_bfloat16_accumulates_in_float32(rng):
    bf16 = pytest.importorskip("ml_dtypes").bfloat16
    xb = (rng.standard_normal((4, 3000)) * 3).astype(bf16)
    yb = sm.online_softmax(xb)
    assert yb.dtype == bf16
    assert rel_err(yb.astype(np.float64), softmax64(xb.astype(np.float64))) < 1e-2


# ------------------------------------------------------------------ top-k


@pytest.mark.parametrize("kind", KINDS)
def test_topk_against_a_sort(rng, kind):
    for cols in (1, 2, 7, 33, 300):
        x = logits(rng, kind, 6, cols).astype(np.float32)
        for k in sorted({1, min(5, cols), cols}):
            values, indices = sm.softmax_topk(x, k)
            ref_v, ref_i = topk64(x, k)
            assert values.shape == indices.shape == (6, k) and indices.dtype == np.int64
            np.testing.assert_array_equal(indices, ref_i, err_msg=f"seed {seed_of(rng)}")
            assert rel_err(values, ref_v) < 1e-5, f"seed {seed_of(rng)}: {kind} {cols} {k}"


def test_topk_ties_go_to_the_lower_index(rng):
    x = rng.integers(-3, 3, size=(20, 64)).astype(np.float32)  # many exact ties
    x[0] = 1.0
    x[1, ::2] = -0.0  # -0.0 ties with +0.0
    x[1, 1::2] = 0.0
    for k in (1, 5, 32, 64):
        _, idx = sm.softmax_topk(x, k)
        np.testing.assert_array_equal(idx, topk64(x, k)[1])
        np.testing.assert_array_equal(idx[0], np.arange(k))
        np.testing.assert_array_equal(idx[1], np.arange(k))
        for row, cols in zip(x, idx, strict=True):  # equal values: increasing indices
            same = row[cols][1:] == row[cols][:-1]
            assert np.all(np.diff(cols)[same] > 0)


def test_topk_special_values():
    x = np.array([[1.0, np.nan, 3.0, np.inf], [-np.inf, 2.0, -np.inf, 1.0]], np.float32)
    v, i = sm.softmax_topk(x, 3)
    np.testing.assert_array_equal(i[0], [1, 3, 2])  # NaN ranks above +inf
    assert np.isnan(v[0]).all()
    np.testing.assert_array_equal(i[1], [1, 3, 0])
    assert v[1, 2] == 0.0
    np.testing.assert_allclose(v[1, :2], softmax64(x[1:])[0, [1, 3]], rtol=1e-6)


def test_topk_more_axes_and_float64(rng):
    x = rng.standard_normal((2, 3, 50))
    v, i = sm.softmax_topk(x, 4)
    rv, ri = topk64(x, 4)
    assert v.dtype == np.float64 and v.shape == (2, 3, 4)
    np.testing.assert_array_equal(i, ri)
    assert rel_err(v, rv) < 1e-12


# ------------------------------------------------------------------ backward


def test_softmax_backward_against_the_jacobian(rng):
    for cols in (1, 5, 300):
        x = rng.standard_normal((4, cols))
        y = softmax64(x)
        dy = rng.standard_normal((4, cols))
        jac = np.einsum("ri,ij->rij", y, np.eye(cols)) - np.einsum("ri,rj->rij", y, y)
        ref = np.einsum("rij,ri->rj", jac, dy)
        assert rel_err(sm.softmax_backward(y, dy), ref) < 1e-12
        out32 = sm.softmax_backward(y.astype(np.float32), dy.astype(np.float32))
        assert out32.dtype == np.float32 and rel_err(out32, ref) < 1e-5


def test_softmax_backward_matches_finite_differences(rng):
    x = rng.standard_normal((2, 6))
    dy = rng.standard_normal((2, 6))
    dx = sm.softmax_backward(softmax64(x), dy)
    eps = 1e-6
    for r in range(2):
        for j in range(6):
            xp_, xm_ = x.copy(), x.copy()
            xp_[r, j] += eps
            xm_[r, j] -= eps
            num = ((softmax64(xp_) - softmax64(xm_)) * dy).sum() / (2 * eps)
            assert dx[r, j] == pytest.approx(num, rel=1e-6, abs=1e-9)


def test_cross_entropy_grad(rng):
    x = rng.standard_normal((5, 9))
    labels = rng.integers(0, 9, 5)
    p = softmax64(x)
    g = sm.cross_entropy_grad(p, labels)
    onehot = np.eye(9)[labels]
    np.testing.assert_allclose(g, (p - onehot) / 5, rtol=1e-14)
    np.testing.assert_allclose(sm.cross_entropy_grad(p.astype(np.float32), labels, scale=1.0),
                               p - onehot, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ errors


def one_line_value_error(call) -> str:  # noqa: ANN001
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_the_cuda_functions_check_dtypes_before_launching():
    """On stand-in arrays (nothing launches): float16 goes to the softmax and top-k
    kernels with float16 outputs; the loss and backward kernels, float64 and integers
    are refused by name."""
    cs = cuda_softmax
    previous = cs._use_launcher(RecordingLauncher(sms=2))
    try:
        half, single = np.zeros((2, 16), np.float16), np.zeros((2, 16), np.float32)
        values, indices = cs.softmax_topk(half, 3)
        assert values.dtype == np.float16 and indices.dtype == np.int64
        assert cs.online_softmax(half).dtype == np.float16
        for call, words in [
            (lambda: cs.cross_entropy(half, np.zeros(2, np.int64)), "take float32, got"),
            (lambda: cs.softmax_backward(half, half), "take float32, got"),
            (lambda: cs.online_softmax(np.zeros((2, 16))), "float32 or float16, got dtype"),
            (lambda: cs.online_softmax(np.zeros((2, 16), np.int8)), "non-floating dtype int8"),
            (lambda: cs.online_softmax(half, out=single), "out must be a C-contiguous float16"),
        ]:
            assert words in one_line_value_error(call)
    finally:
        cs._use_launcher(previous)


def test_invalid_arguments_raise_one_line_errors():
    x = np.zeros((2, 5), np.float32)
    assert "between 1 and the row length 5" in one_line_value_error(lambda: sm.softmax_topk(x, 6))
    assert "got 0" in one_line_value_error(lambda: sm.softmax_topk(x, 0))
    one_line_value_error(lambda: sm.softmax_topk(x, -1))
    one_line_value_error(lambda: sm.softmax_topk(x, 2.0))
    one_line_value_error(lambda: sm.softmax_topk(x, True))
    ints = np.zeros((2, 5), np.int32)
    for fn in (sm.safe_softmax, sm.online_softmax, lambda a: sm.softmax_topk(a, 1)):
        assert "floating dtype" in one_line_value_error(lambda fn=fn: fn(ints))
        assert "0-d" in one_line_value_error(lambda fn=fn: fn(np.zeros((), np.float32)))
        assert "NumPy array" in one_line_value_error(lambda fn=fn: fn([[1.0, 2.0]]))
    one_line_value_error(lambda: sm.online_softmax(x, block=0))
    one_line_value_error(lambda: sm.softmax_backward(x, np.zeros((2, 4), np.float32)))
    one_line_value_error(lambda: sm.softmax_backward(x, ints))
    one_line_value_error(lambda: sm.cross_entropy_grad(x, np.array([0, 5])))
    one_line_value_error(lambda: sm.cross_entropy_grad(x, np.array([0.0, 1.0])))


# ------------------------------------------------------------------ the CUDA module, no GPU


def test_cuda_module_imports_and_says_why_it_cannot_run():
    if cuda_softmax.softmax_kernels_available():
        pytest.skip("a GPU is here: tests/gpu covers the kernels")
    previous = cuda_softmax._use_launcher(None)
    try:
        with pytest.raises(DeviceUnavailable, match="CuPy"):
            cuda_softmax.online_softmax(np.zeros((2, 3), np.float32))
    finally:
        cuda_softmax._use_launcher(previous)


@pytest.mark.parametrize("vec", [1, 4])
def test_register_plans_cover_the_row(vec):
    for cols in list(range(vec, 2049, vec * 7)) + [4096, 8192, 12288, 16384]:
        nvec = cols // vec
        for method in ("warp", "block"):
            if method == "warp" and cols > cuda_softmax.WARP_COLS:
                continue
            plan = cuda_softmax.plan_rows(10_000, cols, vec, 132, method)
            assert plan.tpr * plan.items >= nvec, (cols, plan)
            assert plan.items * vec <= cuda_softmax.REGISTER_FLOATS
            assert plan.tpr in (32, 128, 256, 512) and plan.items & (plan.items - 1) == 0
            if method == "block":
                assert plan.tpr >= 128


def test_plans_for_the_benchmark_shapes():
    plan = cuda_softmax.plan_rows
    assert plan(8192, 1024, 4, 132).method == "warp"
    assert plan(1024, 8192, 4, 132).method == "block"
    long = plan(16, 1 << 20, 4, 132)
    assert long.method == "split" and 16 * long.splits >= 4 * 132
    assert long.splits * long.chunk_vec >= (1 << 20) // 4 > (long.splits - 1) * long.chunk_vec
    assert plan(64, 131072, 4, 132).method == "split"
    assert plan(4000, 65536, 4, 132).method == "stream"
    assert plan(10, 1000, 1, 132).method == "warp"
    with pytest.raises(ValueError):
        plan(4, 2048, 4, 132, "warp")
    with pytest.raises(ValueError):
        plan(4, 20000, 4, 132, "block")
    with pytest.raises(ValueError):
        plan(4, 20000, 4, 132, "fast")
    forced = plan(3, 9, 1, 132, "split")
    assert forced.splits == 2 and forced.chunk_vec == 5


def test_every_launched_kernel_is_in_the_instantiation_list():
    """The names the dispatcher can build (recorded on fake arrays) are the names the
    nvcc check compiles."""
    names = set(cuda_softmax.all_name_expressions())
    recorder = RecordingLauncher(sms=4)
    previous = cuda_softmax._use_launcher(recorder)
    try:
        run_kernel_cases(np.random.default_rng(), check=False, small=True)
    finally:
        cuda_softmax._use_launcher(previous)
    assert recorder.names and recorder.names <= names, recorder.names - names


def test_dispatch_from_the_array_functions(monkeypatch):
    fake_cupy = types.ModuleType("cupy")
    x = np.zeros((2, 3), np.float32)
    assert sm._cuda_kernels(np, x, -1) is None
    monkeypatch.setenv("VMEM_CUDA_SOFTMAX", "1")
    assert sm._cuda_kernels(np, x, -1) is None
    assert sm._cuda_kernels(fake_cupy, x, -1) is cuda_softmax
    assert sm._cuda_kernels(fake_cupy, x, 0) is None
    assert sm._cuda_kernels(fake_cupy, x.astype(np.float64), -1) is None
    assert sm._cuda_kernels(fake_cupy, x.astype(np.float16), -1) is cuda_softmax
    assert sm._cuda_kernels(fake_cupy, x.astype(np.float16), -1, loss=True) is None
    monkeypatch.setenv("VMEM_CUDA_SOFTMAX", "0")
    assert sm._cuda_kernels(fake_cupy, x, -1) is None
    monkeypatch.delenv("VMEM_CUDA_SOFTMAX")
    assert (sm._cuda_kernels(fake_cupy, x, -1) is cuda_softmax) == KERNEL_SWITCHES["softmax"][1]


# ------------------------------------------------------------------ vmem bench, no GPU


def test_bench_without_a_gpu_exits_2_with_one_line(capsys):
    from vmem.backends import cuda
    from vmem.bench.__main__ import main

    if cuda.available():
        pytest.skip("a GPU is here")
    for kind in ("softmax", "topk", "conv", "step"):
        assert main([kind]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"vmem bench: error: {kind} needs CUDA") and "\n" not in err


@pytest.mark.parametrize("argv, words", [
    (["softmax", "--runs", "0"], "--runs: must be a positive integer"),
    (["topk", "--k", "33"], "--k: takes integers from 1 to 32"),
    (["softmax", "--shapes", "8x"], "--shapes: a shape is ROWSxCOLS"),
    (["fast"], "invalid choice"),
])
def test_bench_usage_errors_are_one_line(capsys, argv, words):
    from vmem.bench.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_bench_helpers():
    from vmem.bench.softmax import parse_shape
    from vmem.bench.timing import buffer_count, markdown_table

    assert parse_shape("16x1048576") == (16, 1 << 20) and parse_shape("8×4") == (8, 4)
    assert buffer_count(64 << 20, 50 << 20) == 3 and buffer_count(1 << 30, 50 << 20) == 2
    assert buffer_count(1 << 20, 50 << 20) == 32
    table = markdown_table(["a", "b"], [["x", 1.23456], ["y", None]]).splitlines()
    assert table == ["| a | b |", "| --- | ---: |", "| x | 1.235 |", "| y | – |"]


# ------------------------------------------------------------------ the CUDA C on a CPU emulator


def same_with_nan(out: np.ndarray, ref: np.ndarray, what: str, rtol: float = 1e-5) -> None:
    assert np.array_equal(np.isnan(out), np.isnan(ref)), what
    finite = ~np.isnan(ref)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=rtol, atol=rtol * 1e-2,
                               err_msg=what)


def online_methods(cols: int) -> list[str]:
    """The online-softmax paths that take rows of `cols` columns."""
    cs = cuda_softmax
    return [m for m in cs.METHODS if not ((m == "warp" and cols > cs.WARP_COLS)
                                          or (m == "block" and cols > cs.REGISTER_COLS))]


def online_and_log(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """online_softmax and log_softmax of x by `method`, into outputs poisoned with NaN."""
    y, logp = np.full_like(x, np.nan), np.full_like(x, np.nan)
    cuda_softmax.online_softmax(x, out=y, method=method)
    cuda_softmax.log_softmax(x, out=logp, method=method)
    return y, logp


def run_kernel_cases(rng: np.random.Generator, check: bool, small: bool = False) -> None:
    """Every path of cuda_softmax on NumPy arrays (through whichever launcher is set),
    outputs poisoned first, compared with the references when `check`."""
    cs = cuda_softmax
    shapes = [(3, 1), (5, 7), (4, 1024), (3, 1030), (2, 4100)] if not small else \
        [(3, 1), (5, 7), (4, 1024), (2, 4100)]
    for rows, cols in shapes:
        x = (rng.standard_normal((rows, cols)) * 4).astype(np.float32)
        ref = softmax64(x)
        for method in online_methods(cols):
            y, logp = online_and_log(x, method)
            if check:
                assert rel_err(y, ref) < 1e-5, (rows, cols, method)
                assert rel_err(logp, np.log(ref)) < 1e-5, (rows, cols, method)
        for method in ("auto", "stream", "split"):
            y = np.full_like(x, np.nan)
            cs.safe_softmax(x, out=y, method=method)
            if check:
                assert rel_err(y, ref) < 1e-5, ("safe", rows, cols, method)
        xt = x.copy()
        xt[:, ::3] = np.round(xt[:, ::3])  # exact ties
        for k in sorted({1, min(5, cols), min(32, cols)}):
            for method in ("rows", "split"):
                v, i = cs.softmax_topk(xt, k, method=method)
                if check:
                    rv, ri = topk64(xt, k)
                    np.testing.assert_array_equal(i, ri, err_msg=f"{rows}x{cols} k={k} {method}")
                    assert rel_err(v, rv) < 1e-5
        dy = rng.standard_normal((rows, cols)).astype(np.float32)
        dx = cs.softmax_backward(ref.astype(np.float32), dy)
        labels = rng.integers(0, cols, rows)
        loss, probs = cs.cross_entropy(x, labels)
        loss2, grad = cs.softmax_cross_entropy_grad(x, labels)
        grad2 = cs.cross_entropy_backward(probs, labels)
        if check:
            assert rel_err(dx, sm.softmax_backward(ref, dy.astype(np.float64))) < 1e-5
            ref_loss = -np.log(ref[np.arange(rows), labels]).mean()
            assert float(loss) == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
            assert float(loss2) == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
            assert rel_err(probs, ref) < 1e-5
            ref_grad = sm.cross_entropy_grad(ref, labels)
            assert rel_err(grad, ref_grad) < 1e-5 and rel_err(grad2, ref_grad) < 1e-5
    for cols in (1, 40, 1030):
        x = special_rows(rng, cols)
        ref = softmax64(x)
        with np.errstate(all="ignore"):  # x - m - log d: finite where exp underflows
            ref_log = sm.log_softmax(np, x.astype(np.float64))
        for method in ("auto", "block", "split"):
            y = x.copy()
            cs.online_softmax(y, out=y, method=method)  # in place
            logp = cs.log_softmax(x, method=method)
            if check:
                same_with_nan(y, ref, f"special {cols} {method}")
                assert np.array_equal(np.isfinite(logp), np.isfinite(ref_log))
                finite = np.isfinite(ref_log)
                np.testing.assert_allclose(logp[finite], ref_log[finite], rtol=1e-5, atol=1e-5)
        for method in ("auto", "split"):
            y = cs.safe_softmax(x, method=method)
            if check:
                same_with_nan(y, ref, f"safe special {cols} {method}")
        for k in sorted({1, min(cols, 3), min(cols, 32)}):
            for method in ("rows", "split"):
                v, i = cs.softmax_topk(x, k, method=method)
                if check:
                    rv, ri = sm.softmax_topk(x.astype(np.float64), k)
                    np.testing.assert_array_equal(i, ri)
                    same_with_nan(v, rv, f"topk special {cols} {k} {method}")
    buf = rng.standard_normal(4 * 64 + 1).astype(np.float32)
    misaligned = buf[1:].reshape(4, 64)  # a multiple of 4 columns, rows not 16-byte aligned
    y = cs.online_softmax(misaligned)
    if check:
        assert rel_err(y, softmax64(misaligned)) < 1e-5
    run_half_cases(rng, check)


HALF_TOL = 1e-3  # float16 outputs: a unit roundoff of 4.9e-4, one rounding from float32


def run_half_cases(rng: np.random.Generator, check: bool) -> None:
    """float16 in and out on every softmax path and top-k: eight-half vectors (columns a
    multiple of 8), single halves (not, or rows off 16-byte boundaries), special values,
    many exact ties (few float16 values), against the float64 references."""
    cs = cuda_softmax
    buf = (rng.standard_normal(3 * 1032 + 1) * 4).astype(np.float16)
    cases = [(rng.standard_normal((5, 7)) * 4).astype(np.float16),
             (rng.standard_normal((4, 1024)) * 4).astype(np.float16),
             (rng.standard_normal((2, 4104)) * 4).astype(np.float16),
             buf[1:].reshape(3, 1032),  # 8 | 1032, but rows start 2 bytes off
             special_rows(rng, 40).clip(-6e4, 6e4).astype(np.float16)]
    for x in cases:
        rows, cols = x.shape
        ref = softmax64(x)
        with np.errstate(all="ignore"):
            # float16 outputs: a log-probability below -65504 is -inf, as the kernels
            # write it (huge logits spread over 1e4 reach that)
            ref_log = sm.log_softmax(np, x.astype(np.float64))
            finite = np.isfinite(ref_log.astype(np.float16))
        what = f"float16 {rows}x{cols}"
        for method in online_methods(cols):
            y, logp = online_and_log(x, method)
            if check:
                assert y.dtype == np.float16 and logp.dtype == np.float16
                same_with_nan(y, ref, f"{what} {method}", HALF_TOL)
                assert np.array_equal(np.isfinite(logp), finite), f"{what} {method}"
                assert rel_err(logp[finite], ref_log[finite]) < HALF_TOL, f"{what} {method}"
        for method in ("auto", "stream", "split"):
            y = np.full_like(x, np.nan)
            cs.safe_softmax(x, out=y, method=method)
            if check:
                same_with_nan(y, ref, f"safe {what} {method}", HALF_TOL)
        for k in sorted({1, min(5, cols), min(32, cols)}):
            for method in ("rows", "split"):
                v, i = cs.softmax_topk(x, k, method=method)
                if check:
                    assert v.dtype == np.float16
                    rv, ri = sm.softmax_topk(x.astype(np.float64), k)
                    np.testing.assert_array_equal(i, ri, err_msg=f"{what} k={k} {method}")
                    same_with_nan(v, rv, f"topk {what} k={k} {method}", HALF_TOL)


HALF_KERNELS = r"""
__global__ void half_widen(const unsigned short* h, float* f, long long n) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) f[i] = half_to_float(h[i]);
}
__global__ void half_narrow(const float* f, unsigned short* h, long long n) {
    for (long long i = threadIdx.x; i < n; i += blockDim.x) h[i] = float_to_half(f[i]);
}
"""


@pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
def test_float16_conversions_of_the_cuda_source_match_numpy(rng):
    """The conversions the emulator runs (the GPU uses its cvt instructions): every
    float16 widened, and float32 values narrowed with round-to-nearest-even, against
    NumPy's casts bit for bit: halfway points, subnormals, overflow, NaN included."""
    lib = build_emulator(cuda_softmax.SOURCE + HALF_KERNELS, {"half_widen", "half_narrow"})
    launcher = EmulatorLauncher(lib, sms=1)
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    wide = np.empty(every.size, np.float32)
    launcher.launch("half_widen", 1, 64, (every, wide, np.int64(every.size)))
    expected = every.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(wide), nan)
    assert np.array_equal(wide[~nan].view(np.uint32), expected[~nan].view(np.uint32))
    finite = wide[~nan & np.isfinite(wide)]
    neighbours = np.nextafter(finite[:-1], finite[1:]).astype(np.float32)
    halfway = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    samples = np.concatenate([
        finite, neighbours, halfway, np.nextafter(halfway, np.float32(np.inf)),
        np.nextafter(halfway, np.float32(-np.inf)),
        rng.standard_normal(20000).astype(np.float32) * np.float32(2.0) ** rng.integers(
            -30, 20, 20000).astype(np.float32),
        np.array([65504, 65519.99, 65520, 65536, 1e30, -65520, 2**-25, 2**-24, 3 * 2**-26,
                  np.inf, -np.inf, 0.0, -0.0], np.float32)]).astype(np.float32)
    narrow = np.empty(samples.size, np.uint16)
    launcher.launch("half_narrow", 1, 64, (samples, narrow, np.int64(samples.size)))
    with np.errstate(over="ignore"):  # what overflows becomes inf, as the kernels make it
        expected16 = samples.astype(np.float16)
    assert np.array_equal(narrow, expected16.view(np.uint16))
    nan_in = np.array([np.nan], np.float32)
    out = np.empty(1, np.uint16)
    launcher.launch("half_narrow", 1, 32, (nan_in, out, np.int64(1)))
    assert np.isnan(out.view(np.float16)[0])


@pytest.mark.skipif(os.environ.get("VMEM_EMULATE_CUDA") != "1",
                    reason="set VMEM_EMULATE_CUDA=1 to run the CUDA C under the CPU emulator")
@pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
def test_cuda_source_under_the_cpu_emulator(rng, monkeypatch):
    monkeypatch.setattr(cuda_softmax, "MIN_CHUNK", 64)  # split small rows too
    recorder = RecordingLauncher(sms=2)
    previous = cuda_softmax._use_launcher(recorder)
    try:
        run_kernel_cases(np.random.default_rng(0), check=False)  # which kernels to build
        emulator = build_emulator(cuda_softmax.SOURCE, recorder.names)
        cuda_softmax._use_launcher(EmulatorLauncher(emulator, sms=2))
        run_kernel_cases(rng, check=True)
    finally:
        cuda_softmax._use_launcher(previous)
