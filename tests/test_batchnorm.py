"""BatchNorm and global average pooling against PyTorch's CPU build (training and
evaluation, running statistics included) and NumPy float64 references; the
running statistics as device state: counted by the arena, in `state_dict`,
restored exactly, used by `evaluate`, moved once a step even where the planner
computes a BN output again. (Finite differences: tests/test_layers.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from networks import recomputing
from test_budget import assert_same_training, train_plan

import vmem
from vmem.layers import DIRECT, BatchNorm, Context, GlobalAvgPool
from vmem.memory import MemoryKind
from vmem.plan import recomputed_tensors
from vmem.policies.vdnn import build_plan, offload_nothing


def batches(shape: tuple[int, ...], count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * 3 + 1.5).astype(np.float32) for _ in range(count)]


def bn_params(channels: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layer = BatchNorm(name="bn")
    state = layer.init_state([(1, channels, 1, 1)])
    return {"weight": rng.uniform(0.5, 1.5, channels).astype(np.float32),
            "bias": rng.standard_normal(channels).astype(np.float32)} | state


def numpy_bn(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
             var: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """The formula in float64, per channel on axis 1."""
    shape = (1, -1, 1, 1)
    x = x.astype(np.float64)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(shape)
            + bias.reshape(shape))


def test_training_and_evaluation_match_the_formula_in_float64() -> None:
    layer = BatchNorm(name="bn")
    params = bn_params(3)
    x64 = batches((4, 3, 5, 6), 1)[0].astype(np.float64)
    params64 = {k: v.astype(np.float64) for k, v in params.items()}
    y, saved = layer.forward(np, [x64], params64, DIRECT, Context(train=True))
    mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y, numpy_bn(x64, params["weight"], params["bias"], mean, var),
                               rtol=1e-12, atol=1e-12)
    assert saved == ()
    n = 4 * 5 * 6
    np.testing.assert_allclose(params64["running_mean"], 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(params64["running_var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-12)
    y_eval, _ = layer.forward(np, [x64], params64, DIRECT, Context(train=False))
    np.testing.assert_allclose(y_eval, numpy_bn(x64, params["weight"], params["bias"],
                                                params64["running_mean"],
                                                params64["running_var"]), rtol=1e-12, atol=1e-12)


def test_a_forward_pass_without_update_state_leaves_the_statistics_and_gives_the_same_bits(
) -> None:
    layer = BatchNorm(name="bn")
    params = bn_params(3)
    x = batches((4, 3, 5, 6), 1)[0]
    first, _ = layer.forward(np, [x], params, DIRECT, Context())
    after = {k: params[k].copy() for k in ("running_mean", "running_var")}
    again, _ = layer.forward(np, [x], params, DIRECT, Context(update_state=False))
    np.testing.assert_array_equal(again, first)
    for name, value in after.items():
        np.testing.assert_array_equal(params[name], value)


def test_batchnorm_matches_torch_in_training_and_evaluation() -> None:
    torch = pytest.importorskip("torch")
    channels, shape = 5, (6, 5, 7, 4)
    layer = BatchNorm(name="bn", momentum=0.2, eps=1e-3)
    params = bn_params(channels)
    reference = torch.nn.BatchNorm2d(channels, eps=1e-3, momentum=0.2)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(params["weight"]))
        reference.bias.copy_(torch.from_numpy(params["bias"]))
    reference.train()
    for x in batches(shape, 3):
        y, _ = layer.forward(np, [x], params, DIRECT, Context(train=True))
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = reference(xt)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
        dy = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
        yt.backward(torch.from_numpy(dy))
        (dx,), grads = layer.backward(np, dy, [x], None, params, (), DIRECT, [shape], [True])
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grads["weight"], reference.weight.grad.numpy(), rtol=1e-4)
        np.testing.assert_allclose(grads["bias"], reference.bias.grad.numpy(), rtol=1e-5)
        reference.weight.grad = reference.bias.grad = None
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(params[name], getattr(reference, name).numpy(),
                                       rtol=1e-6, atol=1e-6)
    reference.eval()
    x = batches(shape, 1, seed=3)[0]
    y, saved = layer.forward(np, [x], params, DIRECT, Context(train=False))
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    assert saved == ()


def test_global_average_pooling_matches_torch_and_a_full_window_average() -> None:
    layer = GlobalAvgPool(name="gap")
    x = batches((2, 3, 7, 5), 1)[0].astype(np.float64)
    y, _ = layer.forward(np, [x], {}, DIRECT, Context())
    assert y.shape == (2, 3, 1, 1) == layer.output_shape([x.shape])
    np.testing.assert_allclose(y[:, :, 0, 0], x.sum(axis=(2, 3)) / 35, rtol=1e-14)
    square = vmem.layers.AvgPool(name="p", kernel=5)
    x5 = x[:, :, :5, :]
    np.testing.assert_allclose(layer.forward(np, [x5], {}, DIRECT, Context())[0],
                               square.forward(np, [x5], {}, DIRECT, Context())[0], rtol=1e-14)
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.nn.AdaptiveAvgPool2d(1)(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    yt.backward(torch.from_numpy(dy))
    (dx,), _ = layer.backward(np, dy, [None], None, {}, (), DIRECT, [x.shape], [True])
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- in a network

def bn_network() -> vmem.Network:
    """conv -> bn -> maxpool (which keeps its input: the BN output is needed in the
    backward pass, so it may be computed again) -> bn on (N, C) maps -> loss."""
    t = vmem.layers.LAYER_TYPES
    layers = [t["conv"](name="conv", out_channels=4, kernel=3, pad=1, bias=False),
              t["batchnorm"](name="bn"), t["maxpool"](name="pool", kernel=2),
              t["relu"](name="relu"), t["global_avgpool"](name="gap"),
              t["linear"](name="fc", out_features=6), t["batchnorm"](name="bn_fc"),
              t["softmax_loss"](name="loss")]
    return vmem.Network.sequential("bn", (3, 8, 8), layers)


def test_running_statistics_are_device_state_in_the_arena_and_the_state_dict() -> None:
    network = bn_network()
    with vmem.Runtime(network, device="cpu", seed=3) as runtime:
        state = runtime.state_dict()
        assert {"bn.running_mean", "bn.running_var", "bn_fc.running_mean",
                "bn_fc.running_var"} <= set(state)
        np.testing.assert_array_equal(state["bn.running_var"], np.ones(4, np.float32))
        blocks = [b for b in runtime.params.blocks if b.kind == MemoryKind.STATE]
        assert sorted(b.label for b in blocks) == ["bn.running_mean", "bn.running_var",
                                                   "bn_fc.running_mean", "bn_fc.running_var"]
        assert sum(b.nbytes for b in blocks) == (4 + 4 + 6 + 6) * 4
        # not trained, not counted as parameters
        assert network.num_params() == 4 * 3 * 9 + 2 * 4 + 4 * 6 + 6 + 2 * 6
        x, y = vmem.trial.synthetic_batch(network.input_shape, 6, 4, seed=1)
        runtime.train_step(x, y)
        trained = runtime.state_dict()
        assert not np.array_equal(trained["bn.running_mean"], state["bn.running_mean"])
    with vmem.Runtime(network, device="cpu", seed=9) as other:
        other.load_state_dict(trained)
        for name, value in other.state_dict().items():
            np.testing.assert_array_equal(value, trained[name], err_msg=name)


def test_evaluate_uses_the_running_statistics() -> None:
    """Probabilities from `evaluate` against a float64 NumPy evaluation of the same
    network, with the running statistics from `state_dict`."""
    network = bn_network()
    with vmem.Runtime(network, device="cpu", seed=3) as runtime:
        x, y = vmem.trial.synthetic_batch(network.input_shape, 6, 4, seed=1)
        for _ in range(2):
            runtime.train_step(x, y)
        probabilities = runtime.evaluate(x)
        s = {k: v.astype(np.float64) for k, v in runtime.state_dict().items()}
    conv = network.nodes[0].layer
    h, _ = conv.forward(np, [x.astype(np.float64)], {"weight": s["conv.weight"]}, DIRECT,
                        Context())
    h = numpy_bn(h, s["bn.weight"], s["bn.bias"], s["bn.running_mean"], s["bn.running_var"])
    h = np.maximum(h.reshape(4, 4, 4, 2, 4, 2).max(axis=(3, 5)), 0).mean(axis=(2, 3))
    h = h @ s["fc.weight"].T + s["fc.bias"]
    h = ((h - s["bn_fc.running_mean"]) / np.sqrt(s["bn_fc.running_var"] + 1e-5)
         * s["bn_fc.weight"] + s["bn_fc.bias"])
    expected = np.exp(h - h.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_a_recomputed_bn_output_moves_the_statistics_once_and_changes_no_bits() -> None:
    """The planner may drop BN's output and compute it again before the max pool's
    backward pass: losses, weights and running statistics are those of `none`."""
    network = bn_network()
    none = build_plan("none", network, 4, 4, offload_nothing)
    plan = recomputing(network, none, only={"bn"})
    assert recomputed_tensors(network, plan, 4) == {"bn"}
    losses, weights, record, dry_peak = train_plan(network, plan)
    assert any(s.phase == "recompute" and s.name == "bn" for s in record.spans)
    assert "bn.running_mean" in weights
    assert_same_training(losses, weights, network)


def test_resnet18_tiny_matches_pytorch_layer_for_layer() -> None:
    """resnet18-tiny built in PyTorch from the profile (vmem bench cpu-step's model)
    with vmem's initial weights: the first step's loss, and every BN layer's running
    statistics after it (a function of that forward pass alone: its batch mean and
    variance, layer by layer)."""
    torch = pytest.importorskip("torch")
    from vmem.bench.cpu_step import torch_module

    with vmem.Runtime("resnet18-tiny", device="cpu", seed=4) as runtime:
        network = runtime.network
        start = runtime.state_dict()
        x, y = vmem.trial.synthetic_batch(network.input_shape, 10, 4, seed=6)
        loss = runtime.train_step(x, y)
        after = runtime.state_dict()
    model = torch_module(torch, network)
    with torch.no_grad():
        for i, node in enumerate(network.nodes):
            if str(i) not in model.steps:
                continue
            module = model.steps[str(i)]
            module = module[1] if isinstance(module, torch.nn.Sequential) else module
            for key, value in start.items():
                layer, _, what = key.rpartition(".")
                if layer == node.name:
                    getattr(module, what).copy_(torch.from_numpy(value))
    model.train()
    with torch.no_grad():
        expected = float(model(torch.from_numpy(x), torch.from_numpy(y)))
    assert loss == pytest.approx(expected, rel=1e-5)
    norms = [n for n in network.nodes if n.layer.TYPE == "batchnorm"]
    assert len(norms) == 20
    for i, node in ((i, n) for i, n in enumerate(network.nodes) if n in norms):
        for what in ("running_mean", "running_var"):
            np.testing.assert_allclose(after[f"{node.name}.{what}"],
                                       getattr(model.steps[str(i)], what).numpy(),
                                       rtol=1e-4, atol=1e-6, err_msg=f"{node.name}.{what}")
