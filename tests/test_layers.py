"""Every layer family against float64 central finite differences and naive
references, plus shapes, bytes, FLOPs, errors and purity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from vmem.errors import ShapeError
from vmem.layers import (
    DIRECT,
    GELU,
    LAYER_TYPES,
    LRN,
    Add,
    Algorithm,
    Attention,
    AvgPool,
    BatchNorm,
    Concat,
    Context,
    Conv,
    Dropout,
    Embedding,
    Flatten,
    GlobalAvgPool,
    Keeps,
    Layer,
    LayerNorm,
    Linear,
    MaxPool,
    PositionEmbedding,
    ReLU,
    SoftmaxLoss,
)
from vmem.layers.conv import chunk_sizes

EPS = 1e-6
TOL = 1e-6


# ---------------------------------------------------------------- helpers

def distinct_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Values in (-2, 2), all distinct and spaced 4/numel apart, none near 0: no
    ReLU kink, max-pool tie or argmax change within a finite-difference step."""
    size = int(np.prod(shape))
    perm = np.random.default_rng(seed).permutation(size)
    return ((perm + 0.5 - size / 2) * (4.0 / size)).reshape(shape)


def make_params(layer: Layer, in_shapes: Sequence[tuple[int, ...]], seed: int = 1
                ) -> dict[str, np.ndarray]:
    """float64 parameters of the declared shapes, biases (and layernorm weights)
    non-zero and not one, a shared parameter drawn as its owner might hold it, and
    the layer's state as it starts."""
    rng = np.random.default_rng(seed)
    params = layer.init_params(in_shapes, rng)
    state = {k: v.astype(np.float64) for k, v in layer.init_state(in_shapes).items()}
    params = {k: (v.astype(np.float64) if k == "weight" and layer.TYPE != "layernorm"
                  else rng.standard_normal(v.shape)) for k, v in params.items()}
    for local, shared in layer.shared_params(in_shapes).items():
        params[local] = rng.standard_normal(shared.shape) * 0.5
    return params | state


def make_ctx(layer: Layer, in_shapes: Sequence[tuple[int, ...]], train: bool = True
             ) -> Context:
    if layer.IS_LOSS:
        labels = np.random.default_rng(9).integers(0, layer.classes(in_shapes),
                                                   layer.label_shape(in_shapes))
        return Context(train=train, seed=3, labels=labels)
    return Context(train=train, seed=3)


def run_backward(layer: Layer, xs: list[np.ndarray], params: dict[str, np.ndarray], y: Any,
                 saved: tuple, dy: Any, algo: Algorithm = DIRECT,
                 needs_dx: Sequence[bool] | None = None) -> tuple[list, dict]:
    kept_xs = [x if Keeps.INPUT in layer.KEEPS else None for x in xs]
    kept_y = y if Keeps.OUTPUT in layer.KEEPS else None
    needs = [True] * len(xs) if needs_dx is None else list(needs_dx)
    return layer.backward(np, dy, kept_xs, kept_y, params, saved, algo,
                          [x.shape for x in xs], needs)


def numeric_grad(f, arr: np.ndarray) -> np.ndarray:
    grad = np.empty_like(arr)
    flat = arr.reshape(-1)  # a view: arr is contiguous
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        up = f()
        flat[i] = old - EPS
        down = f()
        flat[i] = old
        grad.flat[i] = (up - down) / (2 * EPS)
    return grad


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    return float(np.linalg.norm(analytic - numeric) / max(np.linalg.norm(numeric), 1e-300))


def check_gradients(layer: Layer, xs: list[np.ndarray], params: dict[str, np.ndarray],
                    ctx: Context, algo: Algorithm = DIRECT) -> None:
    y, saved = layer.forward(np, xs, params, algo, ctx)
    r = None if layer.IS_LOSS else np.random.default_rng(5).standard_normal(y.shape)

    def objective() -> float:
        out, _ = layer.forward(np, xs, params, algo, ctx)
        return float(out) if layer.IS_LOSS else float(np.sum(out * r))

    dy = None if r is None else r.copy()
    dxs, grads = run_backward(layer, xs, params, y, saved, dy, algo)
    if r is not None and layer.INPLACE:  # an in-place layer writes dx over dy
        assert dxs[0] is dy
    elif r is not None:
        np.testing.assert_array_equal(dy, r)  # backward leaves dy alone
    in_shapes = [x.shape for x in xs]
    trained = layer.param_shapes(in_shapes) | layer.shared_params(in_shapes)
    assert sorted(grads) == sorted(trained)
    for i, (x, dx) in enumerate(zip(xs, dxs, strict=True)):
        assert dx.shape == x.shape and dx.dtype == x.dtype
        err = rel_error(dx, numeric_grad(objective, x))
        assert err < TOL, f"input {i}: relative error {err:.2e}"
    for name in trained:
        p, g = params[name], grads[name]
        assert g.shape == p.shape and g.dtype == p.dtype
        err = rel_error(g, numeric_grad(objective, p))
        assert err < TOL, f"param {name}: relative error {err:.2e}"


