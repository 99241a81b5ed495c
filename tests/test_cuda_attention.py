"""The CUDA C of vmem.kernels.cuda_attention on the CPU emulator (tests/cuda_emulator.py;
needs g++, skipped without) against a float64 reference of causal attention and the
NumPy flash algorithm of vmem.kernels.attention, every output poisoned (NaN) before a
kernel writes it: sequence lengths that are not multiples of the kernels' tiles, one
token, the tile's edge, several heads, every compiled head size, scores large enough
that whole tiles' exponentials underflow, and float16 in and out. Then which calls
take the kernels (VMEM_CUDA_ATTENTION) and the one-line errors. Small shapes: the
emulator runs one std::thread per CUDA thread."""

from __future__ import annotations

import types

import numpy as np
import pytest
from cuda_emulator import RecordingLauncher, emulator_fixture, numpy_as_cupy
from test_attention_kernels import reference

from vmem.errors import DeviceUnavailable
from vmem.kernels import attention, cuda_attention
from vmem.kernels.cuda_module import KERNEL_SWITCHES, kernel_module

emulator = emulator_fixture(cuda_attention)

# float32 kernels against float64: outputs, log-sum-exp and gradients are O(1) for inputs
# of unit variance; measured errors are ~1e-6
FLOAT32_ATOL = 2e-5


