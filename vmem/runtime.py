"""`Runtime`: the facade a user embeds in a training loop.

    with vmem.Runtime("alexnet", device="cuda", memory_limit="4GiB") as rt:
        for x, y in batches:
            loss = rt.train_step(x, y)
        probabilities = rt.evaluate(x_test)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from vmem.backends import ACCEPTED_DEVICES, get_backend
from vmem.checks import count_not_finite, not_finite, real_array
from vmem.dryrun import PeakOracle
from vmem.errors import (
    MemoryLimitTooSmall,
    NonFiniteError,
    OutOfDeviceMemory,
    RuntimeClosed,
    UpdateInterrupted,
    UsageError,
    VmemError,
)
from vmem.executor import LIVENESS, Executor, check_allocation
from vmem.graph import DATA, Network
from vmem.kernels.threads import resolve_threads, single_threaded_blas, using_threads
from vmem.kernels.workspace import lending
from vmem.memory import PinnedHostPool
from vmem.optim import SGD, LearningRate, Optimizer
from vmem.parameters import STEPS, ParameterStore
from vmem.plan import Plan
from vmem.planning import make_budget, plan_with
from vmem.policies import POLICIES, Budget, check_policy
from vmem.policies.vdnn import LIMIT_FLAG, check_trainable
from vmem.profiler.events import StepRecord
from vmem.units import format_bytes, parse_size

if TYPE_CHECKING:
    from vmem.profile import Profile

DTYPES = ("float32", "float64")


def resolve_network(network: str | os.PathLike[str] | Network | Profile) -> Network:
    """A Network as given, or a profile's, or loaded from a profile name or a TOML path."""
    return _resolve(network)[0]


def _resolve(network: str | os.PathLike[str] | Network | Profile
             ) -> tuple[Network, LearningRate]:
    """The network and its profile's learning rate (SGD's default for a bare Network)."""
    from vmem.profile import Profile, load_profile

    if isinstance(network, Network):
        return network, LearningRate()
    profile = network if isinstance(network, Profile) else load_profile(network)
    return profile.network, profile.learning_rate


