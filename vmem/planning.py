"""Budgets and plans without training: what `vmem plan` prints and what the
runtime hands its policy."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from vmem.backends.base import bound_capacity
from vmem.costs import CostModel, load_costs
from vmem.dryrun import DryRun, PeakOracle
from vmem.executor import LIVENESS
from vmem.graph import Network, Node
from vmem.layers.base import Algorithm
from vmem.optim import make_optimizer
from vmem.plan import Plan
from vmem.policies import Budget, make_plan
from vmem.policies.vdnn import LIMIT_FLAG, check_trainable
from vmem.profile import Profile


def make_budget(network: Network, capacity: int | None, peak: PeakOracle,
                bound: str = LIMIT_FLAG) -> Budget:
    """A capacity (set by `bound`: the --memory-limit, or a device's own memory), the
    exact peak and a modeled step of any plan, and modeled layer times: all from the
    one cost model of `peak`'s dry runs (the device's), so a policy weighs its
    choices as the device's model says."""
    costs = peak.costs
    if costs is None:  # a peaks-only oracle: nothing to weigh time by
        return Budget(capacity, peak.run, bound=bound, within=peak.fits)

    def layer_ms(node: Node, algorithm: Algorithm, batch: int) -> float:
        shapes = network.shapes(batch)
        in_shapes, out = network.in_shapes(node, shapes), shapes[node.name]
        return sum(costs.layer_ms(node.layer, in_shapes, out, algorithm, phase)
                   for phase in ("forward", "backward"))

    return Budget(capacity, peak.run, layer_ms, bound, peak.fits)