# ---------------------------------------------------------------- cases

CASES: dict[str, tuple[Layer, list[tuple[int, ...]]]] = {
    "conv_g1_s2_p1": (Conv(name="c", out_channels=3, kernel=3, stride=2, pad=1), [(2, 4, 5, 5)]),
    "conv_g2_s1_p1_nobias": (Conv(name="c", out_channels=4, kernel=3, pad=1, groups=2,
                                  bias=False), [(2, 4, 4, 4)]),
    "conv_pointwise": (Conv(name="c", out_channels=3, kernel=1), [(2, 4, 3, 2)]),
    "conv_pointwise_g2_nobias": (Conv(name="c", out_channels=4, kernel=1, groups=2,
                                      bias=False), [(3, 4, 2, 3)]),
    "conv_g2_s2_k2": (Conv(name="c", out_channels=6, kernel=2, stride=2, groups=2),
                      [(1, 4, 5, 5)]),
    "maxpool_k3_s2": (MaxPool(name="p", kernel=3, stride=2), [(2, 2, 7, 7)]),
    "maxpool_k3_s2_ceil": (MaxPool(name="p", kernel=3, stride=2, ceil_mode=True),
                           [(2, 2, 6, 6)]),
    "maxpool_k3_s2_p1": (MaxPool(name="p", kernel=3, stride=2, pad=1), [(2, 2, 6, 6)]),
    "maxpool_k3_s2_p1_ceil": (MaxPool(name="p", kernel=3, stride=2, pad=1, ceil_mode=True),
                              [(2, 2, 6, 5)]),
    "maxpool_k2": (MaxPool(name="p", kernel=2), [(1, 2, 4, 5)]),
    "avgpool_k3_s2": (AvgPool(name="p", kernel=3, stride=2), [(2, 2, 7, 7)]),
    "avgpool_k3_s2_ceil": (AvgPool(name="p", kernel=3, stride=2, ceil_mode=True),
                           [(2, 2, 6, 6)]),
    "avgpool_k3_s2_p1": (AvgPool(name="p", kernel=3, stride=2, pad=1), [(2, 2, 6, 6)]),
    "avgpool_k3_s2_p1_ceil": (AvgPool(name="p", kernel=3, stride=2, pad=1, ceil_mode=True),
                              [(2, 2, 6, 5)]),
    "avgpool_k2": (AvgPool(name="p", kernel=2), [(1, 2, 4, 5)]),
    "relu": (ReLU(name="r"), [(2, 3, 4)]),
    "lrn_default": (LRN(name="n"), [(2, 6, 3, 3)]),
    "lrn_even_strong": (LRN(name="n", size=4, alpha=0.5, beta=0.75, k=1.0), [(2, 7, 2, 3)]),
    "lrn_rank2": (LRN(name="n", size=3, alpha=2.0, beta=0.5, k=1.5), [(3, 5)]),
    "linear_2d": (Linear(name="fc", out_features=4), [(3, 5)]),
    "linear_4d_nobias": (Linear(name="fc", out_features=3, bias=False), [(2, 3, 2, 2)]),
    "linear_sequence": (Linear(name="fc", out_features=4), [(2, 3, 5)]),
    "linear_tied_head": (Linear(name="head", out_features=6, bias=False, tied_to="wte"),
                         [(2, 3, 4)]),
    "dropout_train": (Dropout(name="drop", p=0.3), [(3, 4, 2, 2)]),
    "dropout_sequence": (Dropout(name="drop", p=0.1), [(2, 5, 3)]),
    "softmax_loss": (SoftmaxLoss(name="loss"), [(4, 5)]),
    "softmax_loss_4d": (SoftmaxLoss(name="loss"), [(3, 6, 1, 1)]),
    "softmax_loss_tokens": (SoftmaxLoss(name="loss"), [(2, 3, 7)]),
    "layernorm": (LayerNorm(name="ln"), [(2, 3, 5)]),
    "layernorm_2d_eps": (LayerNorm(name="ln", eps=0.5), [(3, 4)]),
    "gelu": (GELU(name="gelu"), [(2, 3, 4)]),
    "attention_2_heads": (Attention(name="attn", heads=2), [(2, 4, 12)]),
    "attention_1_head": (Attention(name="attn", heads=1), [(1, 5, 9)]),
    # flash alone, in tiles of 2 keys: three tiles, the last one short
    "attention_flash": (Attention(name="attn", heads=2, algorithm="flash", tile=2),
                        [(2, 5, 12)]),
    "position_embedding": (PositionEmbedding(name="wpe"), [(2, 3, 4)]),
    "concat_3": (Concat(name="cat"), [(2, 1, 3, 3), (2, 3, 3, 3), (2, 2, 3, 3)]),
    "concat_last_axis": (Concat(name="cat", axis=-1), [(2, 3, 2), (2, 3, 4)]),
    "add_2": (Add(name="sum"), [(2, 3, 4, 4), (2, 3, 4, 4)]),
    "add_3": (Add(name="sum"), [(2, 5), (2, 5), (2, 5)]),
    "flatten": (Flatten(name="flat"), [(2, 3, 2, 2)]),
    "batchnorm_4d": (BatchNorm(name="bn"), [(3, 4, 2, 3)]),
    "batchnorm_2d_eps": (BatchNorm(name="bn", eps=0.5, momentum=0.3), [(5, 3)]),
    "global_avgpool": (GlobalAvgPool(name="gap"), [(2, 3, 3, 4)]),
}


