"""Parameters, their gradients and optimizer state: device arrays that live for
the runtime's whole life, each with its arena block."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vmem.backends.base import Backend
from vmem.graph import Network
from vmem.layers.base import numel
from vmem.memory import Block, MemoryKind
from vmem.optim import Optimizer


@dataclass
class LayerParameters:
    values: dict[str, Any] = field(default_factory=dict)
    grads: dict[str, Any] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)  # param -> name -> array


class ParameterStore:
    def __init__(self, backend: Backend, network: Network, optimizer: Optimizer, dtype: np.dtype,
                 seed: int) -> None:
        self.backend, self.optimizer = backend, optimizer
        self.layers: dict[str, LayerParameters] = {}
        self.blocks: list[Block] = []
        self.updates = 0  # updates made so far: AdamW's bias correction counts them
        shapes = network.shapes(1)
        rng = np.random.default_rng(seed)
        try:
            for node in network.nodes:
                in_shapes = network.in_shapes(node, shapes)
                if backend.runs_kernels:
                    initial = node.layer.init_params(in_shapes, rng)
                else:  # no data: shapes are all a data-less backend needs
                    initial = {p: _Shaped(shape, np.dtype(dtype)) for p, shape in
                               node.layer.param_shapes(in_shapes).items()}
                entry = self.layers[node.name] = LayerParameters()
                for pname, host in initial.items():
                    host = host.astype(dtype, copy=False)
                    label = f"{node.name}.{pname}"
                    entry.values[pname] = self._place(host, MemoryKind.WEIGHTS, label)
                    entry.grads[pname] = self._place(_zeros_like(host), MemoryKind.WEIGHT_GRADS,
                                                     label + ".grad")
                    entry.state[pname] = {
                        s: self._place(_zeros_like(host), MemoryKind.OPTIMIZER, f"{label}.{s}")
                        for s in optimizer.state_names}
        except BaseException:
            self.release()
            raise

    def _place(self, host: Any, kind: MemoryKind, label: str) -> Any:
        self.blocks.append(self.backend.arena.allocate(host.nbytes, kind, label))
        return self.backend.asarray(host) if self.backend.runs_kernels else None

    def update(self) -> None:
        xp = self.backend.xp
        self.updates += 1
        for entry in self.layers.values():
            for pname, value in entry.values.items():
                self.optimizer.update(xp, value, entry.grads[pname], entry.state[pname],
                                      decay=pname != "bias", step=self.updates)

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


def _zeros_like(host: Any) -> Any:
    return host if isinstance(host, _Shaped) else np.zeros_like(host)
