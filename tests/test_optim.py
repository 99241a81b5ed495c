"""SGD (Caffe's rule) against the formula in float64, and a training step's host
memory against the arena's count: the update and the weight gradients allocate no
buffer beyond those the arena holds."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import vmem
from vmem.layers import LAYER_TYPES
from vmem.optim import SGD


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
    for _ in range(3):
        g = rng.standard_normal(1000).astype(np.float32)
        step = g.astype(np.float64) + (0.01 * w64 if decay else 0.0)
        v64 = momentum * v64 + step if momentum else step
        w64 = w64 - 0.1 * v64
        sgd.update(np, w, g.copy(), {"velocity": v} if momentum else {}, decay)
        np.testing.assert_allclose(w, w64, rtol=1e-6, atol=2e-6)
        if momentum:
            np.testing.assert_allclose(v, v64, rtol=1e-6, atol=2e-6)


def test_a_step_allocates_no_weight_sized_temporaries() -> None:
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
        with vmem.Runtime(network, device="cpu") as runtime:
            runtime.train_step(x, y)
            start, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            runtime.train_step(x, y)
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert start > 3 * weight_bytes  # weights, their gradients, the velocity
    assert peak - start < weight_bytes / 8
