"""Dry runs: one training step of the real executor on a data-less `sim`
backend, so a plan's device memory is known to the byte without computing."""

from __future__ import annotations

import numpy as np

from vmem.backends.sim import SimBackend
from vmem.executor import LIVENESS, Executor
from vmem.graph import Network
from vmem.memory import PinnedHostPool
from vmem.optim import SGD
from vmem.parameters import ParameterStore
from vmem.plan import Plan


def dry_run_peak(network: Network, plan: Plan, dtype: np.dtype, optimizer: SGD,
                 allocation: str = LIVENESS) -> int:
    """Peak device bytes of one training step under `plan` (weights, gradients and
    optimizer state included)."""
    backend = SimBackend(None)
    params = ParameterStore(backend, network, optimizer, dtype, seed=0)
    executor = Executor(backend, network, plan, params, dtype,
                        PinnedHostPool(backend.pinned_empty), allocation=allocation)
    executor.train_step(None, None, step=0, seed=0)
    return backend.arena.peak


class PeakOracle:
    """`dry_run_peak` for one network and dtype, remembered per plan."""

    def __init__(self, network: Network, dtype: np.dtype, optimizer: SGD,
                 allocation: str = LIVENESS) -> None:
        self.network, self.dtype, self.optimizer = network, dtype, optimizer
        self.allocation = allocation
        self._peaks: dict[Plan, int] = {}

    def __call__(self, plan: Plan) -> int:
        key = Plan("", plan.batch, plan.layers)  # the policy's name does not matter
        if key not in self._peaks:
            self._peaks[key] = dry_run_peak(self.network, plan, self.dtype, self.optimizer,
                                            self.allocation)
        return self._peaks[key]
