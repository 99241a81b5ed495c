"""Parameters, their gradients, optimizer state and layer state (BatchNorm's
running statistics): device arrays that live for the runtime's whole life, each
with its arena block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmem.backends.base import Backend
from vmem.checks import count_not_finite, not_finite
from vmem.errors import UsageError
from vmem.graph import Network
from vmem.layers.base import numel
from vmem.memory import Block, MemoryKind
from vmem.optim import Optimizer, apply_updates

#: The state dict key of the steps trained, saved with the optimizer's state (AdamW's
#: bias correction and dropout's masks depend on it).
STEPS = "steps"
#: The most steps a runtime trains: dropout seeds each step with (seed << 32) + step,
#: so a step count past 32 bits would replay another seed's masks.
MAX_STEPS = 2**32 - 1


@dataclass
class LayerParameters:
    """A layer's own parameters and state, and the parameters it uses of other layers
    (`shared`, local name -> (owner, its name there)), which live in the owner's
    entry only."""

    values: dict[str, Any] = field(default_factory=dict)
    grads: dict[str, Any] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)  # param -> name -> array
    buffers: dict[str, Any] = field(default_factory=dict)  # the layer's state, never trained
    shared: dict[str, tuple[str, str]] = field(default_factory=dict)

    def for_layer(self) -> dict[str, Any]:
        """What a layer's own passes read as `params`: its parameters and its state."""
        return self.values | self.buffers if self.buffers else self.values


class ParameterStore:
    def __init__(self, backend: Backend, network: Network, optimizer: Optimizer, dtype: np.dtype,
                 seed: int) -> None:
        self.backend, self.optimizer, self.dtype = backend, optimizer, np.dtype(dtype)
        self.layers: dict[str, LayerParameters] = {}
        self.blocks: list[Block] = []
        self.updates = 0  # updates made so far: the steps trained (AdamW's bias correction)
        # Why the last update stopped part way (some parameters new, some old), or None
        self.interrupted: str | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}  # "layer.param[.state]" -> shape
        shapes = network.shapes(1)
        rng = np.random.default_rng(seed)
        try:
            for node in network.nodes:
                in_shapes = network.in_shapes(node, shapes)
                if backend.runs_kernels:
                    initial = node.layer.init_params(in_shapes, rng)
                    states = node.layer.init_state(in_shapes)
                else:  # no data: shapes are all a data-less backend needs
                    param_shapes, state_shapes = network.layer_shapes[node.name]
                    initial = {p: _Shaped(shape, np.dtype(dtype)) for p, shape in
                               param_shapes.items()}
                    states = {s: _Shaped(shape, np.dtype(dtype)) for s, shape in
                              state_shapes.items()}
                entry = self.layers[node.name] = LayerParameters()
                for sname, host in states.items():
                    entry.buffers[sname] = self._place(host.astype(dtype, copy=False),
                                                       MemoryKind.STATE, f"{node.name}.{sname}")
                for pname, host in initial.items():
                    host = host.astype(dtype, copy=False)
                    label = f"{node.name}.{pname}"
                    entry.values[pname] = self._place(host, MemoryKind.WEIGHTS, label)
                    entry.grads[pname] = self._place(_zeros_like(host), MemoryKind.WEIGHT_GRADS,
                                                     label + ".grad")
                    entry.state[pname] = {
                        s: self._place(_zeros_like(host), MemoryKind.OPTIMIZER, f"{label}.{s}")
                        for s in optimizer.state_names}
                entry.shared = {local: (use.owner, use.param) for local, use in
                                node.layer.shared_params(in_shapes).items()}
        except BaseException:
            self.release()
            raise

    def _place(self, host: Any, kind: MemoryKind, label: str) -> Any:
        self.blocks.append(self.backend.arena.allocate(host.nbytes, kind, label))
        if kind != MemoryKind.WEIGHT_GRADS:
            self.shapes[label] = tuple(host.shape)
        return self.backend.asarray(host) if self.backend.runs_kernels else None

    @contextlib.contextmanager
    def updating(self) -> Iterator[int]:
        """Around an update: gives its number (1 for the first) and counts it once
        it is done. One that fails part way leaves some parameters updated and some
        not, which no later step may build on: `interrupted` says so until a state
        dict with the optimizer's state is loaded."""
        if self.updates >= MAX_STEPS:
            raise UsageError(f"a runtime trains at most {MAX_STEPS:,} steps (its dropout "
                             "seeds would repeat after that)")
        try:
            yield self.updates + 1
        except BaseException as exc:
            self.interrupted = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise
        self.updates += 1

    def values_of(self, layer: str) -> dict[str, Any]:
        """What a layer's passes read as `params`, by local name: its parameters and
        state, and the parameters it shares (the owner's very arrays)."""
        entry = self.layers[layer]
        if not entry.shared:
            return entry.for_layer()
        return entry.for_layer() | {local: self.layers[owner].values[param]
                                    for local, (owner, param) in entry.shared.items()}

    def trained(self, layer: str) -> dict[str, tuple[str, str]]:
        """The parameters a layer's backward pass gives gradients of, by local name,
        and where each lives: (owner layer, its name there)."""
        entry = self.layers[layer]
        return {pname: (layer, pname) for pname in entry.values} | entry.shared

    def update(self, step: int) -> None:
        """The optimizer's in-place update of every parameter, as update number `step`."""
        xp = self.backend.xp
        apply_updates(xp, [self.optimizer.update_of(xp, value, entry.grads[pname],
                                                    entry.state[pname],
                                                    decay=pname != "bias", step=step)
                           for entry in self.layers.values()
                           for pname, value in entry.values.items()])

    def layer_state(self) -> list[Any]:
        """The layers' state arrays (BatchNorm's running statistics), in a fixed order."""
        return [buffer for entry in self.layers.values() for buffer in entry.buffers.values()]

    def gradients(self) -> tuple[list[str], list[Any]]:
        """The weight gradients of the last backward pass, with their "layer.param" names."""
        names, grads = [], []
        for layer, entry in self.layers.items():
            for pname, grad in entry.grads.items():
                names.append(f"{layer}.{pname}")
                grads.append(grad)
        return names, grads

    def arrays(self, optimizer: bool) -> dict[str, Any]:
        """Device arrays by name: "layer.param" and the layers' state ("layer.running_mean"),
        and with `optimizer` the optimizer's buffers too ("layer.param.velocity",
        "layer.param.exp_avg", ...)."""
        arrays = {}
        for layer, entry in self.layers.items():
            for pname, value in entry.values.items():
                arrays[f"{layer}.{pname}"] = value
                if optimizer:
                    arrays.update({f"{layer}.{pname}.{s}": buffer
                                   for s, buffer in entry.state[pname].items()})
            arrays.update({f"{layer}.{sname}": value for sname, value in entry.buffers.items()})
        return arrays

    def load(self, state: Mapping[str, Any], write: Callable[[Any, np.ndarray], None]
             ) -> int | None:
        """Copy a state dict's arrays into the device arrays with `write`. Every
        parameter must be there; the optimizer's buffers and STEPS all or none. All
        is checked before anything is written, so a refused state changes nothing.
        Returns the steps loaded with the optimizer's state, or None without it."""
        if not isinstance(state, Mapping):
            raise UsageError(f"state dict: expected a mapping of names to arrays (what "
                             f"state_dict() gives or np.load reads back), got "
                             f"{type(state).__name__}")
        weights = self.arrays(optimizer=False)
        everything = self.arrays(optimizer=True)
        given = set(state)
        missing = [k for k in weights if k not in given]
        if missing:
            raise UsageError(f"state dict: no {_listed(missing)}; it needs every parameter "
                             f"and layer state of the network ({len(weights)})")
        unknown = sorted(given - set(everything) - {STEPS})
        if unknown:
            raise UsageError(f"state dict: unknown {_listed(unknown)}; expected parameters "
                             f"(\"layer.param\") and, optionally, all of the "
                             f"{self.optimizer.name} optimizer's buffers with '{STEPS}'")
        training = [*(k for k in everything if k not in weights), STEPS]
        with_optimizer = bool(given - set(weights))
        lacking = [k for k in training if k not in given] if with_optimizer else []
        if lacking:
            raise UsageError(f"state dict: has some of the {self.optimizer.name} optimizer's "
                             f"state but no {_listed(lacking)}; give all of it or none")
        if self.interrupted and not with_optimizer:
            raise UsageError(f"state dict: after an interrupted update the optimizer's state "
                             f"is partly updated too; load a state dict with the optimizer's "
                             f"state (state_dict(optimizer=True)) and '{STEPS}'")
        chosen = everything if with_optimizer else weights
        hosts = {key: _checked(key, state[key], self.shapes[key], self.dtype) for key in chosen}
        steps = _steps(state[STEPS]) if with_optimizer else None
        for key, host in hosts.items():
            write(chosen[key], host)
        if steps is not None:
            self.updates = steps
            self.interrupted = None
        return steps

    def release(self) -> None:
        for block in self.blocks:
            self.backend.arena.free(block)
        self.blocks.clear()
        self.layers.clear()