def case_inputs(in_shapes: Sequence[tuple[int, ...]], dtype: Any = np.float64
                ) -> list[np.ndarray]:
    return [distinct_input(s, seed=10 + i).astype(dtype) for i, s in enumerate(in_shapes)]


def test_every_type_is_registered_and_covered():
    assert set(LAYER_TYPES) == {"conv", "maxpool", "avgpool", "global_avgpool", "relu", "lrn",
                                "batchnorm", "linear", "dropout", "softmax_loss", "concat",
                                "add", "flatten", "embedding", "position_embedding",
                                "layernorm", "gelu", "attention"}
    # the embedding, whose input is token ids, has tests of its own
    assert {layer.TYPE for layer, _ in CASES.values()} == set(LAYER_TYPES) - {"embedding"}
    for type_name, cls in LAYER_TYPES.items():
        assert type_name == cls.TYPE


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_match_finite_differences(case):
    layer, in_shapes = CASES[case]
    xs = case_inputs(in_shapes)
    check_gradients(layer, xs, make_params(layer, in_shapes), make_ctx(layer, in_shapes))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shapes_bytes_dtype_and_purity(case, dtype):
    layer, in_shapes = CASES[case]
    xs = case_inputs(in_shapes, dtype)
    originals = [x.copy() for x in xs]
    params = {k: v.astype(dtype) for k, v in make_params(layer, in_shapes).items()}
    shared = {k: use.shape for k, use in layer.shared_params(in_shapes).items()}
    assert ({k: v.shape for k, v in params.items()}
            == layer.param_shapes(in_shapes) | layer.state_shapes(in_shapes) | shared)
    itemsize = np.dtype(dtype).itemsize
    for algo in layer.algorithms(in_shapes, itemsize):
        y, saved = layer.forward(np, xs, params, algo, make_ctx(layer, in_shapes))
        assert y.shape == layer.output_shape(in_shapes)
        assert y.dtype == dtype
        assert sum(a.nbytes for a in saved) == layer.saved_bytes(in_shapes, itemsize, algo)
        assert all(a.dtype == dtype for a in saved)
        for x, orig in zip(xs, originals, strict=True):
            np.testing.assert_array_equal(x, orig)  # forward leaves its inputs alone
        y_copy = y.copy()
        dy = None if layer.IS_LOSS else np.ones_like(y)
        dxs, grads = run_backward(layer, xs, params, y, saved, dy, algo)
        for x, orig in zip(xs, originals, strict=True):
            np.testing.assert_array_equal(x, orig)  # so does backward
        np.testing.assert_array_equal(y, y_copy)
        assert all(dx.dtype == dtype and dx.shape == x.shape for dx, x in zip(dxs, xs,
                                                                              strict=True))
        assert all(g.dtype == dtype for g in grads.values())
        # every dx is its own buffer, but an in-place layer's, which is dy's
        written_over_dy = dy is not None and layer.INPLACE
        if written_over_dy:
            assert dxs[0] is dy
        buffers = ([dx for dx in dxs] + ([] if dy is None or written_over_dy else [dy])
                   + list(xs) + list(saved))
        for i, a in enumerate(dxs):
            assert not any(np.shares_memory(a, b) for b in buffers[:i] + buffers[i + 1:])
    # eval mode saves nothing
    _, saved = layer.forward(np, xs, params, DIRECT, make_ctx(layer, in_shapes, train=False))
    assert saved == ()


@pytest.mark.parametrize("case", sorted(CASES))
def test_needs_dx_false_gives_none(case):
    layer, in_shapes = CASES[case]
    xs = case_inputs(in_shapes)
    params = make_params(layer, in_shapes)
    y, saved = layer.forward(np, xs, params, DIRECT, make_ctx(layer, in_shapes))
    dy = None if layer.IS_LOSS else np.ones_like(y)
    dxs, grads = run_backward(layer, xs, params, y, saved, dy, needs_dx=[False] * len(xs))
    assert dxs == [None] * len(xs)
    _, full = run_backward(layer, xs, params, y, saved, dy)
    for k in full:
        np.testing.assert_array_equal(grads[k], full[k])


def test_concat_partial_needs_dx():
    layer, in_shapes = CASES["concat_3"]
    xs = case_inputs(in_shapes)
    y, _ = layer.forward(np, xs, {}, DIRECT, Context())
    dxs, _ = run_backward(layer, xs, {}, y, (), y, needs_dx=[False, True, False])
    assert dxs[0] is None and dxs[2] is None
    np.testing.assert_array_equal(dxs[1], xs[1])
    assert dxs[1].flags.c_contiguous


# ---------------------------------------------------------------- convolution