class Poisoned:
    """The emulator's launcher with every array it allocates filled with NaN first, so
    an element a kernel skips shows in the comparison."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        xp = types.ModuleType("numpy_poisoned")
        xp.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined]
        xp.empty = lambda shape, dtype=np.float64: np.full(shape, np.nan, dtype)  # type: ignore[attr-defined]
        xp.empty_like = lambda a: np.full_like(a, np.nan)  # type: ignore[attr-defined]
        self.xp = xp

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
def poisoned(emulator: None) -> object:
    launcher = cuda_attention._get_launcher()
    previous = cuda_attention._use_launcher(Poisoned(launcher))
    yield
    cuda_attention._use_launcher(previous)


def inputs(shape: tuple[int, int, int, int], seed: int, scale: float = 1.0
           ) -> list[np.ndarray]:
    """q, k, v and d_out in float64, q scaled by `scale` (large scores)."""
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (rng.standard_normal(shape) for _ in range(4))
    return [q * scale, k, v, d_out]


def reference_grads(q: np.ndarray, k: np.ndarray, v: np.ndarray, d_out: np.ndarray
                    ) -> tuple[np.ndarray, ...]:
    """dQ, dK, dV in float64 by the materialized algorithm."""
    _, p = attention.attention_forward(np, q, k, v)
    return attention.attention_backward(np, d_out, q, k, v, p)


# (N, heads, T, d): T around the tiles (32 rows for d <= 64, 16 for d up to 128), one
# token, a head size under each compiled one
SHAPES = [(2, 3, 37, 16), (1, 2, 32, 32), (1, 1, 33, 64), (1, 1, 1, 8), (1, 2, 5, 4),
          (1, 1, 17, 100), (1, 2, 16, 128), (2, 1, 65, 48)]


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_kernels_match_float64_and_the_numpy_flash_algorithm(poisoned, shape):
    q, k, v, d_out = inputs(shape, seed=sum(shape))
    f32 = [a.astype(np.float32) for a in (q, k, v, d_out)]
    out, lse = cuda_attention.flash_forward(*f32[:3])
    assert out.dtype == np.float32 and lse.dtype == np.float32 and lse.shape == shape[:3]
    expected, expected_lse = reference(q, k, v)
    np.testing.assert_allclose(out, expected, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(lse, expected_lse, atol=FLOAT32_ATOL, rtol=0)
    numpy_out, numpy_lse = attention.flash_forward(np, *f32[:3], tile=8)
    np.testing.assert_allclose(out, numpy_out, atol=FLOAT32_ATOL, rtol=0)
    np.testing.assert_allclose(lse, numpy_lse, atol=FLOAT32_ATOL, rtol=0)
    grads = cuda_attention.flash_backward(f32[3], *f32[:3], out, lse)
    numpy_grads = attention.flash_backward(np, f32[3], *f32[:3], numpy_out, numpy_lse, tile=8)
    for got, want, numpy_got in zip(grads, reference_grads(q, k, v, d_out), numpy_grads,
                                    strict=True):
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_allclose(got, want, atol=FLOAT32_ATOL, rtol=0)
        np.testing.assert_allclose(got, numpy_got, atol=FLOAT32_ATOL, rtol=0)


def test_large_scores_underflow_whole_tiles_without_nan(poisoned):
    """Scores of hundreds: every exponential of a tile but the row's best underflows to 0,
    and the running maximum jumps between tiles (the correction factor 0)."""
    shape = (1, 2, 70, 16)
    q, k, v, d_out = inputs(shape, seed=7, scale=60.0)
    f32 = [a.astype(np.float32) for a in (q, k, v, d_out)]
    out, lse = cuda_attention.flash_forward(*f32[:3])
    expected, expected_lse = reference(q, k, v)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    np.testing.assert_allclose(out, expected, atol=FLOAT32_ATOL, rtol=0)
    # scores of ~100 carry float32 errors of ~100 * 2**-24 * sqrt(d): relative to the largest
    np.testing.assert_allclose(lse, expected_lse, atol=2e-5 * np.abs(expected_lse).max(), rtol=0)
    grads = cuda_attention.flash_backward(f32[3], *f32[:3], out, lse)
    for got, want in zip(grads, reference_grads(q, k, v, d_out), strict=True):
        assert np.isfinite(got).all()
        # gradients of near one-hot rows scale with the scores: relative to the largest
        np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, np.abs(want).max()), rtol=0)


def test_the_first_token_attends_to_itself_only(poisoned):
    shape = (1, 1, 40, 8)
    q, k, v, d_out = (a.astype(np.float32) for a in inputs(shape, seed=3))
    out, lse = cuda_attention.flash_forward(q, k, v)
    np.testing.assert_allclose(out[0, 0, 0], v[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(lse[0, 0, 0], (q[0, 0, 0] @ k[0, 0, 0]) / np.sqrt(8), rtol=1e-5)
    _, dk, dv = cuda_attention.flash_backward(d_out, q, k, v, out, lse)
    # the last key is seen by the last query alone: its dV is that query's p * dO
    p_last = np.exp(q[0, 0, -1] @ k[0, 0, -1] / np.sqrt(8) - lse[0, 0, -1])
    np.testing.assert_allclose(dv[0, 0, -1], p_last * d_out[0, 0, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2, 37, 16), (1, 1, 20, 128)])
def test_float16_in_and_out_computed_in_float32(poisoned, shape):
    """float16 arrays in and out, float32 inside: against float64 on the float16 values,
    within float16's rounding of the results (2**-11 relative) and float32's error."""
    q, k, v, d_out = (a.astype(np.float16) for a in inputs(shape, seed=11))
    out, lse = cuda_attention.flash_forward(q, k, v)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    wide = [a.astype(np.float64) for a in (q, k, v, d_out)]
    expected, expected_lse = reference(*wide[:3])
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=2**-10, atol=1e-4)
    np.testing.assert_allclose(lse, expected_lse, atol=FLOAT32_ATOL, rtol=0)
    grads = cuda_attention.flash_backward(d_out, q, k, v, out, lse)
    # the gradients' reference takes the kernel's own output for D = rowsum(dO * O): the
    # kernel uses its float16 output, which differs from the exact one by its rounding
    for got, want in zip(grads, reference_grads(*wide), strict=True):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=4e-3,
                                   atol=4e-3 * np.abs(want).max())


def test_calls_on_cupy_take_the_kernels_when_switched_on(emulator, monkeypatch):
    """The xp-level flash functions on CuPy (NumPy under CuPy's name here) run the kernels
    with VMEM_CUDA_ATTENTION=1, on non-contiguous views too (the layer's heads are
    strided views of its input), and the array code otherwise."""
    cp = numpy_as_cupy()
    shape = (2, 2, 21, 16)
    q, k, v, d_out = (a.astype(np.float32) for a in inputs(shape, seed=5))
    monkeypatch.delenv("VMEM_CUDA_ATTENTION", raising=False)
    assert KERNEL_SWITCHES["attention"] == ("VMEM_CUDA_ATTENTION", False)
    assert kernel_module(cp, "attention", q, k, v) is None  # off by default
    monkeypatch.setenv("VMEM_CUDA_ATTENTION", "1")
    assert kernel_module(cp, "attention", q, k, v) is cuda_attention
    assert kernel_module(np, "attention", q, k, v) is None
    assert kernel_module(cp, "attention", q.astype(np.float64), k, v) is None
    assert kernel_module(cp, "attention", *(np.zeros((1, 1, 4, 129), np.float32),) * 3) is None
    assert kernel_module(cp, "attention", q, k[:, :, :20], v) is None
    strided = [np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
               for a in (q, k, v, d_out)]
    assert not strided[0].flags.c_contiguous
    out, lse = attention.flash_forward(cp, *strided[:3])
    kernel_out, kernel_lse = cuda_attention.flash_forward(q, k, v)
    assert lse.dtype == np.float32  # the kernels' (the array code gives q's dtype)
    np.testing.assert_array_equal(out, kernel_out)
    np.testing.assert_array_equal(lse, kernel_lse)
    grads = attention.flash_backward(cp, strided[3], *strided[:3], out, lse)
    for got, want in zip(grads, cuda_attention.flash_backward(d_out, q, k, v, out, lse),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    monkeypatch.setenv("VMEM_CUDA_ATTENTION", "0")
    array_out, _ = attention.flash_forward(cp, q, k, v, tile=8)
    np.testing.assert_allclose(array_out, kernel_out, atol=FLOAT32_ATOL, rtol=0)


def one_line_value_error(call) -> str:  # noqa: ANN001
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_bad_arrays_are_refused_in_one_line_before_any_kernel():
    recorder = RecordingLauncher(sms=2)
    previous = cuda_attention._use_launcher(recorder)
    try:
        x = np.zeros((1, 2, 9, 16), np.float32)
        for call, words in [
            (lambda: cuda_attention.flash_forward(x.astype(np.float64), x, x),
             "float32 or float16"),
            (lambda: cuda_attention.flash_forward(x, x[:, :1], x), "of one shape and dtype"),
            (lambda: cuda_attention.flash_forward(x, x, x.astype(np.float16)), "one shape and"),
            (lambda: cuda_attention.flash_forward(*(np.zeros((1, 1, 3, 130), np.float32),) * 3),
             "d <= 128"),
            (lambda: cuda_attention.flash_forward(x[:, :, ::2], x[:, :, ::2], x[:, :, ::2]),
             "C-contiguous"),
            (lambda: cuda_attention.flash_forward([[1.0]], x, x), "CuPy arrays"),
            (lambda: cuda_attention.flash_backward(x, x, x, x, x, np.zeros((1, 2, 8))),
             "lse must be a CuPy array of shape (1, 2, 9)"),
        ]:
            assert words in one_line_value_error(call)
        assert not recorder.names
    finally:
        cuda_attention._use_launcher(previous)


def test_every_launched_kernel_is_in_the_instantiation_list():
    """The names the functions build, for every head size and both dtypes, are the names
    nvrtc-check and the emulator compile."""
    recorder = RecordingLauncher(sms=2)
    previous = cuda_attention._use_launcher(recorder)
    try:
        for d in (1, 32, 33, 64, 65, 128):
            for dtype in (np.float32, np.float16):
                x = np.zeros((1, 1, 3, d), dtype)
                out, lse = cuda_attention.flash_forward(x, x, x)
                cuda_attention.flash_backward(x, x, x, x, out, lse)
    finally:
        cuda_attention._use_launcher(previous)
    assert recorder.names == set(cuda_attention.all_name_expressions())


def test_the_module_imports_without_cupy_and_says_why_it_cannot_run():
    if cuda_attention.attention_kernels_available():
        pytest.skip("a GPU is here: tests/gpu covers the kernels")
    previous = cuda_attention._use_launcher(None)
    try:
        with pytest.raises(DeviceUnavailable, match="CuPy"):
            cuda_attention.flash_forward(*(np.zeros((1, 1, 2, 4), np.float32),) * 3)
    finally:
        cuda_attention._use_launcher(previous)


# ------------------------------------------------------------------ vmem bench attention


def test_bench_without_a_gpu_exits_2_with_one_line(capsys):
    from vmem.backends import cuda
    from vmem.bench.__main__ import main

    if cuda.available():
        pytest.skip("a GPU is here")
    assert main(["attention"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmem bench: error: attention needs CUDA") and "\n" not in err


@pytest.mark.parametrize("argv, words", [
    (["attention", "--shapes", "8x12x1024"], "a shape is NxHEADSxTxD"),
    (["attention", "--shapes", "1x1x4x256"], "heads of up to 128, got d = 256"),
    (["attention", "--runs", "0"], "--runs: must be a positive integer"),
])
def test_bench_usage_errors_are_one_line(capsys, argv, words):
    from vmem.bench.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_a_bench_row_on_the_emulator_agrees_with_torch(emulator):
    """One row of `vmem bench attention` with its CuPy calls on NumPy, the kernels on the
    emulator, torch's CPU SDPA and a timer that calls without timing: the row's error
    against torch is computed and within the tolerance (not FAIL)."""
    torch = pytest.importorskip("torch")
    from vmem.bench import attention as bench
    from vmem.bench.timing import Timing

    rng = np.random.default_rng(0)
    cp = numpy_as_cupy()
    cp.random = types.SimpleNamespace(  # type: ignore[attr-defined]
        standard_normal=lambda shape, dtype: rng.standard_normal(shape, dtype=dtype))
    cp.asnumpy = np.asarray  # type: ignore[attr-defined]

    class Calls:
        l2_bytes = 1 << 10

        def time(self, fn, *, warmup: int, runs: int) -> Timing:  # noqa: ANN001
            for i in range(2):
                fn(i)
            return Timing(2.0, 2.0, 2)

    row = bench._row((1, 2, 40, 32), np.float32, runs=1, warmup=1, backward=True, cp=cp,
                     ca=cuda_attention, torch=torch, timer=Calls())
    assert row[0] == "1×2×40×32" and row[1] == 2.0 and row[5] == 2.0
    assert row[2] == pytest.approx(2 * 2 * 40 * 40 * 32 / 2e9)
    err = float(row[-1])  # "1.2e-07", no " FAIL"
    assert err < bench.TOLERANCE[np.dtype(np.float32)]
