"""SGD (Caffe's rule) and AdamW against their formulas in float64, what each holds on
the device, and a training step's host memory against the arena's count: the update
and the weight gradients allocate no buffer beyond those the arena holds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import vmem
from vmem.costs import SGD_TRAFFIC
from vmem.errors import UsageError
from vmem.layers import LAYER_TYPES
from vmem.optim import SGD, AdamW, make_optimizer, update_traffic
from vmem.planning import plan_for
from vmem.profile import load_profile


@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("decay", [True, False])
def test_sgd_follows_caffes_rule(momentum: float, decay: bool) -> None:
    """v <- m v + (g + wd w); w <- w - lr v (without momentum: w <- w - lr (g + wd w)),
    three steps, against float64."""
    rng = np.random.default_rng(0)
    sgd = SGD(lr=0.1, momentum=momentum, weight_decay=0.01)
    w = rng.standard_normal(1000).astype(np.float32)
    v = np.zeros_like(w)
    w64, v64 = w.astype(np.float64), np.zeros(1000)
    for t in range(1, 4):
        g = rng.standard_normal(1000).astype(np.float32)
        step = g.astype(np.float64) + (0.01 * w64 if decay else 0.0)
        v64 = momentum * v64 + step if momentum else step
        w64 = w64 - 0.1 * v64
        sgd.update(np, w, g.copy(), {"velocity": v} if momentum else {}, decay, step=t)
        np.testing.assert_allclose(w, w64, rtol=1e-6, atol=2e-6)
        if momentum:
            np.testing.assert_allclose(v, v64, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("decay", [True, False])
def test_adamw_follows_its_rule(decay: bool) -> None:
    """Five steps of AdamW (decoupled weight decay, bias-corrected moments) against the
    rule in float64, as torch.optim.AdamW states it."""
    rng = np.random.default_rng(1)
    adamw = AdamW(lr=0.01, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.1)
    w = rng.standard_normal(1000).astype(np.float32)
    state = {"exp_avg": np.zeros_like(w), "exp_avg_sq": np.zeros_like(w)}
    w64, m64, v64 = w.astype(np.float64), np.zeros(1000), np.zeros(1000)
    for t in range(1, 6):
        g = rng.standard_normal(1000).astype(np.float32)
        g64 = g.astype(np.float64)
        if decay:
            w64 = w64 * (1 - 0.01 * 0.1)
        m64 = 0.8 * m64 + 0.2 * g64
        v64 = 0.95 * v64 + 0.05 * g64**2
        denominator = np.sqrt(v64) / np.sqrt(1 - 0.95**t) + 1e-6
        w64 = w64 - 0.01 / (1 - 0.8**t) * m64 / denominator
        adamw.update(np, w, g.copy(), state, decay, step=t)
        np.testing.assert_allclose(w, w64, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["exp_avg"], m64, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["exp_avg_sq"], v64, rtol=1e-5, atol=1e-6)


def test_adamw_first_step_moves_each_weight_by_the_learning_rate() -> None:
    """At step 1 the corrected moments are g and g^2, so (without decay) each weight
    moves by lr * g / (|g| + eps): the learning rate, against the gradient's sign."""
    w = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    g = np.array([0.25, -4.0, 1e3, -1e-2], dtype=np.float32)
    state = {"exp_avg": np.zeros(4, np.float32), "exp_avg_sq": np.zeros(4, np.float32)}
    AdamW(lr=0.1, weight_decay=0.0).update(np, w, g, state, decay=True, step=1)
    np.testing.assert_allclose(w, [0.9, -1.9, 0.4, 3.1], rtol=1e-6)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"beta1": 1.0}, {"beta2": -0.1}, {"eps": 0.0},
                                 {"weight_decay": -1.0}])
def test_adamw_refuses_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(UsageError, match=next(iter(bad)).replace("_", " ").replace(
            "lr", "learning rate")):
        AdamW(**bad)


def test_optimizers_by_name() -> None:
    assert make_optimizer("adamw", 0.5) == AdamW(lr=0.5)
    assert make_optimizer("sgd") == SGD()
    with pytest.raises(UsageError, match="unknown 'adam'; known: sgd, adamw"):
        make_optimizer("adam", 0.1)
    # a fused update's passes over the weights: read w and g, write w, read and write
    # each state buffer
    assert [update_traffic(o) for o in (SGD(momentum=0), SGD(), AdamW())] == [3, 5, 7]
    assert update_traffic(SGD()) == SGD_TRAFFIC  # what calibrations without the field measured


def test_adamw_holds_one_more_weight_sized_buffer_than_sgd() -> None:
    """VGG-16 has 138,357,544 float32 parameters (`vmem profiles`): AdamW's second
    moment adds exactly their 553,430,176 bytes to every peak, and nothing else."""
    vgg16 = load_profile("vgg16")
    peaks = {name: plan_for(vgg16, "none", "sim:h100-pcie5", 64, None,
                            optimizer=name)[1] for name in ("sgd", "adamw")}
    assert peaks["adamw"] - peaks["sgd"] == 138_357_544 * 4


def test_adamw_state_is_counted_as_optimizer_memory() -> None:
    network = load_profile("digits").network
    for optimizer, buffers in ((SGD(), 1), (AdamW(), 2)):
        with vmem.Runtime(network, device="cpu", optimizer=optimizer) as runtime:
            kinds = {kind: sum(b.nbytes for b in runtime.params.blocks if b.kind == kind)
                     for kind in ("weights", "optimizer")}
        assert kinds["optimizer"] == buffers * kinds["weights"] == buffers * 13_706 * 4


def test_runtime_refuses_what_is_not_an_optimizer() -> None:
    with pytest.raises(UsageError, match="optimizer: expected vmem.SGD or vmem.AdamW, got dict"):
        vmem.Runtime("digits", device="cpu", optimizer={"lr": 0.1})


@pytest.mark.parametrize("optimizer", [SGD(), AdamW()], ids=["sgd", "adamw"])
def test_a_step_allocates_no_weight_sized_temporaries(optimizer: SGD | AdamW) -> None:
    """A 2048 -> 1024 linear layer has 8 MiB of weights. After the first step, a step
    holds no more host memory than its small maps: last step's weight gradient goes
    before the new one is made, and the update works in place."""
    t = LAYER_TYPES
    network = vmem.Network.sequential("wide", (2048,), [
        t["linear"](name="fc", out_features=1024),
        t["softmax_loss"](name="loss"),
    ])
    weight_bytes = 2048 * 1024 * 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2048), dtype=np.float32)
    y = rng.integers(0, 1024, 2)
    tracemalloc.start()  # before anything is allocated, so that frees count too
    try:
        with vmem.Runtime(network, device="cpu", optimizer=optimizer) as runtime:
            runtime.train_step(x, y)
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            runtime.train_step(x, y)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # weights, their gradients, the optimizer's state
    assert start > (2 + len(optimizer.state_names)) * weight_bytes
    assert peak - start < weight_bytes / 8
