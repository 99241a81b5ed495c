"""`vmem fit`: will a network fit, and how fast, without training it.

For one device: the largest batch each policy trains within the device's memory
(or the --memory-limit), found by a search over dry runs of the executor (exact
peaks on any device; on a `sim` GPU the step is the cost model's): doubling the
batch until it no longer fits, then halving the interval between the last batch
that fits and the first that does not. The peak of a plan grows with the batch,
so the search ends at the largest batch, exactly. For several devices at one
batch: which of them fit it, under which policy fastest.

Each result carries the plan's modeled step, the samples per second it gives,
and its slowdown against the oracular step (policy none, memory for everything)
at the same batch on the same device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmem.cliargs import MAX_COUNT
from vmem.dryrun import PeakOracle
from vmem.errors import MemoryLimitTooSmall, UsageError
from vmem.graph import Network
from vmem.planning import (
    DevicePlan,
    Target,
    make_budget,
    oracle_plan,
    peak_oracle,
    plan_on_target,
    resolve_target,
)
from vmem.policies.vdnn import policy_floors

# vdnn-dyn falls back to vdnn-all with memory-optimal algorithms, and budget keeps
# that and its own lightest plans among its candidates (`policy_floors`): each fits
# wherever its floor fits, so a search for them probes the floor alone (a dry run or
# two, not a whole planning)
FLOOR_POLICIES = frozenset({"vdnn-dyn", "budget"})


@dataclass(frozen=True)
class Fit:
    """One policy on one device at one batch: the plan's peak and modeled step, and
    the oracular step at that batch; batch 0 where not even one sample fits."""

    policy: str
    device: str
    capacity: int
    batch: int
    peak: int | None = None
    step_ms: float | None = None
    oracle_ms: float | None = None
    floor: int | None = None  # where it does not fit: the least any configuration needs

    @property
    def fits(self) -> bool:
        return self.peak is not None

    @property
    def samples_per_s(self) -> float | None:
        return self.batch / self.step_ms * 1e3 if self.step_ms else None

    @property
    def slowdown(self) -> float | None:
        return self.step_ms / self.oracle_ms if self.step_ms and self.oracle_ms else None

    def to_json(self) -> dict[str, object]:
        return {"policy": self.policy, "device": self.device, "capacity_bytes": self.capacity,
                "batch": self.batch, "fits": self.fits, "peak_bytes": self.peak,
                "step_ms": self.step_ms, "samples_per_s": self.samples_per_s,
                "oracle_step_ms": self.oracle_ms, "slowdown": self.slowdown,
                "least_bytes": self.floor}


def largest_batch(fits: Callable[[int], bool], ceiling: int = MAX_COUNT) -> int:
    """The largest batch in [1, ceiling] that fits, for a `fits` that holds up to some
    batch and not beyond (0: not even 1 fits): doubling, then bisection."""
    if not fits(1):
        return 0
    good = 1
    while good < ceiling:
        probe = min(good * 2, ceiling)
        if not fits(probe):
            bad = probe
            break
        good = probe
    else:
        return good
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


class DeviceFitter:
    """Plans for one network on one device, sharing one oracle of dry runs: every
    probe of every policy at a batch reuses the plans already run."""

    def __init__(self, network: Network, target: Target, capacity: int,
                 allocation: str, optimizer: str) -> None:
        self.network, self.target, self.capacity = network, target, capacity
        self.peak: PeakOracle = peak_oracle(network, target, allocation=allocation,
                                            optimizer=optimizer)
        self.itemsize = self.peak.dtype.itemsize
        self.budget = make_budget(network, capacity, self.peak, target.bound)

    def plan(self, policy: str, batch: int) -> DevicePlan | None:
        """The policy's plan at `batch`, or None where it does not fit."""
        try:
            planned = plan_on_target(self.network, policy, self.target, batch, self.peak,
                                     self.capacity)
        except MemoryLimitTooSmall:
            return None
        return planned if planned.fits else None

    def floor_fits(self, policy: str, batch: int) -> bool:
        return any(self.budget.fits(plan)
                   for plan in policy_floors(self.network, batch, self.itemsize, policy))

    def at(self, policy: str, batch: int) -> Fit:
        planned = self.plan(policy, batch) if batch else None
        if planned is None:
            floor = min(map(self.peak, policy_floors(self.network, max(batch, 1),
                                                     self.itemsize, policy)))
            return Fit(policy, self.target.name, self.capacity, batch, floor=floor)
        oracle = oracle_plan(self.network, batch, self.peak)
        return Fit(policy, self.target.name, self.capacity, batch, planned.peak,
                   planned.step_ms, oracle.step_ms)

    def largest(self, policy: str) -> Fit:
        """The largest batch the policy trains within the capacity."""
        if policy in FLOOR_POLICIES:
            batch = largest_batch(lambda b: self.floor_fits(policy, b))
            if batch and self.plan(policy, batch) is None:  # the floor's promise broke
                batch = largest_batch(lambda b: self.plan(policy, b) is not None, batch)
        else:
            batch = largest_batch(lambda b: self.plan(policy, b) is not None)
        return self.at(policy, batch)


