"""Small networks and plans the policy tests share, on the CPU (tests/test_policies.py,
tests/test_budget.py, tests/test_recompute.py) and on a GPU (tests/gpu/test_cuda.py)."""

from __future__ import annotations

from dataclasses import replace

import vmem
from vmem.plan import Plan, recomputable


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


def recomputing(network: vmem.Network, plan: Plan, only: set[str] | None = None) -> Plan:
    """`plan` with every recomputable output (or those in `only`) computed again,
    none from another that is."""
    chosen: set[str] = set()
    for node in network.nodes:
        if only is not None and node.name not in only:
            continue
        if (recomputable(network, node.name, 4, plan.batch) is None
                and not any(source in chosen for source in node.inputs)):
            chosen.add(node.name)
    return replace(plan, layers=tuple(replace(entry, recompute_output=entry.layer in chosen)
                                      for entry in plan.layers))