def naive_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int,
               groups: int) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    og = o // groups
    y = np.zeros((n, o, ho, wo))
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = xp_[:, g * cg:(g + 1) * cg, i * stride:i * stride + k,
                            j * stride:j * stride + k]
                y[:, oc, i, j] = np.sum(patch * w[oc], axis=(1, 2, 3))
        if b is not None:
            y[:, oc] += b[oc]
    return y


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.startswith("conv")])
def test_conv_forward_matches_naive(case):
    layer, in_shapes = CASES[case]
    (x,) = case_inputs(in_shapes)
    params = make_params(layer, in_shapes)
    y, _ = layer.forward(np, [x], params, DIRECT, Context())
    expected = naive_conv(x, params["weight"], params.get("bias"), layer.stride, layer.pad,
                          layer.groups)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_chunk_sizes():
    assert chunk_sizes(1) == [1]
    assert chunk_sizes(2) == [2, 1]
    assert chunk_sizes(5) == [5, 4, 2, 1]
    assert chunk_sizes(8) == [8, 4, 2, 1]
    assert chunk_sizes(9) == [9, 8, 4, 2, 1]


def test_conv_algorithms_and_workspace():
    layer = Conv(name="c", out_channels=6, kernel=3, pad=1, groups=2)
    shapes = [(6, 4, 5, 5)]
    algos = layer.algorithms(shapes, 4)
    assert [a.name for a in algos] == ["im2col:6", "im2col:4", "im2col:2", "im2col:1"]
    assert [a.chunk for a in algos] == [6, 4, 2, 1]
    dw_temp = 6 * 2 * 3 * 3 * 4
    for a in algos:
        assert a.workspace_bytes == a.chunk * 4 * 9 * 25 * 4 + dw_temp
    (single,) = layer.algorithms([(1, 4, 5, 5)], 8)
    assert single == Algorithm("im2col:1", 4 * 9 * 25 * 8, 1)  # one sample: no dW temp
    # 1x1, stride 1, no padding: the input serves as the columns, no buffer, one algorithm
    pointwise = Conv(name="p", out_channels=6, kernel=1, groups=2)
    assert pointwise.pointwise and not Conv(name="q", out_channels=6, kernel=1, stride=2).pointwise
    assert pointwise.algorithms(shapes, 4) == (Algorithm("gemm", 6 * 2 * 4),)  # the dW temp
    assert pointwise.algorithms([(1, 4, 5, 5)], 4) == (Algorithm("gemm", 0),)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_every_chunk_equals_whole_batch(groups, dtype):
    layer = Conv(name="c", out_channels=4, kernel=3, stride=2, pad=1, groups=groups)
    in_shapes = [(5, 4, 7, 6)]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(in_shapes[0]).astype(dtype)
    params = {k: rng.standard_normal(v.shape).astype(dtype)
              for k, v in make_params(layer, in_shapes).items()}
    algos = layer.algorithms(in_shapes, np.dtype(dtype).itemsize)
    assert algos[0].chunk == 5 and [a.chunk for a in algos[1:]] == [4, 2, 1]
    y_ref, _ = layer.forward(np, [x], params, algos[0], Context())
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    (dx_ref,), g_ref = layer.backward(np, dy, [x], None, params, (), algos[0], in_shapes,
                                      [True])
    for algo in [*algos[1:], DIRECT]:
        y, _ = layer.forward(np, [x], params, algo, Context())
        (dx,), g = layer.backward(np, dy, [x], None, params, (), algo, in_shapes, [True])
        # bit-identical: per-sample GEMMs and dW accumulated in sample order
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(dx, dx_ref)
        for k in g_ref:
            np.testing.assert_array_equal(g[k], g_ref[k])


def test_conv_chunked_gradients_match_finite_differences():
    layer = Conv(name="c", out_channels=2, kernel=3, stride=2, pad=1, groups=2)
    in_shapes = [(3, 2, 5, 5)]
    algo = layer.algorithms(in_shapes, 8)[1]
    assert algo.chunk == 2  # 3 samples: a full chunk and a partial one
    check_gradients(layer, case_inputs(in_shapes), make_params(layer, in_shapes), Context(),
                    algo)


def test_conv_and_linear_flops():
    conv1 = Conv(name="conv1", out_channels=96, kernel=11, stride=4)  # AlexNet
    assert conv1.output_shape([(1, 3, 227, 227)]) == (1, 96, 55, 55)
    assert conv1.flops([(1, 3, 227, 227)]) == 2 * 96 * 55 * 55 * 3 * 11 * 11 + 96 * 55 * 55
    assert conv1.flops([(1, 3, 227, 227)]) == 211_120_800
    conv2 = Conv(name="conv2", out_channels=256, kernel=5, pad=2, groups=2)
    assert conv2.flops([(1, 96, 27, 27)]) == 448_084_224
    assert Conv(name="c", out_channels=8, kernel=1, bias=False).flops([(2, 4, 3, 3)]) == (
        2 * 2 * 8 * 9 * 4)
    fc6 = Linear(name="fc6", out_features=4096)
    assert fc6.flops([(2, 256, 6, 6)]) == 151_003_136
    assert Linear(name="fc", out_features=10, bias=False).flops([(4, 20)]) == 2 * 4 * 20 * 10