@dataclass(frozen=True)
class FitReport:
    """What `vmem fit` prints: one device's largest batches (batch None), or, at a
    batch, every device's fits."""

    profile: str
    batch: int | None
    allocation: str
    optimizer: str
    bound: str  # what set the capacity (one device), or "each GPU's memory"
    modeled_on: str  # whose clock the steps are: a sim GPU's, or the weighing GPU's
    fits: tuple[Fit, ...]

    def to_json(self) -> dict[str, object]:
        return {"profile": self.profile, "batch": self.batch, "allocation": self.allocation,
                "optimizer": self.optimizer, "bound": self.bound,
                "modeled_on": self.modeled_on, "fits": [f.to_json() for f in self.fits]}


def _capacity(target: Target, device: str) -> int:
    if target.capacity is not None:
        return target.capacity
    raise UsageError(f"--device {device}: vmem fit needs the memory to fit within: give "
                     "--memory-limit (the cpu has no device memory of its own), or a GPU: "
                     "--device cuda, sim:GPU")


def _modeled_on(target: Target) -> str:
    gpu = getattr(target.costs, "gpu", None)
    return target.name if target.name.startswith("sim:") or gpu is None else (
        f"{target.name}'s cost model ({gpu.name})")


def fit_device(network: Network, device: str, limit: int | None, policies: Sequence[str],
               allocation: str, optimizer: str) -> FitReport:
    """The largest batch each policy trains on one device."""
    target = resolve_target(device, limit)
    fitter = DeviceFitter(network, target, _capacity(target, device), allocation, optimizer)
    fits = tuple(fitter.largest(policy) for policy in policies)
    return FitReport(network.name, None, allocation, optimizer, target.bound,
                     _modeled_on(target), fits)


def fit_devices(network: Network, devices: Sequence[str], batch: int, limit: int | None,
                policies: Sequence[str], allocation: str, optimizer: str) -> FitReport:
    """Each policy at `batch` on each device."""
    fits: list[Fit] = []
    targets = [resolve_target(device, limit) for device in devices]
    for device, target in zip(devices, targets, strict=True):
        fitter = DeviceFitter(network, target, _capacity(target, device), allocation,
                              optimizer)
        fits += [fitter.at(policy, batch) for policy in policies]
    bound = targets[0].bound if len(targets) == 1 else "each GPU's memory"
    modeled = ", ".join(dict.fromkeys(_modeled_on(t) for t in targets))
    return FitReport(network.name, batch, allocation, optimizer, bound, modeled, tuple(fits))


def parse_devices(text: str) -> list[str]:
    """--devices: "all" (every GPU preset), or a comma-separated list of devices, each
    once: a preset's name stands for its sim (titan-x for sim:titan-x)."""
    from vmem.costs import gpu_presets

    presets = list(gpu_presets())
    if text.strip() == "all":
        return [f"sim:{name}" for name in presets]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"--devices: give 'all' or GPU presets, e.g. {','.join(presets)}")
    devices = []
    for name in names:
        device = f"sim:{name}" if name in presets else name
        if device in devices:
            raise UsageError(f"--devices: '{name}' is given twice; name each device once")
        devices.append(device)
    return devices
