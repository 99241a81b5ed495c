"""Dry runs: one training step of the real executor on a data-less `sim`
backend, so a plan's device memory is known to the byte without computing, and
its time is the one a cost model gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vmem.backends.sim import SimBackend
from vmem.costs import CostModel
from vmem.errors import OutOfDeviceMemory
from vmem.executor import LIVENESS, Executor
from vmem.graph import Network
from vmem.memory import PinnedHostPool
from vmem.optim import Optimizer
from vmem.parameters import ParameterStore
from vmem.plan import Plan
from vmem.profiler.events import StepRecord


@dataclass(frozen=True)
class DryRun:
    peak: int  # device bytes at the step's peak: weights, gradients, optimizer state included
    record: StepRecord  # the step's events, on the cost model's clock


def dry_run(network: Network, plan: Plan, dtype: np.dtype, optimizer: Optimizer,
            allocation: str = LIVENESS, costs: CostModel | None = None) -> DryRun:
    """One training step under `plan` with memory for everything (costs None: no
    time passes)."""
    outcome = dry_run_within(network, plan, dtype, optimizer, allocation, costs, None)
    assert outcome is not None, "nothing bounds the step"
    return outcome


def dry_run_within(network: Network, plan: Plan, dtype: np.dtype, optimizer: Optimizer,
                   allocation: str = LIVENESS, costs: CostModel | None = None,
                   capacity: int | None = None) -> DryRun | None:
    """`dry_run`, stopped at the first allocation past `capacity` (None then): a
    planner asking only whether a plan fits learns that a plan does not from the
    part of the step up to where it runs out, often its forward pass alone. A step
    that completes is the unbounded one, event for event."""
    backend = SimBackend(None, capacity, bounded=False, costs=costs)
    try:
        params = ParameterStore(backend, network, optimizer, dtype, seed=0)
        executor = Executor(backend, network, plan, params, dtype,
                            PinnedHostPool(backend.pinned_empty), costs=costs,
                            allocation=allocation)
        record = executor.train_step(None, None, step=0, seed=0).record
    except OutOfDeviceMemory:
        if capacity is None:
            raise
        return None
    return DryRun(backend.arena.peak, record)


class PeakOracle:
    """Dry runs of one network and dtype on a cost model (the device's, which its
    plans come from; None: peaks only, no time passes), remembered per plan: a
    plan's exact peak, and its modeled step."""

    def __init__(self, network: Network, dtype: np.dtype, optimizer: Optimizer,
                 allocation: str = LIVENESS, *, costs: CostModel | None) -> None:
        self.network, self.dtype, self.optimizer = network, np.dtype(dtype), optimizer
        self.allocation = allocation
        self.costs = costs
        self._runs: dict[Plan, DryRun] = {}
        # the largest capacity each plan's step was stopped past, of those not run whole
        self._past: dict[Plan, int] = {}
        self.dry_runs = 0  # steps run, whole or stopped past a capacity
        self.on_run: Callable[[], None] | None = None  # after each new dry run (progress)

    @staticmethod
    def _key(plan: Plan) -> Plan:
        return Plan("", plan.batch, plan.layers, plan.moves)  # the policy's name does not matter

    def _ran(self) -> None:
        self.dry_runs += 1
        if self.on_run is not None:
            self.on_run()

    def run(self, plan: Plan) -> DryRun:
        key = self._key(plan)
        if key not in self._runs:
            self._runs[key] = dry_run(self.network, plan, self.dtype, self.optimizer,
                                      self.allocation, self.costs)
            self._ran()
        return self._runs[key]

    def fits(self, plan: Plan, capacity: int) -> bool:
        """Whether the plan's peak is within `capacity`: from its dry run where it has
        one, else from a step stopped at the first allocation past the capacity
        (`dry_run_within`; one that completes is kept as the plan's dry run)."""
        key = self._key(plan)
        known = self._runs.get(key)
        if known is not None:
            return known.peak <= capacity
        if self._past.get(key, -1) >= capacity:
            return False
        outcome = dry_run_within(self.network, plan, self.dtype, self.optimizer,
                                 self.allocation, self.costs, capacity)
        self._ran()
        if outcome is None:
            self._past[key] = capacity
            return False
        self._runs[key] = outcome
        return True

    def __call__(self, plan: Plan) -> int:
        return self.run(plan).peak