@dataclass(frozen=True)
class _Shaped:
    """A parameter's shape and dtype, standing in for its values where a backend
    holds no data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.dtype.itemsize

    def astype(self, dtype: Any, copy: bool = False) -> _Shaped:
        return _Shaped(self.shape, np.dtype(dtype))


def _steps(value: Any) -> int:
    host = np.asarray(value)
    if host.shape != () or host.dtype.kind not in "iu" or not 0 <= int(host) <= MAX_STEPS:
        raise UsageError(f"state dict: '{STEPS}' must be an integer from 0 to 2**32 - 1 (the "
                         f"steps trained), got {value!r:.40}")
    return int(host)


def _listed(keys: list[str]) -> str:
    more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
    return f"'{keys[0]}'{more}"


def _checked(key: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A state dict entry as a host array of the expected shape, or a UsageError."""
    host = np.asarray(value)
    if host.dtype.kind != "f":
        raise UsageError(f"state dict: '{key}' has dtype {host.dtype}; expected a floating "
                         "array")
    if host.shape != shape:
        raise UsageError(f"state dict: '{key}' has shape {host.shape}; this network's is "
                         f"{shape}")
    bad = count_not_finite(host, dtype)
    if bad:
        raise UsageError(f"state dict: '{key}': {not_finite(bad, dtype)}")
    return host


def _zeros_like(host: Any) -> Any:
    return host if isinstance(host, _Shaped) else np.zeros_like(host)
