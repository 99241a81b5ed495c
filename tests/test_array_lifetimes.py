"""No device array outlives its arena block: once the executor frees a block, nothing it
holds still references the array that lived in it. On cuda the arena frees a block at
the moment the plan says, but CuPy frees the memory only when the last reference goes,
so a reference kept past its block makes CuPy hold bytes the arena has given away.

Every array the executor files under a block (a feature or gradient map, a layer's saved
state) is watched with a weak reference; at each allocation (when a device would need
memory) and at the end of each step, the arrays of every block freed so far must be gone.
"""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from networks import recomputing

from vmem import executor as executor_module
from vmem.backends import get_backend
from vmem.executor import Executor
from vmem.graph import Network
from vmem.memory import ArenaEvent, Block, PinnedHostPool
from vmem.optim import SGD
from vmem.parameters import ParameterStore
from vmem.plan import Plan
from vmem.policies.vdnn import build_plan, offload_kept_inputs, offload_nothing
from vmem.profile import load_profile

BATCH = 2


class Lifetimes:
    """Weak references to the arrays filed under each block not yet checked, and the
    blocks freed since the last check."""

    def __init__(self) -> None:
        self.arrays: dict[int, list[tuple[str, weakref.ref]]] = {}
        self.freed: set[int] = set()
        self.outlived: list[str] = []
        self.watched = self.checked = 0

    def watch(self, block: Block | None, value: Any) -> None:
        if block is None:
            return
        values = value if isinstance(value, tuple) else (value,)
        for array in values:
            if isinstance(array, np.ndarray):
                self.arrays.setdefault(block.id, []).append((block.label, weakref.ref(array)))
                self.watched += 1

    def on_event(self, event: ArenaEvent) -> None:
        if event.op == "free":
            self.freed.add(event.block.id)
        else:
            self.check(f"allocating {event.block.label}")

    def alive(self) -> list[str]:
        """Labels of freed blocks whose arrays are still referenced, leaving out an array
        the executor filed again under a live block (a layer that wrote its result over
        an input, as dropout's backward pass writes over its output gradient): its
        memory is counted there."""
        refiled = {id(array) for block, refs in self.arrays.items() if block not in self.freed
                   for _, ref in refs if (array := ref()) is not None}
        return [label for block in self.freed for label, ref in self.arrays.get(block, ())
                if (array := ref()) is not None and id(array) not in refiled]

    def check(self, when: str) -> None:
        if self.alive():
            gc.collect()  # only references, not garbage waiting for a collection, count
            self.outlived += [f"{label} (freed, still referenced when {when})"
                              for label in self.alive()]
        for block in self.freed:
            self.checked += len(self.arrays.pop(block, ()))
        self.freed.clear()


@pytest.fixture
def lifetimes(monkeypatch: pytest.MonkeyPatch) -> Lifetimes:
    watched = Lifetimes()

    @dataclass
    class WatchedTensor(executor_module.Tensor):
        def __post_init__(self) -> None:
            watched.watch(self.block, self.array)

    class WatchedSaved(dict):
        def __setitem__(self, name: str, entry: tuple[Block | None, tuple[Any, ...]]) -> None:
            watched.watch(entry[0], entry[1])
            super().__setitem__(name, entry)

    original_init = Executor.__init__

    def init(self: Executor, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._saved = WatchedSaved()

    monkeypatch.setattr(executor_module, "Tensor", WatchedTensor)
    monkeypatch.setattr(Executor, "__init__", init)
    return watched


CASES = [("vgg16-tiny", "none"), ("vgg16-tiny", "vdnn-all, recomputing"),
         ("googlenet-tiny", "vdnn-all, recomputing"), ("resnet18-tiny", "vdnn-all, recomputing")]


def plan_for(network: Network, which: str) -> Plan:
    if which == "none":
        return build_plan("none", network, BATCH, 4, offload_nothing)
    return recomputing(network, build_plan("vdnn-all", network, BATCH, 4, offload_kept_inputs))


@pytest.mark.parametrize(("profile", "which"), CASES)
def test_no_array_outlives_its_block(lifetimes: Lifetimes, profile: str, which: str) -> None:
    """Forward, offloads, prefetches, recomputations, backward, update and evaluate,
    on a chain (VGG), on branches that join (GoogLeNet's inception modules) and on
    residual additions with batch normalization (ResNet)."""
    network = load_profile(profile).network
    backend = get_backend("cpu")
    params = ParameterStore(backend, network, SGD(), np.dtype("float32"), seed=3)
    executor = Executor(backend, network, plan_for(network, which), params,
                        np.dtype("float32"), PinnedHostPool(backend.pinned_empty))
    backend.arena.observers.append(lifetimes.on_event)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *network.input_shape), dtype=np.float32)
    y = rng.integers(0, network.shapes(1)[network.logits][1], BATCH)
    try:
        executor.train_step(x, y, 0, seed=0)
        lifetimes.check("the step ended")
        executor.evaluate(x)
        lifetimes.check("evaluate ended")
    finally:
        executor.close()
        params.release()
        backend.close()
    # the watch saw a map of every layer come and go
    assert lifetimes.checked >= len(network.nodes)
    assert lifetimes.outlived == []
