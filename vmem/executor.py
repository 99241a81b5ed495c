"""The executor: one training step (forward, loss, backward, update) under a
plan on a backend, with every device buffer accounted in the arena.

Invariants:
- a buffer's block is allocated before the kernel that fills it is launched, so
  a step that would exceed the capacity fails before it computes;
- a feature map lives until its last forward consumer when nothing needs it in
  the backward pass, else until the backward pass of its earliest backward user;
- a gradient map lives from the first backward pass that produces it to the
  backward pass of its producer;
- after any failure inside a step, every block the step allocated is freed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmem.backends.base import Backend
from vmem.errors import OutOfDeviceMemory
from vmem.graph import DATA, Network, Node
from vmem.kernels.softmax import softmax
from vmem.layers.base import Algorithm, Context, Keeps, Shape, numel
from vmem.memory import Block, MemoryKind
from vmem.parameters import ParameterStore
from vmem.plan import Plan
from vmem.profiler.events import StepRecord
from vmem.profiler.recorder import StepRecorder

FORWARD, BACKWARD, UPDATE = "forward", "backward", "update"


@dataclass
class Tensor:
    block: Block
    array: Any  # None on a backend that runs no kernels


@dataclass(frozen=True)
class StepResult:
    loss: float | None
    record: StepRecord


class Executor:
    def __init__(self, backend: Backend, network: Network, plan: Plan,
                 params: ParameterStore, dtype: np.dtype) -> None:
        self.backend, self.network, self.plan, self.params = backend, network, plan, params
        self.dtype = np.dtype(dtype)
        self.batch = plan.batch
        self.shapes = network.shapes(self.batch)
        self.lives = network.lives
        self.algorithms = {node.name: self._algorithm(node) for node in network.nodes}
        self._where: tuple[str | None, str | None] = (None, None)
        self._tensors: dict[str, Tensor] = {}
        self._grads: dict[str, Tensor] = {}
        self._saved: dict[str, tuple[Block | None, tuple[Any, ...]]] = {}
        self._loose: list[Block] = []  # workspace and temporaries of the launch in flight

    def _algorithm(self, node: Node) -> Algorithm:
        choice = self.plan.for_layer(node.name).algorithm
        options = node.layer.algorithms(self._in_shapes(node), self.dtype.itemsize)
        for algorithm in options:
            if algorithm.name == choice:
                return algorithm
        raise ValueError(f"plan gives layer '{node.name}' algorithm '{choice}'; it has "
                         f"{', '.join(a.name for a in options)}")

    def _in_shapes(self, node: Node) -> tuple[Shape, ...]:
        return self.network.in_shapes(node, self.shapes)

    # -- steps ---------------------------------------------------------------

    def train_step(self, x: Any, labels: Any, step: int, seed: int) -> StepResult:
        recorder = StepRecorder(self.backend)
        try:
            ctx = Context(train=True, seed=seed, labels=self._labels(labels))
            loss_tensor = self._forward(x, ctx, recorder)
            self._backward(recorder, ctx)
            self._update(recorder)
            loss = self._read_scalar(loss_tensor)
            self._free(self._tensors.pop(self.network.loss.name).block)
            return StepResult(loss, recorder.finish(step, loss))
        except BaseException:
            self._abandon(recorder)
            raise

    def evaluate(self, x: Any) -> np.ndarray | None:
        """Class probabilities for x as a host array (no loss, nothing kept for
        backward); None on a backend that runs no kernels."""
        recorder = StepRecorder(self.backend)
        try:
            logits = self._forward(x, Context(train=False, seed=0), recorder,
                                   stop_at=self.network.logits)
            self._where = ("softmax", FORWARD)
            block = self._allocate_loose(logits.block.nbytes, MemoryKind.FEATURE_MAPS,
                                         "probabilities")
            probabilities = self._launch(recorder, "softmax", FORWARD, lambda: softmax(
                self.backend.xp, logits.array.reshape(self.batch, -1)))
            host = None if probabilities is None else self.backend.to_host(probabilities)
            self._free(block)
            self._free(self._tensors.pop(self.network.logits).block)
            recorder.finish(0, None)
            return host
        except BaseException:
            self._abandon(recorder)
            raise

    def _abandon(self, recorder: StepRecorder) -> None:
        """Return the arena to where it was before the step: wait for both streams
        (a copy in flight still reads its buffer), then free what the step held."""
        recorder.detach()
        try:
            self.backend.synchronize()
        except BaseException:  # the original error is the one to report
            pass
        blocks = [t.block for t in self._tensors.values()] + [t.block for t in self._grads.values()]
        blocks += [b for b, _ in self._saved.values() if b is not None] + self._loose
        for block in {b.id: b for b in blocks}.values():
            self.backend.arena.free(block)
        self._tensors.clear(), self._grads.clear(), self._saved.clear(), self._loose.clear()

    # -- memory ----------------------------------------------------------------

    def _allocate(self, nbytes: int, kind: MemoryKind, label: str) -> Block:
        try:
            return self.backend.arena.allocate(nbytes, kind, label)
        except OutOfDeviceMemory as exc:
            layer, phase = self._where
            raise exc.at(layer, phase) if layer else exc from None

    def _allocate_loose(self, nbytes: int, kind: MemoryKind, label: str) -> Block | None:
        if nbytes <= 0:
            return None
        block = self._allocate(nbytes, kind, label)
        self._loose.append(block)
        return block

    def _free(self, block: Block | None) -> None:
        if block is None:
            return
        if block in self._loose:
            self._loose.remove(block)
        self.backend.arena.free(block)

    def _tensor_bytes(self, name: str) -> int:
        return numel(self.shapes[name]) * self.dtype.itemsize

    # -- passes ----------------------------------------------------------------

    def _launch(self, recorder: StepRecorder, name: str, phase: str,
                op: Callable[[], Any]) -> Any:
        """Run op on the compute stream and record its span; returns op's result
        (None on a backend that runs no kernels)."""
        backend, result = self.backend, None

        def run() -> None:
            nonlocal result
            result = op()

        start = backend.mark(backend.compute)
        backend.launch(backend.compute, run if backend.runs_kernels else (lambda: None))
        recorder.span(name, phase, backend.compute, start, backend.mark(backend.compute))
        return result

    def _forward(self, x: Any, ctx: Context, recorder: StepRecorder,
                 stop_at: str | None = None) -> Tensor:
        """Run nodes in order; return the loss tensor, or, stopping before the loss,
        the `stop_at` tensor (the logits). Both stay in `_tensors` for the caller
        to free."""
        xp, lives = self.backend.xp, self.lives
        self._where = (DATA, FORWARD)
        data = Tensor(self._allocate(self._tensor_bytes(DATA), MemoryKind.FEATURE_MAPS, DATA),
                      self._to_device(x))
        self._tensors[DATA] = data
        for i, node in enumerate(self.network.nodes):
            if stop_at is not None and node.layer.IS_LOSS:
                break
            layer, algo = node.layer, self.algorithms[node.name]
            self._where = (node.name, FORWARD)
            in_shapes = self._in_shapes(node)
            inplace = lives[node.inputs[0]].inplace_into == i
            out_block = (self._tensors[node.inputs[0]].block if inplace else
                         self._allocate(self._tensor_bytes(node.name), MemoryKind.FEATURE_MAPS,
                                        node.name))
            if not inplace:
                self._loose.append(out_block)
            saved_bytes = layer.saved_bytes(in_shapes, self.dtype.itemsize) if ctx.train else 0
            saved_block = self._allocate_loose(saved_bytes, MemoryKind.SAVED, f"{node.name}.saved")
            workspace = self._allocate_loose(algo.workspace_bytes, MemoryKind.WORKSPACE,
                                             f"{node.name}.workspace")
            xs = [self._tensors[s].array for s in node.inputs]
            values = self.params.layers[node.name].values
            result = self._launch(recorder, node.name, FORWARD,
                                  lambda: layer.forward(xp, xs, values, algo, ctx))
            self._free(workspace)
            y, saved = result if result is not None else (None, ())
            if not inplace:
                self._loose.remove(out_block)
            if saved_block is not None:
                self._loose.remove(saved_block)
            self._tensors[node.name] = Tensor(out_block, y)
            if ctx.train:
                self._saved[node.name] = (saved_block, saved)
            for source in dict.fromkeys(node.inputs):
                life = lives[source]
                if life.inplace_into == i:
                    del self._tensors[source]  # its block now holds this node's output
                elif life.last_forward_use == i and not (ctx.train and life.backward_users):
                    self._free(self._tensors.pop(source).block)
        return self._tensors[stop_at or self.network.loss.name]

    def _backward(self, recorder: StepRecorder, ctx: Context) -> None:
        xp, lives, nodes = self.backend.xp, self.lives, self.network.nodes
        for i in reversed(range(len(nodes))):
            node = nodes[i]
            layer, algo = node.layer, self.algorithms[node.name]
            keeps = type(layer).KEEPS
            self._where = (node.name, BACKWARD)
            dy = None if layer.IS_LOSS else self._grads.pop(node.name)
            if dy is not None:
                self._loose.append(dy.block)
            workspace = self._allocate_loose(algo.workspace_bytes, MemoryKind.WORKSPACE,
                                             f"{node.name}.workspace")
            # One gradient buffer per distinct input; a second contribution to a
            # gradient map already made is a temporary, added in, then freed.
            targets: dict[str, tuple[Block, bool]] = {}
            for source in dict.fromkeys(node.inputs):
                if source == DATA:
                    continue
                if lives[source].inplace_into == i and dy is not None:
                    self._loose.remove(dy.block)
                    targets[source] = (dy.block, False)
                    continue
                accumulate = source in self._grads
                block = self._allocate_loose(self._tensor_bytes(source), MemoryKind.GRADIENT_MAPS,
                                             f"d{source}" + (".partial" if accumulate else ""))
                targets[source] = (block, accumulate)
            needs_dx = [s in targets for s in node.inputs]
            xs = [self._tensors[s].array if Keeps.INPUT in keeps else None for s in node.inputs]
            y = self._tensors[node.name].array if Keeps.OUTPUT in keeps else None
            saved_block, saved = self._saved.pop(node.name)
            entry = self.params.layers[node.name]
            in_shapes = self._in_shapes(node)
            result = self._launch(recorder, node.name, BACKWARD, lambda: layer.backward(
                xp, None if dy is None else dy.array, xs, y, entry.values, saved, algo,
                in_shapes, needs_dx))
            dxs, dparams = result if result is not None else ([None] * len(node.inputs), {})
            for pname, grad in dparams.items():
                entry.grads[pname] = grad
            dx_by_source = _sum_duplicates(node.inputs, dxs, xp)
            for source, (block, accumulate) in targets.items():
                array = dx_by_source.get(source)
                if accumulate:
                    existing = self._grads[source]
                    if array is not None:
                        existing.array += array
                    self._free(block)
                else:
                    if block in self._loose:
                        self._loose.remove(block)
                    self._grads[source] = Tensor(block, array)
            self._free(workspace)
            if dy is not None and dy.block not in [b for b, _ in targets.values()]:
                self._free(dy.block)
            self._free(saved_block)
            for name in dict.fromkeys((*node.inputs, node.name)):
                if lives[name].last_backward_use == i and name in self._tensors:
                    self._free(self._tensors.pop(name).block)
        self._grads.clear()  # nothing is left but gradients of data, never made

    def _update(self, recorder: StepRecorder) -> None:
        self._where = ("sgd", UPDATE)
        self._launch(recorder, "sgd", UPDATE, self.params.update)

    # -- host boundary ----------------------------------------------------------

    def _to_device(self, x: Any) -> Any:
        if not self.backend.runs_kernels:
            return None
        return self.backend.asarray(np.asarray(x, dtype=self.dtype)) \
            if isinstance(x, np.ndarray) else x.astype(self.dtype, copy=False)

    def _labels(self, labels: Any) -> Any:
        if not self.backend.runs_kernels:
            return None
        return self.backend.asarray(np.asarray(labels)) if isinstance(labels, np.ndarray) \
            else labels

    def _read_scalar(self, tensor: Tensor) -> float | None:
        return None if tensor.array is None else float(self.backend.to_host(tensor.array))


def _sum_duplicates(inputs: Sequence[str], dxs: Sequence[Any], xp: Any) -> dict[str, Any]:
    """Gradients by input tensor; a tensor read twice by one node gets both."""
    by_source: dict[str, Any] = {}
    for source, dx in zip(inputs, dxs, strict=True):
        if dx is None:
            continue
        by_source[source] = dx if source not in by_source else by_source[source] + dx
    return by_source
