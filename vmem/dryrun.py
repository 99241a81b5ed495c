"""Dry runs: one training step of the real executor on a data-less `sim`
backend, so a plan's device memory is known to the byte without computing, and
its time is the one a cost model gives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vmem.backends.sim import SimBackend
from vmem.costs import CostModel
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
    backend = SimBackend(None, bounded=False, costs=costs)
    params = ParameterStore(backend, network, optimizer, dtype, seed=0)
    executor = Executor(backend, network, plan, params, dtype,
                        PinnedHostPool(backend.pinned_empty), costs=costs, allocation=allocation)
    record = executor.train_step(None, None, step=0, seed=0).record
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
        self.on_run: Callable[[], None] | None = None  # after each new dry run (progress)

    def run(self, plan: Plan) -> DryRun:
        key = Plan("", plan.batch, plan.layers, plan.moves)  # the policy's name does not matter
        if key not in self._runs:
            self._runs[key] = dry_run(self.network, plan, self.dtype, self.optimizer,
                                      self.allocation, self.costs)
            if self.on_run is not None:
                self.on_run()
        return self._runs[key]

    def __call__(self, plan: Plan) -> int:
        return self.run(plan).peak