class Runtime:
    def __init__(self, network: str | os.PathLike[str] | Network | Profile, *,
                 device: str = "auto",
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
        weights and counted in every peak; by default SGD at the profile's learning
        rate for each step's batch (`lr`, scaled linearly from `lr_batch`:
        profiles/README.md; 0.01 for a bare Network). `threads`: how many threads the NumPy
        kernels of a step split their work over (None: VMEM_THREADS, else the cores
        available); results are the same bits for every count."""
        self._closed = False
        self.threads = resolve_threads(threads)
        self.network, learning_rate = _resolve(network)
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise UsageError(f"dtype: unknown {dtype!r}; accepted: {', '.join(DTYPES)}")
        self.dtype = np.dtype(dtype)
        self.policy = policy
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise UsageError(f"seed: must be an integer >= 0, got {seed!r:.40}")
        self.seed = int(seed)
        if not isinstance(device, str):
            raise UsageError(f"device: expected a string, one of {ACCEPTED_DEVICES}; got "
                             f"{device!r:.40}")
        self.memory_limit = None if memory_limit is None else parse_size(memory_limit,
                                                                         "--memory-limit")
        host_limit = None if host_memory_limit is None else parse_size(host_memory_limit,
                                                                       "--host-memory-limit")
        check_policy(policy)
        self.allocation = check_allocation(allocation)
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise UsageError(f"optimizer: expected vmem.SGD or vmem.AdamW, got "
                             f"{type(optimizer).__name__}")
        if batch is not None:
            _check_batch(batch)
        self._batch_hint = batch or 1  # the batch a memory limit must let train
        # Where no optimizer is given, each step's SGD learning rate comes from the
        # profile's rule at that step's batch; an optimizer given is used as it is.
        self._learning_rate = None if optimizer is not None else learning_rate
        self.optimizer = optimizer or SGD(lr=learning_rate.at(self._batch_hint))
        self.backend = get_backend(device, self.memory_limit, bounded=not oracular)
        try:
            self._peak = PeakOracle(self.network, self.dtype, self.optimizer, allocation,
                                    costs=self.backend.costs)
            check_network = getattr(self.backend.costs, "check_network", None)
            if check_network is not None:  # a calibration made for another network
                check_network(self.network)
            # before the parameters take their place: a limit no policy can meet
            # is refused by name, not as an allocation that fails on the way
            check_trainable(self.network, self._batch_hint, self.dtype.itemsize, self.budget())
            self.params = ParameterStore(self.backend, self.network, self.optimizer,
                                         self.dtype, seed)
        except BaseException:
            self.backend.close()
            raise
        self.host_pool = PinnedHostPool(self.backend.pinned_empty, host_limit)
        self._executors: dict[int, Executor] = {}
        self._evaluation_batch: int | None = None  # the largest batch that fits, once known
        self.last_record: StepRecord | None = None
        self.num_classes = self.network.classes  # for a language model, its vocabulary

    # -- the loop ----------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Steps trained: updates applied (a refused step is not counted)."""
        return self.params.updates

    def train_step(self, x: Any, y: Any) -> float:
        """One training step on a batch (forward, loss, backward, the optimizer's
        update); returns the batch's mean loss. x: inputs (N, ...), or for a
        language model token ids (N, T); y: class indices (N,), or the next-token
        ids (N, T). A NaN or infinite loss or gradient raises NonFiniteError and the
        update is not applied."""
        self._check_usable("train_step")
        x = self._checked_inputs(x)
        batch = x.shape[0]
        labels = self._check_labels(y, batch)
        executor = self.executor(batch)
        self._scale_learning_rate(batch)
        try:
            with using_threads(self.threads), single_threaded_blas(), lending():
                result = executor.train_step(x, labels, self.steps,
                                             seed=(self.seed << 32) + self.steps)
        except OutOfDeviceMemory as exc:
            raise exc.with_hint(self._fitting_policies(batch)) from None
        except NonFiniteError as exc:
            self._blame_inputs(x, exc)
            raise
        self.last_record = result.record
        return float(result.loss) if result.loss is not None else float("nan")

    def _scale_learning_rate(self, batch: int) -> None:
        """The default optimizer at the profile's learning rate for `batch`; its
        state (the velocity) carries over, as only the rate changes."""
        if self._learning_rate is None:
            return
        lr = self._learning_rate.at(batch)
        if lr != self.optimizer.lr:
            self.optimizer = replace(self.optimizer, lr=lr)
            self.params.optimizer = self.optimizer

    def evaluate(self, x: Any) -> np.ndarray:
        """Class probabilities, shape (N, classes), as a NumPy array (for a language
        model, each position's next-token distribution, (N, T, vocab)); in batches of
        the largest size that fits the memory limit where all N do not. NaN or
        infinite probabilities raise NonFiniteError."""
        self._check_usable("evaluate")
        x = self._checked_inputs(x)
        total = x.shape[0]
        size = self._evaluation_size(total)
        with using_threads(self.threads), single_threaded_blas(), lending():
            parts = [self.executor(len(part)).evaluate(part)
                     for part in (x[i:i + size] for i in range(0, total, size))]
        if parts[0] is None:  # a backend without data
            return None  # type: ignore[return-value]
        probabilities = parts[0] if len(parts) == 1 else np.concatenate(parts)
        bad = count_not_finite(probabilities, probabilities.dtype)
        if bad:
            error = NonFiniteError(f"non-finite probabilities in evaluate: {bad:,} of "
                                   f"{probabilities.size:,} are NaN or infinite; the "
                                   "parameters or inputs overflow float range")
            self._blame_inputs(x, error)
            raise error
        return probabilities

    def _blame_inputs(self, x: Any, error: NonFiniteError) -> None:
        """Where inputs on the host hold NaN or infinities, raise that instead of
        `error`: looked for only once a step has gone non-finite, so a good step
        pays nothing for it."""
        if not isinstance(x, np.ndarray):
            return
        bad = count_not_finite(x, self.dtype)
        if bad:
            was = f"; step {error.step} was not applied" if error.step is not None else ""
            raise NonFiniteError(f"inputs: {not_finite(bad, self.dtype)}{was}",
                                 step=error.step) from None

    def _evaluation_size(self, total: int) -> int:
        """The largest batch up to `total` whose plan fits the memory limit: a
        training step's peak bounds evaluation's (nothing kept, nothing saved),
        and batch 1 trains, or the runtime would have been refused."""
        if total in self._executors or self._fits(total):
            return total
        low = self._evaluation_batch or 1  # fits
        if low >= total or not self._fits(low):
            low = 1
        high = total  # does not fit
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._fits(middle) else (low, middle)
        self._evaluation_batch = low
        return low

    def _fits(self, batch: int) -> bool:
        try:
            plan = self.plan(batch)
        except MemoryLimitTooSmall:
            return False
        return self.budget().fits(plan)

    def executor(self, batch: int) -> Executor:
        """The executor for this batch size (a plan depends on the batch). A memory
        limit that no policy can meet is refused here, before the first step."""
        self._check_open("executor")
        if batch not in self._executors:
            self._executors[batch] = Executor(self.backend, self.network, self.plan(batch),
                                              self.params, self.dtype, self.host_pool,
                                              self.backend.costs, self.allocation)
        return self._executors[batch]

    def budget(self) -> Budget:
        """What a policy may spend on this runtime's device: its capacity and dry runs."""
        self._check_open("budget")
        bound = LIMIT_FLAG if self.memory_limit is not None else f"{self.backend.name}'s memory"
        return make_budget(self.network, self.backend.arena.capacity, self._peak, bound)

    def plan(self, batch: int, policy: str | None = None) -> Plan:
        """The plan a policy makes for this batch under this runtime's budget."""
        self._check_open("plan")
        _check_batch(batch)
        return plan_with(self.network, policy or self.policy, batch, self.dtype.itemsize,
                         self.budget())

    def peak_bytes(self, plan: Plan) -> int:
        """Exact device peak of a step under a plan, from a dry run."""
        self._check_open("peak_bytes")
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
        self._check_open("set_memory_limit")
        limit = None if memory_limit is None else parse_size(memory_limit, "memory_limit")
        self.backend.check_memory_limit(limit)
        in_use = self.arena.in_use
        if limit is not None and limit < in_use:
            raise MemoryLimitTooSmall(
                f"memory_limit: {format_bytes(limit)} is less than the {format_bytes(in_use)} "
                f"({in_use:,} bytes) this runtime holds (its parameters, gradients and "
                "optimizer state); accepted: a larger size, or None for no limit")
        previous = self.arena.capacity
        self.backend.set_capacity(limit)
        try:  # the batch the runtime was made for must still train
            check_trainable(self.network, self._batch_hint, self.dtype.itemsize, self.budget())
        except BaseException:
            self.backend.set_capacity(previous)
            raise
        self.memory_limit = limit
        self._evaluation_batch = None
        for executor in self._executors.values():  # plans depend on the budget
            executor.close()
        self._executors.clear()

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Device arrays by layer and name ("weight", "bias"); updated in place."""
        self._check_usable("parameters")
        return {name: dict(entry.values) for name, entry in self.params.layers.items()
                if entry.values}

    def state_dict(self, optimizer: bool = False) -> dict[str, np.ndarray]:
        """Host copies of every parameter and layer state (BatchNorm's running
        statistics, "layer.running_mean"), keyed "layer.name". With `optimizer`, also
        the optimizer's buffers ("layer.name.velocity", "layer.name.exp_avg", ...)
        and "steps", the steps trained: a runtime with the same seed that loads it
        trains on exactly as this one would. `np.savez(path, **state)` saves it."""
        self._check_usable("state_dict")
        state = {key: self.backend.to_host(value)
                 for key, value in self.params.arrays(optimizer).items()}
        if optimizer:
            state[STEPS] = np.array(self.steps, dtype=np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what `state_dict` gives (or `np.load` reads back): every parameter
        and layer state, and the optimizer's buffers with "steps" where the state holds
        them. Shapes must be this network's, values finite; a refused state dict
        changes nothing. After an interrupted update, one with the optimizer's state is
        the way to go on."""
        self._check_open("load_state_dict")
        if not self.backend.runs_kernels:
            raise UsageError(f"load_state_dict: the {self.backend.name} backend holds no "
                             "parameter values to load into")
        self.params.load(state, self.backend.write_from_host)

    @property
    def arena(self):  # noqa: ANN201 - DeviceArena, re-exported for users
        return self.backend.arena

    def close(self) -> None:
        """Release everything the runtime holds; a closed runtime refuses every call.
        Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            for executor in self._executors.values():
                executor.close()
            self._executors.clear()
            self.host_pool.trim()
            self.params.release()
        finally:
            self.backend.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ------------------------------------------------------------------

    def _check_open(self, call: str) -> None:
        if self._closed:
            raise RuntimeClosed(f"{call}: this runtime is closed and holds nothing any more; "
                                "make a new vmem.Runtime")

    def _check_usable(self, call: str) -> None:
        """Open, and with every parameter from one update (none half-made)."""
        self._check_open(call)
        if self.params.interrupted is not None:
            raise UpdateInterrupted(
                f"{call}: the optimizer's update of step {self.steps + 1} was interrupted "
                f"({self.params.interrupted}), leaving the parameters partly updated; to go "
                "on, load a state dict saved with state_dict(optimizer=True) "
                "(runtime.load_state_dict(state)), or make a new vmem.Runtime")

    def _checked_inputs(self, x: Any) -> Any:
        """The inputs, checked for shape and dtype before anything is allocated; a
        NumPy array converted to the runtime's dtype where the backend computes."""
        tokens = self.network.takes_tokens
        what = "token ids" if tokens else "inputs"
        x = real_array(x, what, f"integers in [0, {self.network.vocab})" if tokens else
                       f"a real numeric or boolean array convertible to {self.dtype}")
        expected = self.network.shapes(1)[DATA][1:]
        shape = tuple(x.shape)
        if len(shape) != 1 + len(expected) or shape[1:] != expected or shape[0] < 1:
            raise UsageError(f"{what} have shape {shape}; {self.network.name} expects "
                             f"(N, {', '.join(map(str, expected))}) with N >= 1")
        if tokens:  # the executor copies them to the device as TOKEN_DTYPE
            return _check_ids(x, what, self.network.vocab)
        if not isinstance(x, np.ndarray) or not self.backend.runs_kernels:
            return x  # a device array, or shapes alone for a backend without data
        with np.errstate(all="ignore"):  # beyond float32's range: infinite, found if it matters
            return np.asarray(x, dtype=self.dtype)

    def _check_labels(self, y: Any, batch: int) -> Any:
        tokens = self.network.takes_tokens
        ids = "next-token ids" if tokens else "class ids"
        accepted = f"integer {ids} in [0, {self.num_classes})"
        labels = real_array(y, "labels", accepted)
        if labels.dtype.kind not in "iu":
            raise UsageError(f"labels: dtype {labels.dtype} is not accepted; accepted: "
                             f"{accepted}")
        shape, expected = tuple(labels.shape), self.network.label_shape(batch)
        if shape != expected:
            one = "next-token id per position" if tokens else "class index per input"
            raise UsageError(f"labels have shape {shape}; expected {expected}, one {one}")
        return _check_ids(labels, "labels", self.num_classes)


def _check_ids(ids: Any, what: str, bound: int) -> Any:
    """Class indices or token ids: integers in [0, bound), else one UsageError line.
    Host arrays are checked on the host; device arrays cost one sync."""
    if ids.dtype.kind not in "iu":
        raise UsageError(f"{what} must be integers in [0, {bound}), got dtype {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= bound:
        raise UsageError(f"{what} must lie in [0, {bound}), got values from {low} to {high}")
    return ids


def _check_batch(batch: Any) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch: must be a positive integer, got {batch!r:.40}")