def plan_with(network: Network, policy: str, batch: int, itemsize: int,
              budget: Budget) -> Plan:
    """The plan a policy makes; a capacity no policy can meet is refused first."""
    with _collector_paused():
        check_trainable(network, batch, itemsize, budget)
        return make_plan(policy, network, batch, itemsize, budget)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a policy plans: the dry runs it
    keeps hold hundreds of thousands of event records, which each collection would
    walk again (half of budget's planning time on GPT-2 XL), and what a dry run
    leaves behind is freed by reference counting all the same."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass(frozen=True)
class Target:
    """A device as planning sees it: its name, the cost model its plans and dry runs
    keep time by, the device memory a plan must fit (None: nothing bounds it), what
    sets that bound, and whether it is the cpu (whose default batch is a profile's
    cpu_batch)."""

    name: str
    costs: CostModel | None
    capacity: int | None
    bound: str  # "--memory-limit", or "sim:GPU's memory"
    on_cpu: bool = False

    def default_batch(self, profile: Profile) -> int:
        return profile.cpu_batch if self.on_cpu else profile.batch


def resolve_target(device: str, limit: int | None, itemsize: int = 4) -> Target:
    """The device a run names, bounded as a run on it is: by `limit`, else by the
    device's memory (a sim GPU's, a CUDA device's); a limit above the device's own
    memory is refused (`vmem.backends.base.bound_capacity`)."""
    spec = device.strip()
    if spec.startswith("sim:"):
        costs = load_costs(spec.removeprefix("sim:"), itemsize)
        name = f"sim:{costs.gpu.name}"
        return Target(name, costs, bound_capacity(limit, costs.gpu.memory_bytes, name),
                      _bound(limit, name))
    from vmem.backends import get_backend

    # validates the device and the limit against its memory; cheap, holds nothing
    backend = get_backend(spec, limit)
    target = Target(backend.name, backend.costs, backend.arena.capacity,
                    _bound(limit, backend.name), backend.name == "cpu")
    backend.close()
    return target


def _bound(limit: int | None, name: str) -> str:
    return LIMIT_FLAG if limit is not None else f"{name}'s memory"


@dataclass(frozen=True)
class DevicePlan:
    """What `vmem plan` prints: a plan, its dry run (the exact peak, and the step on
    the device's cost model's clock), the device memory it must fit (None: nothing
    bounds it) and what sets that bound."""

    plan: Plan
    run: DryRun
    capacity: int | None
    bound: str  # "--memory-limit", or "sim:GPU's memory"

    @property
    def peak(self) -> int:
        return self.run.peak

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.peak <= self.capacity

    @property
    def step_ms(self) -> float:
        return self.run.record.duration_ms


def peak_oracle(network: Network, target: Target, dtype: str = "float32",
                allocation: str = LIVENESS, optimizer: str = "sgd") -> PeakOracle:
    """Dry runs of `network` on the target's clock, remembered per plan."""
    return PeakOracle(network, np.dtype(dtype), make_optimizer(optimizer), allocation,
                      costs=target.costs)


def plan_on_target(network: Network, policy: str, target: Target, batch: int,
                   peak: PeakOracle, capacity: int | None = None) -> DevicePlan:
    """The plan `policy` makes at `batch` within the target's memory (or `capacity`
    where given), with its dry run."""
    capacity = target.capacity if capacity is None else capacity
    plan = plan_with(network, policy, batch, peak.dtype.itemsize,
                     make_budget(network, capacity, peak, target.bound))
    return DevicePlan(plan, peak.run(plan), capacity, target.bound)


def oracle_plan(network: Network, batch: int, peak: PeakOracle) -> DevicePlan:
    """The oracular step: policy none with memory for everything."""
    plan = plan_with(network, "none", batch, peak.dtype.itemsize, Budget())
    return DevicePlan(plan, peak.run(plan), None, "no bound")


@dataclass(frozen=True)
class PlanOnDevice:
    """What `vmem plan` prints: the plan on its device and the oracular step at the
    same batch (policy none with memory for everything), both on the device's cost
    model's clock."""

    planned: DevicePlan
    oracle: DevicePlan
    target: Target
    itemsize: int

    @property
    def slowdown(self) -> float | None:
        """Modeled step over the oracular one's (None where no time passes)."""
        oracle_ms = self.oracle.step_ms
        return self.planned.step_ms / oracle_ms if oracle_ms > 0 else None


def plan_with_oracle(profile: Profile, policy: str, device: str, batch: int | None,
                     limit: int | None, dtype: str = "float32", allocation: str = LIVENESS,
                     optimizer: str = "sgd", on_dry_run: Callable[[], None] | None = None
                     ) -> PlanOnDevice:
    """`plan_on_device`, with the oracular step beside it; `on_dry_run` is called
    after each dry run the planning makes (a progress bar: `budget` makes hundreds)."""
    itemsize = np.dtype(dtype).itemsize
    target = resolve_target(device, limit, itemsize)
    peak = peak_oracle(profile.network, target, dtype, allocation, optimizer)
    peak.on_run = on_dry_run
    batch = batch or target.default_batch(profile)
    planned = plan_on_target(profile.network, policy, target, batch, peak)
    return PlanOnDevice(planned, oracle_plan(profile.network, batch, peak), target, itemsize)


def plan_on_device(profile: Profile, policy: str, device: str, batch: int | None,
                   limit: int | None, dtype: str = "float32",
                   allocation: str = LIVENESS, optimizer: str = "sgd") -> DevicePlan:
    """The plan `policy` makes for a profile on a device, bounded as a run on that
    device is (see `resolve_target`). The optimizer (a name in
    `vmem.optim.OPTIMIZERS`) holds its state beside the weights. Every device plans
    with its own cost model (`Backend.costs`), so the plan a sim GPU predicts is the
    plan that GPU makes."""
    target = resolve_target(device, limit, np.dtype(dtype).itemsize)
    peak = peak_oracle(profile.network, target, dtype, allocation, optimizer)
    return plan_on_target(profile.network, policy, target,
                          batch or target.default_batch(profile), peak)


def plan_for(profile: Profile, policy: str, device: str, batch: int | None,
             capacity: int | None, dtype: str = "float32",
             allocation: str = LIVENESS, optimizer: str = "sgd") -> tuple[Plan, int]:
    """The plan `policy` makes for a profile on a device, and its exact peak
    (see `plan_on_device`)."""
    planned = plan_on_device(profile, policy, device, batch, capacity, dtype, allocation,
                             optimizer)
    return planned.plan, planned.peak
