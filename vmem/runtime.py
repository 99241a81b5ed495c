"""`Runtime`: the facade a user embeds in a training loop.

    with vmem.Runtime("alexnet", device="cuda", memory_limit="4GiB") as rt:
        for x, y in batches:
            loss = rt.train_step(x, y)
        probabilities = rt.evaluate(x_test)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vmem.backends import get_backend
from vmem.dryrun import PeakOracle
from vmem.errors import OutOfDeviceMemory, UsageError, VmemError
from vmem.executor import LIVENESS, Executor, check_allocation
from vmem.graph import DATA, Network
from vmem.kernels.threads import resolve_threads, using_threads
from vmem.layers.base import numel
from vmem.memory import PinnedHostPool
from vmem.optim import SGD, Optimizer
from vmem.parameters import STEPS, ParameterStore
from vmem.plan import Plan
from vmem.planning import make_budget, plan_with
from vmem.policies import POLICIES, Budget, check_policy
from vmem.policies.vdnn import check_trainable
from vmem.profiler.events import StepRecord
from vmem.units import format_bytes, parse_size

DTYPES = ("float32", "float64")


def resolve_network(network: str | os.PathLike[str] | Network) -> Network:
    """A Network as given, or loaded from a profile name or a TOML path."""
    if isinstance(network, Network):
        return network
    from vmem.profile import load_profile

    return load_profile(network).network


class Runtime:
    def __init__(self, network: str | os.PathLike[str] | Network, *, device: str = "auto",
                 policy: str = "none", memory_limit: int | str | None = None,
                 host_memory_limit: int | str | None = None, optimizer: Optimizer | None = None,
                 seed: int = 0, dtype: str = "float32", oracular: bool = False,
                 allocation: str = LIVENESS, batch: int | None = None,
                 threads: int | None = None) -> None:
        """`memory_limit`: the device capacity to emulate; one above the device's
        own memory (a sim GPU's, a CUDA device's) is refused. A limit no policy
        can meet at `batch` (the batch the steps will have, where known; else 1,
        below which nothing trains) is refused with MemoryLimitTooSmall before
        anything is allocated. `oracular`: a device with memory for everything,
        the reference that slowdowns are measured against (on sim, not even the
        modeled GPU's memory bounds it). `allocation`: "liveness" frees each map
        when it dies; "network-wide" keeps every map to the step's end (the vDNN
        paper's baseline). `optimizer`: vmem.SGD (the default, with momentum: one
        state buffer per parameter) or vmem.AdamW (two), on the device beside the
        weights and counted in every peak. `threads`: how many threads the NumPy
        kernels of a step split their work over (None: VMEM_THREADS, else the cores
        available); results are the same bits for every count."""
        self.threads = resolve_threads(threads)
        self.network = resolve_network(network)
        if dtype not in DTYPES:
            raise UsageError(f"dtype: unknown '{dtype}'; accepted: {', '.join(DTYPES)}")
        self.dtype = np.dtype(dtype)
        self.policy = policy
        self.seed = seed
        self.memory_limit = None if memory_limit is None else parse_size(memory_limit,
                                                                         "--memory-limit")
        host_limit = None if host_memory_limit is None else parse_size(host_memory_limit,
                                                                       "--host-memory-limit")
        check_policy(policy)
        self.allocation = check_allocation(allocation)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise UsageError(f"optimizer: expected vmem.SGD or vmem.AdamW, got "
                             f"{type(optimizer).__name__}")
        self.optimizer = optimizer or SGD()
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int)
                                  or batch < 1):
            raise UsageError(f"batch: must be a positive integer, got {batch!r}")
        self.backend = get_backend(device, self.memory_limit, bounded=not oracular)
        try:
            self._peak = PeakOracle(self.network, self.dtype, self.optimizer, allocation,
                                    self.backend.costs)
            check_network = getattr(self.backend.costs, "check_network", None)
            if check_network is not None:  # a calibration made for another network
                check_network(self.network)
            # before the parameters take their place: a limit no policy can meet
            # is refused by name, not as an allocation that fails on the way
            check_trainable(self.network, batch or 1, self.dtype.itemsize, self.budget())
            self.params = ParameterStore(self.backend, self.network, self.optimizer,
                                         self.dtype, seed)
        except BaseException:
            self.backend.close()
            raise
        self.host_pool = PinnedHostPool(self.backend.pinned_empty, host_limit)
        self._executors: dict[int, Executor] = {}
        self.steps = 0
        self.last_record: StepRecord | None = None
        self.num_classes = numel(self.network.shapes(1)[self.network.logits][1:])

    # -- the loop ----------------------------------------------------------------

    def train_step(self, x: Any, y: Any) -> float:
        """One training step on a batch (forward, loss, backward, the optimizer's
        update); returns the batch's mean loss."""
        batch = self._check_inputs(x)
        labels = self._check_labels(y, batch)
        executor = self.executor(batch)
        try:
            with using_threads(self.threads):
                result = executor.train_step(x, labels, self.steps,
                                             seed=(self.seed << 32) + self.steps)
        except OutOfDeviceMemory as exc:
            raise exc.with_hint(self._fitting_policies(batch)) from None
        self.steps += 1
        self.last_record = result.record
        return float(result.loss) if result.loss is not None else float("nan")

    def evaluate(self, x: Any) -> np.ndarray:
        """Class probabilities, shape (N, classes), as a NumPy array."""
        executor = self.executor(self._check_inputs(x))
        with using_threads(self.threads):
            return executor.evaluate(x)

    def executor(self, batch: int) -> Executor:
        """The executor for this batch size (a plan depends on the batch). A memory
        limit that no policy can meet is refused here, before the first step."""
        if batch not in self._executors:
            self._executors[batch] = Executor(self.backend, self.network, self.plan(batch),
                                              self.params, self.dtype, self.host_pool,
                                              self.backend.costs, self.allocation)
        return self._executors[batch]

    def budget(self) -> Budget:
        return make_budget(self.network, self.backend.arena.capacity, self._peak,
                           self.backend.costs, self.backend.untracked_slack)

    def plan(self, batch: int, policy: str | None = None) -> Plan:
        """The plan a policy makes for this batch under this runtime's budget."""
        return plan_with(self.network, policy or self.policy, batch, self.dtype.itemsize,
                         self.budget())

    def peak_bytes(self, plan: Plan) -> int:
        """Exact device peak of a step under a plan, from a dry run."""
        return self._peak(plan)

    def _fitting_policies(self, batch: int) -> str:
        """Which policies would fit the capacity, for an out-of-memory message."""
        fitting = []
        for name in POLICIES:
            if name == self.policy:
                continue
            try:
                plan = self.plan(batch, name)
            except VmemError:
                continue
            peak = self._peak(plan)
            if self.budget().fits(plan):
                fitting.append(f"{name} (peak {format_bytes(peak)})")
        if not fitting:
            return "no policy fits this limit"
        return "fits with --policy " + ", ".join(fitting)

    def set_memory_limit(self, memory_limit: int | str | None) -> None:
        """Change the emulated device capacity between steps (None: no limit but
        the device's own memory); a limit above the device's memory is refused."""
        limit = None if memory_limit is None else parse_size(memory_limit, "memory_limit")
        self.backend.check_memory_limit(limit)
        self.memory_limit = limit
        self.backend.set_capacity(limit)
        for executor in self._executors.values():  # plans depend on the budget
            executor.close()
        self._executors.clear()

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Device arrays by layer and name ("weight", "bias"); updated in place."""
        return {name: dict(entry.values) for name, entry in self.params.layers.items()
                if entry.values}

    def state_dict(self, optimizer: bool = False) -> dict[str, np.ndarray]:
        """Host copies of every parameter and layer state (BatchNorm's running
        statistics, "layer.running_mean"), keyed "layer.name". With `optimizer`, also
        the optimizer's buffers ("layer.name.velocity", "layer.name.exp_avg", ...)
        and "steps", the steps trained: a runtime with the same seed that loads it
        trains on exactly as this one would. `np.savez(path, **state)` saves it."""
        # np.array copies: on cpu, to_host gives the live array itself
        state = {key: np.array(self.backend.to_host(value))
                 for key, value in self.params.arrays(optimizer).items()}
        if optimizer:
            state[STEPS] = np.array(self.steps, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what `state_dict` gives (or `np.load` reads back): every parameter
        and layer state, and the optimizer's buffers with "steps" where the state holds them. Shapes
        must be this network's; a refused state dict changes nothing."""
        if not self.backend.runs_kernels:
            raise UsageError(f"load_state_dict: the {self.backend.name} backend holds no "
                             "parameter values to load into")
        steps = self.params.load(state, self.backend.write_from_host)
        if steps is not None:
            self.steps = steps

    @property
    def arena(self):  # noqa: ANN201 - DeviceArena, re-exported for users
        return self.backend.arena

    def close(self) -> None:
        for executor in self._executors.values():
            executor.close()
        self._executors.clear()
        self.host_pool.trim()
        self.params.release()
        self.backend.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ------------------------------------------------------------------

    def _check_inputs(self, x: Any) -> int:
        expected = self.network.shapes(1)[DATA][1:]
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 1 + len(expected) or shape[1:] != expected or shape[0] < 1:
            raise UsageError(f"inputs have shape {shape}; {self.network.name} expects "
                             f"(N, {', '.join(map(str, expected))}) with N >= 1")
        return shape[0]

    def _check_labels(self, y: Any, batch: int) -> Any:
        labels = y if hasattr(y, "dtype") else np.asarray(y)
        shape = tuple(getattr(labels, "shape", ()))
        if shape != (batch,):
            raise UsageError(f"labels have shape {shape}; expected ({batch},), one class "
                             "index per input")
        kind = getattr(getattr(labels, "dtype", None), "kind", "")
        if not kind or kind not in "iu":
            raise UsageError(f"labels must be integers, got dtype {labels.dtype}")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= self.num_classes:
            raise UsageError(f"labels must lie in [0, {self.num_classes}), got values "
                             f"from {low} to {high}")
        return labels
