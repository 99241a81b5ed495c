"""`Runtime`: the facade a user embeds in a training loop.

    with vmem.Runtime("alexnet", device="cuda", memory_limit="4GiB") as rt:
        for x, y in batches:
            loss = rt.train_step(x, y)
        probabilities = rt.evaluate(x_test)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vmem.backends import get_backend
from vmem.errors import UsageError
from vmem.executor import Executor
from vmem.graph import DATA, Network
from vmem.layers.base import numel
from vmem.optim import SGD
from vmem.parameters import ParameterStore
from vmem.policies import make_plan
from vmem.profiler.events import StepRecord
from vmem.units import parse_size

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
                 optimizer: SGD | None = None, seed: int = 0, dtype: str = "float32") -> None:
        self.network = resolve_network(network)
        if dtype not in DTYPES:
            raise UsageError(f"dtype: unknown '{dtype}'; accepted: {', '.join(DTYPES)}")
        self.dtype = np.dtype(dtype)
        self.policy = policy
        self.seed = seed
        self.memory_limit = None if memory_limit is None else parse_size(memory_limit,
                                                                         "--memory-limit")
        make_plan(policy, self.network, 1, self.dtype.itemsize)  # an unknown policy fails here
        self.backend = get_backend(device, self.memory_limit)
        try:
            self.params = ParameterStore(self.backend, self.network, optimizer or SGD(),
                                         self.dtype, seed)
        except BaseException:
            self.backend.close()
            raise
        self._executors: dict[int, Executor] = {}
        self.steps = 0
        self.last_record: StepRecord | None = None
        self.num_classes = numel(self.network.shapes(1)[self.network.logits][1:])

    # -- the loop ----------------------------------------------------------------

    def train_step(self, x: Any, y: Any) -> float:
        """One step of SGD on a batch; returns the batch's mean loss."""
        batch = self._check_inputs(x)
        labels = self._check_labels(y, batch)
        result = self.executor(batch).train_step(x, labels, self.steps,
                                                 seed=(self.seed << 32) + self.steps)
        self.steps += 1
        self.last_record = result.record
        return float(result.loss) if result.loss is not None else float("nan")

    def evaluate(self, x: Any) -> np.ndarray:
        """Class probabilities, shape (N, classes), as a NumPy array."""
        return self.executor(self._check_inputs(x)).evaluate(x)

    def executor(self, batch: int) -> Executor:
        """The executor for this batch size (a plan depends on the batch)."""
        if batch not in self._executors:
            plan = make_plan(self.policy, self.network, batch, self.dtype.itemsize)
            self._executors[batch] = Executor(self.backend, self.network, plan, self.params,
                                              self.dtype)
        return self._executors[batch]

    def set_memory_limit(self, memory_limit: int | str | None) -> None:
        """Change the emulated device capacity between steps (None: no limit)."""
        self.memory_limit = None if memory_limit is None else parse_size(memory_limit,
                                                                         "memory_limit")
        self.backend.set_capacity(self.memory_limit)

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        """Device arrays by layer and name ("weight", "bias"); updated in place."""
        return {name: dict(entry.values) for name, entry in self.params.layers.items()
                if entry.values}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter, keyed "layer.name"."""
        return {f"{layer}.{name}": self.backend.to_host(value)
                for layer, values in self.parameters.items() for name, value in values.items()}

    @property
    def arena(self):  # noqa: ANN201 - DeviceArena, re-exported for users
        return self.backend.arena

    def close(self) -> None:
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