@pytest.mark.parametrize(("init", "std_of"), [
    ("kaiming_fan_out", lambda fan_in, fan_out: np.sqrt(2 / fan_out)),
    ("kaiming_fan_in", lambda fan_in, fan_out: np.sqrt(2 / fan_in)),
    ("normal", lambda fan_in, fan_out: 0.02),
    ("uniform_fan_in", lambda fan_in, fan_out: 1 / np.sqrt(3 * fan_in)),
])
def test_init_schemes_draw_the_stated_spread(init: str, std_of: Any) -> None:
    """Each scheme's standard deviation by its formula (torch's fans: fan_in =
    C/groups*k*k, fan_out = O*k*k); zero biases but PyTorch's default, whose bias is
    uniform too; the same seed, the same bits."""
    conv = Conv(name="c", out_channels=64, kernel=3, groups=2, init=init, init_std=0.02)
    p = conv.init_params([(1, 32, 8, 8)], np.random.default_rng(0))
    assert p["weight"].shape == (64, 16, 3, 3) and p["weight"].dtype == np.float32
    assert p["weight"].std() == pytest.approx(std_of(16 * 9, 64 * 9), rel=0.05)
    assert p["weight"].mean() == pytest.approx(0, abs=0.05 * std_of(16 * 9, 64 * 9))
    assert p["bias"].dtype == np.float32
    if init == "uniform_fan_in":
        assert np.abs(p["bias"]).max() <= 1 / np.sqrt(16 * 9) and p["bias"].any()
    else:
        assert not p["bias"].any()
    again = conv.init_params([(1, 32, 8, 8)], np.random.default_rng(0))
    np.testing.assert_array_equal(p["weight"], again["weight"])
    fc = Linear(name="fc", out_features=300, bias=False, init=init, init_std=0.02)
    q = fc.init_params([(1, 50, 2, 2)], np.random.default_rng(1))
    assert list(q) == ["weight"] and q["weight"].shape == (300, 200)
    assert q["weight"].std() == pytest.approx(std_of(200, 300), rel=0.05)


def test_init_defaults_and_bad_values() -> None:
    assert Conv(name="c", out_channels=2, kernel=1).init == "kaiming_fan_out"
    assert Linear(name="fc", out_features=2).init == "uniform_fan_in"
    with pytest.raises(ValueError, match="init must be one of kaiming_fan_out"):
        Conv(name="c", out_channels=2, kernel=1, init="xavier")
    with pytest.raises(ValueError, match="init_std must be a positive number"):
        Linear(name="fc", out_features=2, init="normal", init_std=0.0)


# ---------------------------------------------------------------- pooling, LRN references

def naive_pool(x: np.ndarray, layer: MaxPool | AvgPool) -> np.ndarray:
    """PyTorch semantics: -inf padding for max; count_include_pad with windows
    clipped at the padded edge for average."""
    n, c, h, w = x.shape
    k, s, p = layer.kernel, layer.step, layer.pad
    _, _, ho, wo = layer.output_shape([x.shape])
    y = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - p, j * s - p
            r1, c1 = min(r0 + k, h + p), min(c0 + k, w + p)
            window = x[:, :, max(r0, 0):min(r1, h), max(c0, 0):min(c1, w)]
            if isinstance(layer, MaxPool):
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / ((r1 - r0) * (c1 - c0))
    return y


@pytest.mark.parametrize("case", [c for c in sorted(CASES)
                                  if isinstance(CASES[c][0], MaxPool | AvgPool)])
def test_pool_forward_matches_naive(case):
    layer, in_shapes = CASES[case]
    x = np.random.default_rng(4).standard_normal(in_shapes[0])
    y, _ = layer.forward(np, [x], {}, DIRECT, Context())
    np.testing.assert_allclose(y, naive_pool(x, layer), rtol=1e-13, atol=1e-13)


def test_avgpool_ceil_divides_by_clipped_area():
    layer = AvgPool(name="p", kernel=3, stride=2, pad=1, ceil_mode=True)
    x = np.ones((1, 1, 4, 4))
    y, _ = layer.forward(np, [x], {}, DIRECT, Context())
    # rows/cols: window 0 covers pad + 2 inputs (area 3), window 1 covers 3 inputs,
    # window 2 covers 1 input + right pad, clipped past the padded edge (area 2)
    np.testing.assert_allclose(y[0, 0], np.outer([2, 3, 1], [2, 3, 1]) /
                               np.outer([3, 3, 2], [3, 3, 2]))


