"""Small networks the policy tests share, on the CPU (tests/test_policies.py,
tests/test_budget.py) and on a GPU (tests/gpu/test_cuda.py)."""

from __future__ import annotations

import vmem


def pointwise_network() -> vmem.Network:
    """Six 1x1 convolutions over 32x32 maps, then a pool: feature maps, not
    workspace or weights, make the peak, so offloading must lower it."""
    t = vmem.layers.LAYER_TYPES
    layers = []
    for i in range(6):
        layers += [t["conv"](name=f"conv{i}", out_channels=8, kernel=1),
                   t["relu"](name=f"relu{i}")]
    layers += [t["maxpool"](name="pool", kernel=2), t["linear"](name="fc", out_features=10),
               t["softmax_loss"](name="loss")]
    return vmem.Network.sequential("pointwise", (8, 32, 32), layers)
