"""Policies: pure functions `(network, batch, itemsize, budget) -> Plan`.

- `none`: nothing offloaded, fastest algorithms; with no memory limit it is the
  oracular reference every other policy is measured against.
- `vdnn-all`: offload the input of every layer that keeps it for backward.
- `vdnn-conv`: offload only the inputs of the heavy layers
  (`Network.heavy_layers`): convolutions, as vDNN defined it for CNNs; in a
  network without any (a transformer), the layers that multiply matrices, linear
  and attention, whose compute most outlasts the copy of what they keep.
- `vdnn-dyn`: vDNN's dynamic policy, which searches those configurations and
  the convolution algorithms for the fastest one that fits the budget.

On a transformer, vDNN's prefetch rule ("no further back than one
convolution") likewise stops at the nearest linear or attention layer; the
feature maps a policy moves are layers' inputs, so attention's kept
probabilities (saved state, not a feature map) stay on the device.
- `budget`: vmem's planner past vDNN: the fewest, cheapest offloads that fit,
  freed when their copy is done and brought back in time (see budget.py).

A policy never measures memory itself: the budget carries dry runs of the
executor on a data-less backend (a plan's peak, exact to the byte, and its step
on a cost model's clock) and, where known, a per-layer cost.
"""

from __future__ import annotations

from collections.abc import Callable

from vmem.errors import UsageError
from vmem.graph import Network
from vmem.plan import Plan
from vmem.policies.budget import budget
from vmem.policies.vdnn import Budget, none, vdnn_all, vdnn_conv, vdnn_dyn

Policy = Callable[[Network, int, int, Budget], Plan]

POLICIES: dict[str, Policy] = {
    "none": none,
    "vdnn-all": vdnn_all,
    "vdnn-conv": vdnn_conv,
    "vdnn-dyn": vdnn_dyn,
    "budget": budget,
}


def check_policy(name: str) -> Policy:
    if not isinstance(name, str) or name not in POLICIES:
        raise UsageError(f"--policy: unknown policy {name!r:.40}; known: "
                         f"{', '.join(POLICIES)}")
    return POLICIES[name]


def make_plan(name: str, network: Network, batch: int, itemsize: int, budget: Budget) -> Plan:
    return check_policy(name)(network, batch, itemsize, budget)


__all__ = ["POLICIES", "Budget", "Policy", "check_policy", "make_plan"]
