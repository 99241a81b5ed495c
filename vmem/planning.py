"""Budgets and plans without training: what `vmem plan` prints and what the
runtime hands its policy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmem.backends.base import bound_capacity
from vmem.costs import load_costs
from vmem.dryrun import PeakOracle
from vmem.executor import LIVENESS
from vmem.graph import Network, Node
from vmem.layers.base import Algorithm
from vmem.optim import make_optimizer
from vmem.plan import Plan
from vmem.policies import Budget, make_plan
from vmem.policies.vdnn import check_trainable
from vmem.profile import Profile


def make_budget(network: Network, capacity: int | None, peak: PeakOracle) -> Budget:
    """A capacity, the exact peak and a modeled step of any plan, and modeled layer
    times: all from the one cost model of `peak`'s dry runs (the device's), so a
    policy weighs its choices as the device's model says."""
    costs = peak.costs
    if costs is None:  # a peaks-only oracle: nothing to weigh time by
        return Budget(capacity, peak.run)

    def layer_ms(node: Node, algorithm: Algorithm, batch: int) -> float:
        shapes = network.shapes(batch)
        in_shapes, out = network.in_shapes(node, shapes), shapes[node.name]
        return sum(costs.layer_ms(node.layer, in_shapes, out, algorithm, phase)
                   for phase in ("forward", "backward"))

    return Budget(capacity, peak.run, layer_ms)


def plan_with(network: Network, policy: str, batch: int, itemsize: int,
              budget: Budget) -> Plan:
    """The plan a policy makes; a capacity no policy can meet is refused first."""
    check_trainable(network, batch, itemsize, budget)
    return make_plan(policy, network, batch, itemsize, budget)


@dataclass(frozen=True)
class DevicePlan:
    """What `vmem plan` prints: a plan, its exact peak, the device memory it must
    fit (None: nothing bounds it) and what sets that bound."""

    plan: Plan
    peak: int
    capacity: int | None
    bound: str  # "--memory-limit", or "sim:GPU's memory"


def plan_on_device(profile: Profile, policy: str, device: str, batch: int | None,
                   limit: int | None, dtype: str = "float32",
                   allocation: str = LIVENESS, optimizer: str = "sgd") -> DevicePlan:
    """The plan `policy` makes for a profile on a device, bounded as a run on that
    device is: by `limit`, else by the device's memory (a sim GPU's, a CUDA
    device's); a limit above the device's own memory is refused
    (`vmem.backends.base.bound_capacity`). The optimizer (a name in
    `vmem.optim.OPTIMIZERS`) holds its state beside the weights.
    Every device plans with its own cost model (`Backend.costs`), so the plan a sim
    GPU predicts is the plan that GPU makes."""
    spec = device.strip()
    itemsize = np.dtype(dtype).itemsize
    if spec.startswith("sim:"):
        costs = load_costs(spec.removeprefix("sim:"), itemsize)
        name = f"sim:{costs.gpu.name}"
        capacity = bound_capacity(limit, costs.gpu.memory_bytes, name)
        on_cpu = False
    else:
        from vmem.backends import get_backend

        # validates the device and the limit against its memory; cheap, holds nothing
        backend = get_backend(spec, limit)
        name, on_cpu = backend.name, backend.name == "cpu"
        costs, capacity = backend.costs, backend.arena.capacity
        backend.close()
    bound = "--memory-limit" if limit is not None else f"{name}'s memory"
    batch = batch or (profile.cpu_batch if on_cpu else profile.batch)
    peak = PeakOracle(profile.network, np.dtype(dtype), make_optimizer(optimizer), allocation,
                      costs=costs)
    plan = plan_with(profile.network, policy, batch, itemsize,
                     make_budget(profile.network, capacity, peak))
    return DevicePlan(plan, peak(plan), capacity, bound)


def plan_for(profile: Profile, policy: str, device: str, batch: int | None,
             capacity: int | None, dtype: str = "float32",
             allocation: str = LIVENESS, optimizer: str = "sgd") -> tuple[Plan, int]:
    """The plan `policy` makes for a profile on a device, and its exact peak
    (see `plan_on_device`)."""
    planned = plan_on_device(profile, policy, device, batch, capacity, dtype, allocation,
                             optimizer)
    return planned.plan, planned.peak