@pytest.mark.parametrize("planes", [1, 3])  # one plane a task; three, a short last
def test_maxpool_backward_in_groups_of_planes(monkeypatch: pytest.MonkeyPatch,
                                              planes: int) -> None:
    """Grouping the planes to bound a task's scratch changes no bit of dx (ties
    included): against the reference routing by slices of the whole batch."""
    from vmem.kernels import pooling

    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (5, 2, 6, 6)).astype(np.float32)  # many tied maxima
    dy = rng.standard_normal((5, 2, 3, 3)).astype(np.float32)
    whole = np.empty_like(x)
    pooling._route_reference(np, x, dy, whole, 3, 2, 1)
    grid = pooling.PaddedGrid.of((6, 6), 3, 2, 1, (3, 3))
    for name in ("MAX_POOL_TASK_BYTES", "MAX_POOL_THREADED_TASK_BYTES"):
        monkeypatch.setattr(pooling, name, planes * grid.backward_bytes(4, 4))
    np.testing.assert_array_equal(pooling.max_pool_backward(np, x, dy, 3, 2, 1, False), whole)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scratch", [1, 2 * 7680 * 5])  # one sample a group; two (7,680 B each)
def test_lrn_in_groups_of_samples(monkeypatch: pytest.MonkeyPatch, scratch: int,
                                  threads: int) -> None:
    """Grouping the samples to bound the scratch changes no bit of y or dx, and a
    pass allocates at most its bound beyond its output (tracemalloc), whatever the
    threads running groups at once."""
    import tracemalloc

    from vmem.kernels import lrn
    from vmem.kernels import threads as threads_module
    from vmem.kernels.threads import ranges, using_threads

    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 6, 20, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    args = (5, 1e-2, 0.75, 2.0)
    with using_threads(1):
        y_whole, dx_whole = lrn.lrn_forward(np, x, *args), lrn.lrn_backward(np, x, dy, *args)
    monkeypatch.setattr(lrn, "LRN_SCRATCH_BYTES", scratch)
    monkeypatch.setattr(threads_module, "TASK_ELEMENTS", 1)  # small samples: still cut
    with using_threads(threads):
        groups = ranges(np, 5, lrn.scratch_per_sample(x), lrn.LRN_SCRATCH_BYTES)
        largest = max(hi - lo for lo, hi in groups)
        # two threads: a quarter of the samples each at most (TASKS_PER_THREAD), so one
        assert largest == (1 if scratch == 1 or threads == 2 else 2), groups
        lrn.lrn_forward(np, x, *args)  # the threads' pool is made outside the count
        tracemalloc.start()
        try:
            y = lrn.lrn_forward(np, x, *args)
            dx = lrn.lrn_backward(np, x, dy, *args)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(y, y_whole)
    np.testing.assert_array_equal(dx, dx_whole)
    group_bytes = largest * x[:1].nbytes
    # y and dx (x.nbytes each) plus temporaries of one group per thread, not of the batch
    # (a third of theirs), and Python's own objects: the tasks, a late helper's frames
    assert peak < 2 * x.nbytes + threads * lrn.SCRATCH_ARRAYS * group_bytes + 16384, peak


def test_maxpool_first_maximum_wins():
    layer = MaxPool(name="p", kernel=2, stride=1)
    x = np.zeros((1, 1, 3, 3))
    y, saved = layer.forward(np, [x], {}, DIRECT, Context())
    (dx,), _ = layer.backward(np, np.ones_like(y), [x], None, {}, saved, DIRECT, [x.shape],
                              [True])
    # each of the 4 windows sends its gradient to its top-left element
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def naive_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    c = x.shape[1]
    y = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)
        s = np.sum(x[:, lo:hi] ** 2, axis=1)
        y[:, ch] = x[:, ch] / (k + alpha / size * s) ** beta
    return y


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if c.startswith("lrn")])
def test_lrn_forward_matches_naive(case):
    layer, in_shapes = CASES[case]
    x = np.random.default_rng(4).standard_normal(in_shapes[0]) * 3
    y, _ = layer.forward(np, [x], {}, DIRECT, Context())
    expected = naive_lrn(x, layer.size, layer.alpha, layer.beta, layer.k)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)


def test_linear_forward_and_dx_shape():
    layer = Linear(name="fc", out_features=3)
    x = np.random.default_rng(0).standard_normal((2, 2, 2, 2))
    params = make_params(layer, [x.shape])
    y, _ = layer.forward(np, [x], params, DIRECT, Context())
    np.testing.assert_allclose(y, x.reshape(2, 8) @ params["weight"].T + params["bias"])
    (dx,), _ = layer.backward(np, np.ones_like(y), [x], None, params, (), DIRECT, [x.shape],
                              [True])
    assert dx.shape == x.shape


# ---------------------------------------------------------------- dropout

def test_dropout_masks_are_deterministic():
    layer = Dropout(name="drop6", p=0.5)
    x = np.ones((8, 64), dtype=np.float32)

    def mask(seed: int, name: str = "drop6") -> np.ndarray:
        y, (m,) = Dropout(name=name, p=0.5).forward(np, [x], {}, DIRECT,
                                                    Context(seed=seed))
        np.testing.assert_array_equal(y, x * m)
        return m

    m = mask(11)
    assert m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, 2.0}  # stored already scaled by 1 / (1 - p)
    assert 0.3 < (m == 0).mean() < 0.7
    np.testing.assert_array_equal(mask(11), m)
    assert not np.array_equal(mask(12), m)
    assert not np.array_equal(mask(11, "drop7"), m)
    # float32 and float64 runs drop the same elements
    _, (m64,) = layer.forward(np, [x.astype(np.float64)], {}, DIRECT, Context(seed=11))
    np.testing.assert_array_equal(m64 == 0, m == 0)


