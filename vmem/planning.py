"""Budgets and plans without training: what `vmem plan` prints and what the
runtime hands its policy."""

from __future__ import annotations

import numpy as np

from vmem.costs import CostModel, load_costs
from vmem.dryrun import PeakOracle
from vmem.executor import LIVENESS
from vmem.graph import Network, Node
from vmem.layers.base import Algorithm
from vmem.optim import SGD
from vmem.plan import Plan
from vmem.policies import Budget, make_plan
from vmem.policies.vdnn import check_trainable
from vmem.profile import Profile


def make_budget(network: Network, capacity: int | None, peak: PeakOracle,
                costs: CostModel | None) -> Budget:
    """A capacity, the exact peak of any plan, and modeled layer times where a
    cost model is known."""
    if costs is None:
        return Budget(capacity, peak)

    def layer_ms(node: Node, algorithm: Algorithm, batch: int) -> float:
        shapes = network.shapes(batch)
        in_shapes, out = network.in_shapes(node, shapes), shapes[node.name]
        return sum(costs.layer_ms(node.layer, in_shapes, out, algorithm, phase)
                   for phase in ("forward", "backward"))

    return Budget(capacity, peak, layer_ms)


def plan_with(network: Network, policy: str, batch: int, itemsize: int,
              budget: Budget) -> Plan:
    """The plan a policy makes; a capacity no policy can meet is refused first."""
    check_trainable(network, batch, itemsize, budget)
    return make_plan(policy, network, batch, itemsize, budget)


def plan_for(profile: Profile, policy: str, device: str, batch: int | None,
             capacity: int | None, dtype: str = "float32",
             allocation: str = LIVENESS) -> tuple[Plan, int]:
    """The plan `policy` makes for a profile on a device (a GPU preset for
    sim:NAME, whose memory also caps the capacity), and its exact peak."""
    costs = None
    spec = device.strip()
    if spec.startswith("sim:"):
        costs = load_costs(spec.removeprefix("sim:"), np.dtype(dtype).itemsize)
        gpu = costs.gpu
        capacity = gpu.memory_bytes if capacity is None else min(capacity, gpu.memory_bytes)
        on_cpu = False
    else:
        from vmem.backends import get_backend

        backend = get_backend(spec)  # validates the device; cheap, holds nothing
        on_cpu = backend.name == "cpu"
        backend.close()
    batch = batch or (profile.cpu_batch if on_cpu else profile.batch)
    itemsize = np.dtype(dtype).itemsize
    peak = PeakOracle(profile.network, np.dtype(dtype), SGD(), allocation)
    plan = plan_with(profile.network, policy, batch, itemsize,
                     make_budget(profile.network, capacity, peak, costs))
    return plan, peak(plan)