def test_dropout_eval_is_identity():
    x = np.random.default_rng(0).standard_normal((4, 5))
    y, saved = Dropout(name="d", p=0.5).forward(np, [x], {}, DIRECT, Context(train=False))
    assert y is x and saved == ()


def test_dropout_p_zero_keeps_everything():
    x = np.random.default_rng(0).standard_normal((4, 5))
    y, (m,) = Dropout(name="d", p=0.0).forward(np, [x], {}, DIRECT, Context())
    np.testing.assert_array_equal(y, x)
    assert np.all(m == 1)


@pytest.mark.parametrize("layer", [ReLU(name="r"), Dropout(name="d", p=0.5)])
def test_inplace_forward_writes_over_its_input(layer: Layer) -> None:
    """With ctx.inplace the output is the input's buffer (the one block the arena
    counts), with the values a separate output gets."""
    x = np.random.default_rng(1).standard_normal((3, 4, 5))
    expected, saved = layer.forward(np, [x.copy()], {}, DIRECT, Context(seed=4))
    y, saved_inplace = layer.forward(np, [x], {}, DIRECT, Context(seed=4, inplace=True))
    assert y is x
    np.testing.assert_array_equal(y, expected)
    for a, b in zip(saved, saved_inplace, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("contiguous", [True, False])
def test_relu_backward_in_bounded_passes(monkeypatch: pytest.MonkeyPatch,
                                         contiguous: bool) -> None:
    """Pass by pass (7 elements a pass, so passes end mid-row and the last is short)
    the gradient equals np.where(y > 0, dy, 0), NaN in y giving 0, written over dy."""
    import vmem.layers.activation as activation

    monkeypatch.setattr(activation, "RELU_MASK_ELEMENTS", 7)
    rng = np.random.default_rng(2)
    y = np.maximum(rng.standard_normal((3, 4, 5)), 0)
    y[0, 0, :2] = np.nan
    dy = rng.standard_normal((3, 4, 5))
    if not contiguous:
        y, dy = y.transpose(2, 1, 0), dy.transpose(2, 1, 0)
    expected = np.where(y > 0, dy, 0)
    dx = activation.relu_backward_into(np, dy, y)
    assert dx is dy
    np.testing.assert_array_equal(dx, expected)


# ---------------------------------------------------------------- softmax loss

def test_softmax_loss_value_and_gradient():
    layer = SoftmaxLoss(name="loss")
    logits = np.random.default_rng(0).standard_normal((4, 3)) * 5
    labels = np.array([0, 2, 1, 2])
    loss, (grad,) = layer.forward(np, [logits], {}, DIRECT, Context(labels=labels))
    assert loss.shape == ()
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert float(loss) == pytest.approx(-logp[np.arange(4), labels].mean(), rel=1e-12)
    (dx,), _ = layer.backward(np, None, [None], None, {}, (grad,), DIRECT, [logits.shape],
                              [True])
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(dx, (np.exp(logp) - onehot) / 4, rtol=1e-12, atol=1e-15)
    eval_loss, saved = layer.forward(np, [logits], {}, DIRECT,
                                     Context(train=False, labels=labels))
    assert saved == () and float(eval_loss) == float(loss)


def test_softmax_loss_label_errors():
    layer = SoftmaxLoss(name="loss")
    logits = np.zeros((2, 3))
    with pytest.raises(ValueError, match="labels"):
        layer.forward(np, [logits], {}, DIRECT, Context(labels=None))
    with pytest.raises(ShapeError, match=r"layer 'loss' \(softmax_loss\)"):
        layer.forward(np, [logits], {}, DIRECT, Context(labels=np.array([0, 1, 2])))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        layer.forward(np, [logits], {}, DIRECT, Context(labels=np.array([0, 3])))


# ---------------------------------------------------------------- errors

SHAPE_ERRORS = [
    (Conv(name="conv1", out_channels=4, kernel=5), [(1, 3, 3, 3)], r"kernel 5 .*\(1, 3, 3, 3\)"),
    (Conv(name="conv1", out_channels=4, kernel=3, groups=2), [(1, 3, 5, 5)], "divisible"),
    (Conv(name="conv1", out_channels=4, kernel=3), [(1, 3, 5)], r"NCHW.*\(1, 3, 5\)"),
    (Conv(name="conv1", out_channels=4, kernel=3), [(1, 3, 5, 5)] * 2, "1 input"),
    (Conv(name="conv1", out_channels=4, kernel=1), [(0, 3, 5, 5)], "non-positive"),
    (MaxPool(name="pool1", kernel=4), [(1, 3, 3, 3)], "kernel 4"),
    (AvgPool(name="pool1", kernel=3, pad=1), [(1, 3, 5)], "NCHW"),
    (Linear(name="fc6", out_features=4), [(5,)], r"rank >= 2.*\(5,\)"),
    (Concat(name="cat"), [(1, 2, 3, 3), (1, 2, 4, 4)], r"\(1, 2, 3, 3\), \(1, 2, 4, 4\)"),
    (Concat(name="cat"), [(1, 2, 3, 3)], "two or more"),
    (Concat(name="cat"), [(1, 2, 3, 3), (1, 2, 3)], "ranks"),
    (Concat(name="cat", axis=4), [(1, 2, 3, 3), (1, 2, 3, 3)], "axis 4"),
    (Add(name="res"), [(1, 2, 3, 3), (1, 2, 3, 4)], r"\(1, 2, 3, 3\), \(1, 2, 3, 4\)"),
    (SoftmaxLoss(name="loss"), [(2, 3, 4, 5)], r"\(2, 3, 4, 5\)"),
    (Flatten(name="flat"), [(6,)], "rank >= 2"),
    (Embedding(name="wte", vocab=8, features=4), [(2, 3, 4)], r"token ids \(N, T\).*\(2, 3, 4\)"),
    (PositionEmbedding(name="wpe"), [(2, 3)], r"\(N, T, C\).*\(2, 3\)"),
    (Attention(name="attn", heads=2), [(2, 3, 8)], r"\(N, T, 3C\).*\(2, 3, 8\)"),
    (Attention(name="attn", heads=4), [(2, 3, 18)], "C = 6 does not split into 4 heads"),
    (LayerNorm(name="ln"), [(5,)], r"rank >= 2.*\(5,\)"),
]


@pytest.mark.parametrize(("layer", "in_shapes", "pattern"), SHAPE_ERRORS,
                         ids=[f"{e[0].TYPE}-{i}" for i, e in enumerate(SHAPE_ERRORS)])
def test_shape_errors_name_layer_and_shapes(layer, in_shapes, pattern):
    with pytest.raises(ShapeError, match=rf"^layer '{layer.name}' \({layer.TYPE}\): "
                                         rf".*{pattern}"):
        layer.output_shape(in_shapes)


@pytest.mark.parametrize(("cls", "config"), [
    (Conv, {"out_channels": 4, "kernel": 3, "stride": 0}),
    (Conv, {"out_channels": 5, "kernel": 3, "groups": 2}),
    (Conv, {"out_channels": 4, "kernel": 2.5}),
    (MaxPool, {"kernel": 3, "pad": 2}),
    (AvgPool, {"kernel": 2, "stride": 0}),
    (Dropout, {"p": 1.0}),
    (Dropout, {"p": -0.1}),
    (Concat, {"axis": 0}),
    (Linear, {"out_features": 0}),
    (LRN, {"size": 0}),
    (Embedding, {"vocab": 0, "features": 4}),
    (Embedding, {"vocab": 8, "features": 2.0}),
    (Attention, {"heads": 0}),
    (Attention, {"heads": 2, "tile": 0}),
    (Attention, {"heads": 2, "algorithm": "fast"}),
    (LayerNorm, {"eps": 0.0}),
    (Linear, {"out_features": 4, "tied_to": 3}),
])
def test_bad_configuration_raises_value_error(cls, config):
    with pytest.raises(ValueError, match=rf"^layer 'x' \({cls.TYPE}\): "):
        cls(name="x", **config)


def test_layers_are_frozen_and_keyword_only():
    layer = Conv(name="c", out_channels=4, kernel=3)
    with pytest.raises(AttributeError):
        layer.kernel = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Conv("c", 4, 3)  # type: ignore[misc]
    assert hash(layer) == hash(Conv(name="c", out_channels=4, kernel=3))


# ---------------------------------------------------------------- sizes past int64

def test_numel_is_exact_past_int64():
    """numel multiplies Python integers: a NumPy int64 product of (2**32, 2**32)
    wraps around to 0, and (3**40, 3**40) to a wrong, possibly negative, number."""
    from vmem.layers.base import numel

    assert numel((2**32, 2**32)) == 2**64
    assert numel((3**40, 3**40)) == 3**80
    assert numel((np.int64(2**40), np.int32(2**30))) == 2**70  # NumPy dims too
    assert type(numel((np.int64(3), 4))) is int
    assert numel(()) == 1 and numel((5, 0, 7)) == 0


def test_shapes_flops_and_bytes_past_int64_are_exact():
    huge = (2, 2**32, 2**32, 1)  # 2**64 features per sample, 2**65 in all
    assert Flatten(name="f").output_shape([huge]) == (2, 2**64)
    fc = Linear(name="fc", out_features=3)
    assert fc.param_shapes([huge])["weight"] == (3, 2**64)
    assert fc.flops([huge]) == 2 * 2 * 2**64 * 3 + 2 * 3  # 2 * N * in * out, plus bias
    assert ReLU(name="r").flops([huge]) == 2**65
    assert Dropout(name="d", p=0.5).saved_bytes([huge], 4) == 2**67
