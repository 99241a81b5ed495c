"""The executor: one training step (forward, loss, backward, update) under a
plan on a backend, with every device buffer accounted in the arena, and, where
the plan says so, feature maps moved to pinned host memory during the forward
pass and back during the backward pass on the memory stream (vDNN).

Invariants:
- a buffer's block is allocated before the kernel that fills it is launched, so
  a step that would exceed the capacity fails before it computes;
- a feature map lives until its last forward consumer when nothing needs it in
  the backward pass, else until the backward pass of its earliest backward user;
- an offloaded feature map's copy to the host starts with its last forward
  consumer; its device block is freed at the end of that layer (vDNN's
  end-of-layer synchronization) or of the later layer its `Move` names, once
  the copy has completed (the host waits for the copy's event); it returns
  before its first backward user, which waits for the copy's event on the
  compute stream, with the copy back started where its `Move` says (else by
  vDNN's rule);
- a feature map the plan recomputes is freed after its last forward consumer,
  like one with no backward user, and computed again, by its layer's forward
  pass on the inputs the device still holds (brought back first where they are
  on the host), just before its first backward user; it then lives as a
  prefetched map does;
- a gradient map lives from the first backward pass that produces it to the
  backward pass of its producer;
- after any failure inside a step, every block the step allocated is freed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from vmem.backends.base import Backend, Event
from vmem.costs import CostModel
from vmem.errors import NonFiniteError, OutOfDeviceMemory, UsageError
from vmem.graph import DATA, Network, Node
from vmem.kernels import elementwise
from vmem.kernels.softmax import softmax
from vmem.layers.base import Algorithm, Context, Keeps, Shape, numel
from vmem.memory import Block, HostBuffer, MemoryKind, PinnedHostPool
from vmem.optim import update_traffic
from vmem.parameters import ParameterStore
from vmem.plan import Plan, move_schedule, offloaded_tensors, recompute_schedule
from vmem.profiler.events import StepRecord
from vmem.profiler.recorder import StepRecorder

FORWARD, BACKWARD, UPDATE, RECOMPUTE = "forward", "backward", "update", "recompute"
# Liveness: a map is freed the moment no step needs it. Network-wide: every
# feature and gradient map is kept to the step's end, as Torch allocated them
# when vDNN was written (the paper's baseline).
LIVENESS, NETWORK_WIDE = "liveness", "network-wide"
ALLOCATIONS = (LIVENESS, NETWORK_WIDE)


def check_allocation(allocation: str) -> str:
    if allocation not in ALLOCATIONS:
        raise UsageError(f"--allocation: unknown mode '{allocation}'; accepted: "
                         f"{', '.join(ALLOCATIONS)}")
    return allocation


@dataclass
class Tensor:
    """A feature or gradient map. `block` is None while it lives on the host only;
    `ready` is the event its prefetch must reach before a kernel reads it."""

    block: Block | None
    array: Any  # None on a backend that runs no kernels, or while on the host
    ready: Event | None = None


@dataclass(frozen=True)
class StepResult:
    loss: float | None
    record: StepRecord


class Executor:
    def __init__(self, backend: Backend, network: Network, plan: Plan, params: ParameterStore,
                 dtype: np.dtype, host_pool: PinnedHostPool,
                 costs: CostModel | None = None, allocation: str = LIVENESS) -> None:
        self.backend, self.network, self.plan, self.params = backend, network, plan, params
        self.dtype = np.dtype(dtype)
        self.costs = costs
        self.allocation = check_allocation(allocation)
        self._held: list[Block] = []  # maps kept to the step's end (network-wide)
        self.batch = plan.batch
        self.shapes = network.shapes(self.batch)
        self._bytes_of: dict[str, int] = {}  # a tensor's bytes, by name
        self.lives = network.lives
        self._in = {node.name: network.in_shapes(node, self.shapes) for node in network.nodes}
        options = network.algorithms(self.batch, self.dtype.itemsize)
        self.algorithms = {node.name: self._algorithm(node, options[node.name])
                           for node in network.nodes}
        self.offloaded = offloaded_tensors(network, plan)
        schedule = recompute_schedule(network, plan, self.dtype.itemsize)
        self.recomputed = schedule.tensors
        # where each recomputed map is computed again: where the backward pass
        # first needs it or what its layer saves, in topological order there
        self.recompute_at = schedule.at
        self._recompute_order = {at: sorted((n for n, k in schedule.at.items() if k == at),
                                            key=network.index.__getitem__)
                                 for at in set(schedule.at.values())}
        self._freed_after = schedule.freed_after  # a chain's inner maps
        self._frees_after: dict[str, list[str]] = {}
        for name, after in schedule.freed_after.items():
            self._frees_after.setdefault(after, []).append(name)
        self.release_at, self.prefetch_at = move_schedule(network, plan, self.offloaded)
        self._prefetched_at: dict[int, list[str]] = {}  # prefetch_at by layer, in its order
        for name, at in self.prefetch_at.items():
            self._prefetched_at.setdefault(at, []).append(name)
        self._reads: dict[str, tuple[str, ...]] = {}  # _backward_reads by layer
        self.grad_adds = _gradient_adds(network, params)
        # The offloaded maps' host buffers are views into one pinned buffer, taken
        # from the pool for a training step and given back after it: steps of any
        # batch size reuse what an earlier step pinned, so pinned bytes stay bounded
        # by the largest plan's need. A host limit too small for the plan fails
        # here, before the first step.
        self.host_pool = host_pool
        self._host_offsets: dict[str, int] = {}
        offset = 0  # each map's offset: the aligned sizes of the maps before it
        for name in self.offloaded:
            self._host_offsets[name] = offset
            offset += _aligned(self._tensor_bytes(name))
        self.host_bytes = offset
        self._host_what = f"offloading {len(self.offloaded)} feature map(s)"
        host_pool.check_room(self.host_bytes, self._host_what)
        self._host_buffer: HostBuffer | None = None
        self._host: dict[str, HostBuffer] = {}
        self._where: tuple[str | None, str | None] = (None, None)
        self._tensors: dict[str, Tensor] = {}
        self._grads: dict[str, Tensor] = {}
        self._saved: dict[str, tuple[Block | None, tuple[Any, ...]]] = {}
        self._loose: list[Block] = []  # workspace and temporaries of the launch in flight
        self._on_host: set[str] = set()  # offloaded, not yet prefetched this step
        self._leaving: dict[str, Event] = {}  # offload copies whose block is not yet freed
        self._ctx: Context | None = None  # the step's context, for recomputed forward passes

    def close(self) -> None:
        self._give_back_host_buffers()

    def _take_host_buffers(self) -> None:
        """The pinned buffer the step's offloaded maps go to, one view per map."""
        if not self.offloaded or self._host_buffer is not None:
            return
        buffer = self._host_buffer = self.host_pool.acquire(self.host_bytes, self._host_what)
        for name, offset in self._host_offsets.items():
            nbytes = self._tensor_bytes(name)
            view = None if buffer.array is None else buffer.array[offset:offset + nbytes]
            self._host[name] = HostBuffer(buffer.id, nbytes, view, buffer.pinned)

    def _give_back_host_buffers(self) -> None:
        """After the step: both streams are done with the buffer (the step has
        synchronized, or been abandoned, which synchronizes)."""
        self._host.clear()
        if self._host_buffer is not None:
            self.host_pool.release(self._host_buffer)
            self._host_buffer = None

    def _algorithm(self, node: Node, options: tuple[Algorithm, ...]) -> Algorithm:
        choice = self.plan.for_layer(node.name).algorithm
        for algorithm in options:
            if algorithm.name == choice:
                return algorithm
        raise ValueError(f"plan gives layer '{node.name}' algorithm '{choice}'; it has "
                         f"{', '.join(a.name for a in options)}")

    def _in_shapes(self, node: Node) -> tuple[Shape, ...]:
        return self._in[node.name]

    # -- steps ---------------------------------------------------------------

    def train_step(self, x: Any, labels: Any, step: int, seed: int) -> StepResult:
        """One step; `step` counts the steps trained before it. A NaN or infinite
        loss or weight gradient raises NonFiniteError before the update, which is
        then not applied: the parameters stay as they were."""
        recorder = StepRecorder(self.backend)
        updates = self.params.updates
        kept = self._keep_layer_state()
        try:
            # Overflow and NaN are checked for, once, before the update; the
            # arithmetic that makes them must not warn on the way there.
            with np.errstate(all="ignore"):
                self._take_host_buffers()
                ctx = self._ctx = Context(train=True, seed=seed, labels=self._labels(labels))
                loss_tensor = self._forward(x, ctx, recorder)
                self._backward(recorder)
                with recorder.waiting():
                    loss = self._checked_loss(loss_tensor, step + 1)
                self._update(recorder)
            self._release_held()
            recorder.issued()
            self._free(self._tensors.pop(self.network.loss.name).block)
            return StepResult(loss, recorder.finish(step, loss))
        except BaseException:
            self._abandon(recorder)
            if self.params.updates == updates:  # a step not applied changes no state
                self._restore_layer_state(kept)
            raise
        finally:
            self._give_back_host_buffers()

    def _keep_layer_state(self) -> list[Any] | None:
        """Copies of the layers' state (BatchNorm's running statistics, which the
        forward pass moves in place) before a step, on the device: a few vectors,
        bounded by the network's channels, outside the arena like a kernel's
        temporaries. None where there is none."""
        buffers = self.params.layer_state()
        if not buffers or not self.backend.runs_kernels:
            return None
        kept: list[Any] = []
        xp = self.backend.xp
        self.backend.launch(self.backend.compute,
                            lambda: kept.extend(xp.copy(b) for b in buffers))
        return kept

    def _restore_layer_state(self, kept: list[Any] | None) -> None:
        """Put back what `_keep_layer_state` copied; if that fails too, the runtime
        refuses to go on until a state dict is loaded."""
        if kept is None:
            return
        buffers = self.params.layer_state()

        def put_back() -> None:
            for buffer, old in zip(buffers, kept, strict=True):
                buffer[...] = old

        try:
            self.backend.launch(self.backend.compute, put_back)
            self.backend.synchronize()
        except BaseException as exc:
            self.params.interrupted = f"restoring the layers' state: {type(exc).__name__}"

    def evaluate(self, x: Any) -> np.ndarray | None:
        """Class probabilities for x as a host array, (N, classes) or, for a language
        model, (N, T, vocab): each next token's distribution (no loss, nothing kept for
        backward, nothing offloaded); None on a backend that runs no kernels."""
        recorder = StepRecorder(self.backend)
        try:
            with np.errstate(all="ignore"):  # the caller checks what comes out
                logits = self._forward(x, Context(train=False, seed=0), recorder,
                                       stop_at=self.network.logits)
                self._where = ("softmax", FORWARD)
                block = self._allocate_loose(logits.block.nbytes, MemoryKind.FEATURE_MAPS,
                                             "probabilities")
                rows = (*self.network.label_shape(self.batch), self.network.classes)
                probabilities = self._launch(recorder, "softmax", FORWARD, 0.0, softmax,
                                             self.backend.xp, _reshaped(logits.array, rows))
            host = None if probabilities is None else self.backend.to_host(probabilities)
            self._free(block)
            self._free(self._tensors.pop(self.network.logits).block)
            self._release_held()
            recorder.finish(0, None)
            return host
        except BaseException:
            self._abandon(recorder)
            raise

    def _abandon(self, recorder: StepRecorder) -> None:
        """Return the arena to where it was before the step: wait for both streams
        (a copy in flight still reads its buffer), then free what the step held."""
        recorder.detach()
        with contextlib.suppress(BaseException):  # the original error is the one to report
            self.backend.synchronize()
        blocks = [t.block for t in (*self._tensors.values(), *self._grads.values())]
        blocks += [b for b, _ in self._saved.values()] + self._loose + self._held
        for block in {b.id: b for b in blocks if b is not None}.values():
            self.backend.arena.free(block)
        self._tensors.clear(), self._grads.clear(), self._saved.clear(), self._loose.clear()
        self._held.clear(), self._on_host.clear(), self._leaving.clear()

    # -- memory ----------------------------------------------------------------

    def _allocate(self, nbytes: int, kind: MemoryKind, label: str) -> Block:
        try:
            return self.backend.arena.allocate(nbytes, kind, label)
        except OutOfDeviceMemory as exc:
            layer, phase = self._where
            raise (exc.at(layer, phase) if layer else exc) from None

    def _allocate_loose(self, nbytes: int, kind: MemoryKind, label: str) -> Block | None:
        if nbytes <= 0:
            return None
        block = self._allocate(nbytes, kind, label)
        self._loose.append(block)
        return block

    def _settle(self, block: Block | None) -> Block | None:
        """A loose block now owned by a tensor."""
        if block is not None and block in self._loose:
            self._loose.remove(block)
        return block

    def _free(self, block: Block | None) -> None:
        if block is not None:
            self._settle(block)
            self.backend.arena.free(block)

    def _retire(self, block: Block | None) -> None:
        """A feature or gradient map no step needs any more: freed now, or, under
        network-wide allocation (the vDNN paper's baseline), at the step's end."""
        if block is None:
            return
        if self.allocation == NETWORK_WIDE:
            self._settle(block)
            self._held.append(block)
        else:
            self._free(block)

    def _release_held(self) -> None:
        while self._held:
            self.backend.arena.free(self._held.pop())

    def _tensor_bytes(self, name: str) -> int:
        known = self._bytes_of.get(name)
        if known is None:  # asked for again and again in a step: shapes are fixed
            known = self._bytes_of[name] = numel(self.shapes[name]) * self._dtype_of(
                name).itemsize
        return known

    def _dtype_of(self, name: str) -> np.dtype:
        return self.network.dtype_of(name, self.dtype)

    # -- work on the streams -------------------------------------------------------

    def _launch(self, recorder: StepRecorder, name: str, phase: str, cost_ms: float,
                op: Callable[..., Any], *args: Any) -> Any:
        """Run op(*args) on the compute stream and record its span; returns op's
        result (None on a backend that runs no kernels, which only advances its
        clock by cost_ms)."""
        backend, result = self.backend, None

        def run() -> None:
            nonlocal result
            result = op(*args)

        start = backend.mark(backend.compute)
        try:
            backend.launch(backend.compute, run if backend.runs_kernels else _nothing, cost_ms)
        except OutOfDeviceMemory as exc:  # the array library's own pool ran out
            raise exc.at(name, phase) from None
        recorder.span(name, phase, backend.compute, start, backend.mark(backend.compute))
        return result

    def _layer_ms(self, node: Node, phase: str) -> float:
        if self.costs is None:
            return 0.0
        return self.costs.layer_ms(node.layer, self._in_shapes(node), self.shapes[node.name],
                                   self.algorithms[node.name], phase)

    def _offload(self, recorder: StepRecorder, name: str) -> Event:
        """Copy a feature map to its host buffer on the memory stream, after the
        compute stream has produced it; returns the copy's completion event."""
        backend, tensor, buffer = self.backend, self._tensors[name], self._host[name]
        backend.wait(backend.memory, backend.record(backend.compute))
        host = None if buffer.array is None else _view(buffer.array, self.shapes[name],
                                                       self._dtype_of(name))
        cost = self.costs.copy_ms(buffer.nbytes, to_host=True) if self.costs else 0.0
        start = backend.mark(backend.memory)
        backend.copy_to_host(backend.memory, tensor.array, host, cost)
        recorder.span(name, self._where[1] or FORWARD, backend.memory, start,
                      backend.mark(backend.memory), "copy_d2h", buffer.nbytes)
        return backend.record(backend.memory)

    def _prefetch(self, recorder: StepRecorder, name: str) -> None:
        """Bring an offloaded feature map back on the memory stream. The memory
        stream first waits for the compute work issued so far, since the block it
        writes may have been freed by that work a moment ago."""
        backend, buffer = self.backend, self._host[name]
        self._on_host.discard(name)
        block = self._allocate(buffer.nbytes, MemoryKind.FEATURE_MAPS, name)
        backend.wait(backend.memory, backend.record(backend.compute))
        host = None if buffer.array is None else _view(buffer.array, self.shapes[name],
                                                       self._dtype_of(name))
        cost = self.costs.copy_ms(buffer.nbytes, to_host=False) if self.costs else 0.0
        start = backend.mark(backend.memory)
        array = backend.copy_to_device(backend.memory, host, cost)
        recorder.span(name, BACKWARD, backend.memory, start, backend.mark(backend.memory),
                      "copy_h2d", buffer.nbytes)
        self._tensors[name] = Tensor(block, array, backend.record(backend.memory))

    def _await(self, recorder: StepRecorder, names: Sequence[str]) -> None:
        """Make the compute stream wait for the prefetches of these tensors; the
        time it stalls is recorded as a wait span."""
        backend = self.backend
        for name in names:
            tensor = self._tensors[name]
            if tensor.ready is None:
                continue
            start = backend.mark(backend.compute)
            backend.wait(backend.compute, tensor.ready)
            recorder.span(name, BACKWARD, backend.compute, start, backend.mark(backend.compute),
                          "wait")
            tensor.ready = None

    # -- passes ----------------------------------------------------------------

    def _forward(self, x: Any, ctx: Context, recorder: StepRecorder,
                 stop_at: str | None = None) -> Tensor:
        """Run nodes in order; return the loss tensor, or, stopping before the loss,
        the `stop_at` tensor (the logits). Both stay in `_tensors` for the caller
        to free."""
        self._where = (DATA, FORWARD)
        data = self._tensors[DATA] = Tensor(self._allocate(self._tensor_bytes(DATA),
                                                           MemoryKind.FEATURE_MAPS, DATA), None)
        data.array = self._upload(x, recorder)  # a failed upload leaves the block to _abandon
        for i, node in enumerate(self.network.nodes):
            if stop_at is not None and node.layer.IS_LOSS:
                break
            self._forward_layer(recorder, i, ctx)
        self._release_offloaded(recorder, len(self.network.nodes))  # the plan is checked; a guard
        return self._tensors[stop_at or self.network.loss.name]

    def _forward_layer(self, recorder: StepRecorder, i: int, ctx: Context) -> None:
        """Layer i's forward pass. Its arrays are locals of this call, so none of them
        is still referenced after the blocks they lived in are freed (a device frees
        the memory only when the last reference goes)."""
        xp, lives, node = self.backend.xp, self.lives, self.network.nodes[i]
        layer, algo = node.layer, self.algorithms[node.name]
        self._where = (node.name, FORWARD)
        in_shapes = self._in_shapes(node)
        sources = tuple(dict.fromkeys(node.inputs))
        inplace = lives[node.inputs[0]].inplace_into == i
        out_block = (self._tensors[node.inputs[0]].block if inplace else
                     self._allocate_loose(self._tensor_bytes(node.name),
                                          MemoryKind.FEATURE_MAPS, node.name))
        saved_bytes = layer.saved_bytes(in_shapes, self.dtype.itemsize, algo) if ctx.train else 0
        saved_block = self._allocate_loose(saved_bytes, MemoryKind.SAVED, f"{node.name}.saved")
        workspace = self._allocate_loose(algo.workspace_bytes, MemoryKind.WORKSPACE,
                                         f"{node.name}.workspace")
        # Offload on the memory stream while this layer computes: the input
        # is read-only now, and this is its last forward consumer.
        self._leaving.update({name: self._offload(recorder, name) for name in sources
                              if ctx.train and name in self.offloaded
                              and lives[name].last_forward_use == i})
        xs = [self._tensors[s].array for s in node.inputs]
        result = self._launch(recorder, node.name, FORWARD, self._layer_ms(node, FORWARD),
                              layer.forward, xp, xs, self.params.values_of(node.name),
                              algo, replace(ctx, inplace=True) if inplace else ctx)
        self._free(workspace)
        y, saved = result if result is not None else (None, ())
        self._tensors[node.name] = Tensor(self._settle(out_block), y)
        if ctx.train and saved_block is not None and node.name in self.recomputed:
            self._free(saved_block)  # computed again, with the output, when needed
        elif ctx.train:
            self._saved[node.name] = (self._settle(saved_block), saved)
        for source in sources:
            life = lives[source]
            if life.inplace_into == i:
                del self._tensors[source]  # its block now holds this node's output
            elif life.last_forward_use == i and ctx.train and source in self.recomputed:
                self._free(self._tensors.pop(source).block)  # computed again later
            elif life.last_forward_use == i and not (ctx.train and life.backward_users):
                self._retire(self._tensors.pop(source).block)
        self._release_offloaded(recorder, i)

    def _release_offloaded(self, recorder: StepRecorder, i: int) -> None:
        """Free the device blocks of the maps whose offload copy must be done by
        the end of layer i: the host waits for each copy first."""
        for name in [n for n in self._leaving if self.release_at[n] <= i]:
            with recorder.waiting():
                self.backend.host_wait(self._leaving.pop(name))
            self._free(self._tensors.pop(name).block)
            self._on_host.add(name)

    def _backward_reads(self, node: Node) -> tuple[str, ...]:
        """Feature maps a node's backward pass reads."""
        known = self._reads.get(node.name)
        if known is None:
            keeps = type(node.layer).KEEPS
            reads = list(node.inputs) if Keeps.INPUT in keeps else []
            if Keeps.OUTPUT in keeps:
                reads.append(node.name)
            known = self._reads[node.name] = tuple(dict.fromkeys(reads))
        return known

    def _prefetch_for(self, recorder: StepRecorder, i: int) -> None:
        """What layer i reads and is still on the host comes back now, and so do
        the maps whose `Move` starts their copy back here; then vDNN's prefetch
        for the maps without one: to overlap with layer i, the offloaded inputs
        of the nearest earlier layer that has any, searching no further than a
        convolution (of `Network.heavy_layers`)."""
        nodes = self.network.nodes
        for name in self._backward_reads(nodes[i]):
            if name in self._on_host:
                self._prefetch(recorder, name)
        for name in [n for n in self._prefetched_at.get(i, ()) if n in self._on_host]:
            self._prefetch(recorder, name)
        for j in range(i - 1, -1, -1):
            pending = [n for n in self._backward_reads(nodes[j])
                       if n in self._on_host and n not in self.prefetch_at]
            for name in pending:
                self._prefetch(recorder, name)
            if pending or nodes[j].name in self.network.heavy_layers:
                break

    def _recompute(self, recorder: StepRecorder, name: str) -> None:
        """Compute a dropped feature map again with its layer's forward pass, on
        inputs brought back from the host first where they are there (or just
        computed again themselves), not in place; what the layer saves for its
        backward pass is kept where the forward pass dropped it. Inputs no
        backward pass reads after this are freed."""
        node = self.network.nodes[self.network.index[name]]
        layer, algo = node.layer, self.algorithms[name]
        sources = tuple(dict.fromkeys(node.inputs))
        for source in sources:
            if source in self._on_host:
                self._prefetch(recorder, source)
        self._await(recorder, sources)
        user, self._where = self._where, (name, RECOMPUTE)
        out_block = self._allocate_loose(self._tensor_bytes(name), MemoryKind.FEATURE_MAPS,
                                         name)
        saved_bytes = layer.saved_bytes(self._in_shapes(node), self.dtype.itemsize, algo)
        saved_block = self._allocate_loose(saved_bytes, MemoryKind.SAVED, f"{name}.saved")
        workspace = self._allocate_loose(algo.workspace_bytes, MemoryKind.WORKSPACE,
                                         f"{name}.workspace")
        assert self._ctx is not None
        xs = [self._tensors[s].array for s in node.inputs]
        # the same forward pass on the same inputs, but the layer's state moved already
        ctx = replace(self._ctx, update_state=False)
        result = self._launch(recorder, name, RECOMPUTE, self._layer_ms(node, FORWARD),
                              layer.forward, self.backend.xp, xs,
                              self.params.values_of(name), algo, ctx)
        del xs
        self._free(workspace)
        y, saved = result if result is not None else (None, ())
        self._tensors[name] = Tensor(self._settle(out_block), y)
        if saved_block is not None:
            self._saved[name] = (self._settle(saved_block), saved)
        del y, saved, result
        for done in self._frees_after.get(name, ()):
            self._free(self._tensors.pop(done).block)
        self._where = user

    def _backward(self, recorder: StepRecorder) -> None:
        for i in reversed(range(len(self.network.nodes))):
            self._backward_layer(recorder, i)
        self._grads.clear()  # nothing is left: gradients of data are never made

    def _backward_layer(self, recorder: StepRecorder, i: int) -> None:
        """Layer i's backward pass, its arrays locals of this call (as in
        `_forward_layer`): none outlives its block into layer i-1's prefetches and
        recomputations."""
        xp, lives, node = self.backend.xp, self.lives, self.network.nodes[i]
        layer, algo = node.layer, self.algorithms[node.name]
        keeps = type(layer).KEEPS
        self._where = (node.name, BACKWARD)
        dy = None if layer.IS_LOSS else self._grads.pop(node.name)
        if dy is not None:
            self._loose.append(dy.block)
        self._prefetch_for(recorder, i)
        for name in self._recompute_order.get(i, ()):
            self._recompute(recorder, name)
        workspace = self._allocate_loose(algo.workspace_bytes, MemoryKind.WORKSPACE,
                                         f"{node.name}.workspace")
        # One gradient buffer per distinct input; a second contribution to a
        # gradient map already made is a temporary, added in, then freed.
        targets: dict[str, tuple[Block, bool]] = {}
        for source in dict.fromkeys(node.inputs):
            if source == DATA:
                continue
            if lives[source].inplace_into == i and dy is not None:
                targets[source] = (dy.block, False)  # written over the output gradient
                continue
            accumulate = source in self._grads
            block = self._allocate_loose(self._tensor_bytes(source), MemoryKind.GRADIENT_MAPS,
                                         f"d{source}" + (".partial" if accumulate else ""))
            targets[source] = (block, accumulate)
        reads = self._backward_reads(node)
        self._await(recorder, reads)
        needs_dx = [s in targets for s in node.inputs]
        xs = [self._tensors[s].array if Keeps.INPUT in keeps else None for s in node.inputs]
        y = self._tensors[node.name].array if Keeps.OUTPUT in keeps else None
        saved_block, saved = self._saved[node.name]
        adds = self.grad_adds[node.name]
        # last step's weight gradients (spent as the update's scratch) go before
        # this step's are made: the device holds one set, as the arena counts; a
        # shared parameter's later uses add their gradient into the first one's,
        # each through a temporary
        grads = self.params.trained(node.name)
        for local, (owner, pname) in grads.items():
            if local not in adds:
                self.params.layers[owner].grads[pname] = None
        partials = [self._allocate_loose(self._param_bytes(*grads[local]),
                                         MemoryKind.WEIGHT_GRADS,
                                         f"{node.name}.{local}.grad.partial")
                    for local in sorted(adds)]
        into = {s: self._grads[s].array for s, (_, accumulate) in targets.items()
                if accumulate}
        into_params = {local: self.params.layers[grads[local][0]].grads[grads[local][1]]
                       for local in adds}
        result = self._launch(recorder, node.name, BACKWARD, self._layer_ms(node, BACKWARD),
                              _backward_and_accumulate, node, xp,
                              None if dy is None else dy.array, xs, y,
                              self.params.values_of(node.name), saved, algo,
                              self._in_shapes(node), needs_dx, into, into_params)
        del self._saved[node.name]  # after the launch: a failed one leaves it to _abandon
        dx_by_source, dparams = result if result is not None else ({}, {})
        for local, gradient in dparams.items():
            owner, pname = grads[local]
            self.params.layers[owner].grads[pname] = gradient
        for partial in partials:
            self._free(partial)
        for source, (block, accumulate) in targets.items():
            if accumulate:
                self._free(block)  # its contribution is added in
            else:
                self._grads[source] = Tensor(self._settle(block), dx_by_source.get(source))
        self._free(workspace)
        if dy is not None and all(dy.block != b for b, _ in targets.values()):
            self._retire(dy.block)
        self._free(saved_block)
        for name in dict.fromkeys((*node.inputs, node.name)):
            if (lives[name].last_backward_use == i and name in self._tensors
                    and name not in self._freed_after):
                self._retire(self._tensors.pop(name).block)

    def _param_bytes(self, layer: str, pname: str) -> int:
        return numel(self.params.shapes[f"{layer}.{pname}"]) * self.dtype.itemsize

    def _update(self, recorder: StepRecorder) -> None:
        optimizer = self.params.optimizer
        self._where = (optimizer.name, UPDATE)
        weights = sum(b.nbytes for b in self.params.blocks if b.kind == MemoryKind.WEIGHTS)
        cost = self.costs.update_ms(weights, update_traffic(optimizer)) if self.costs else 0.0
        with self.params.updating() as number:
            self._launch(recorder, optimizer.name, UPDATE, cost, self.params.update, number)

    # -- host boundary ----------------------------------------------------------

    def _upload(self, x: Any, recorder: StepRecorder) -> Any:
        with recorder.waiting():  # a copy the backend waits for (from pinned memory)
            return self._to_device(x)

    def _to_device(self, x: Any) -> Any:
        if not self.backend.runs_kernels:
            return None
        dtype = self._dtype_of(DATA)
        if isinstance(x, np.ndarray):
            return self.backend.asarray(np.asarray(x, dtype=dtype))
        return x.astype(dtype, copy=False)

    def _labels(self, labels: Any) -> Any:
        """Labels as given: the loss layer checks host labels on the host, then copies
        them to the device itself, so checking them costs no device sync mid-step."""
        return labels if self.backend.runs_kernels else None

    def _checked_loss(self, loss: Tensor, number: int) -> float | None:
        """The loss, read with one sum per weight gradient in a single copy to the
        host (one synchronization): a NaN or infinity in a gradient makes its sum
        non-finite, and float32 values summed in float64 cannot overflow. A
        non-finite loss or gradient raises NonFiniteError naming step `number`."""
        if loss.array is None:
            return None
        xp = self.backend.xp
        names, grads = self.params.gradients()
        checks: list[Any] = []  # on the compute stream, after the backward pass

        def reduce() -> None:
            sums = [g.sum(dtype=xp.float64) for g in grads]
            checks.append(xp.stack([loss.array.astype(xp.float64), *sums]))

        self.backend.launch(self.backend.compute, reduce)
        values = self.backend.to_host(checks[0])
        if np.isfinite(values).all():
            return float(values[0])
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        what = f"loss ({values[0]})" if bad == 0 else f"gradient of '{names[bad - 1]}'"
        raise NonFiniteError(
            f"non-finite {what} at step {number}; the update was not applied, so the "
            f"parameters are those after step {number - 1}; a lower learning rate or "
            "smaller inputs may keep the numbers within float range", step=number)


def _nothing() -> None:
    return None


def _reshaped(array: Any, shape: Shape) -> Any:
    return None if array is None else array.reshape(shape)


def _gradient_adds(network: Network, params: ParameterStore) -> dict[str, frozenset[str]]:
    """For each layer, the parameters (local names) whose gradient its backward pass
    adds into one made earlier in the pass: a shared parameter's gradient is the sum
    of its uses', made by the last node that uses it (the first in the backward
    pass) and added into by the others."""
    first: dict[tuple[str, str], int] = {}
    for i, node in enumerate(network.nodes):
        for where in params.trained(node.name).values():
            first[where] = i
    return {node.name: frozenset(local for local, where in params.trained(node.name).items()
                                 if first[where] != i)
            for i, node in enumerate(network.nodes)}


#: Each offloaded map's place in the step's pinned buffer starts at a multiple of
#: this, for the copy engines and for any dtype's alignment.
HOST_ALIGNMENT = 512


def _aligned(nbytes: int) -> int:
    return -(-nbytes // HOST_ALIGNMENT) * HOST_ALIGNMENT


def _view(buffer: np.ndarray, shape: Shape, dtype: np.dtype) -> np.ndarray:
    """A host buffer (uint8) seen as a tensor of this shape and dtype."""
    return buffer.view(dtype).reshape(shape)


def _backward_and_accumulate(node: Node, xp: Any, dy: Any, xs: Sequence[Any], y: Any,
                             params: dict[str, Any], saved: tuple[Any, ...], algo: Algorithm,
                             in_shapes: Sequence[Shape], needs_dx: Sequence[bool],
                             into: dict[str, Any], into_params: dict[str, Any]
                             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A node's backward pass as one op on the compute stream: input gradients by
    tensor (a tensor read twice by the node gets both contributions), those of
    tensors in `into` added to the gradient maps already there, and the gradients
    of the parameters in `into_params` added to the gradients already there."""
    dxs, dparams = node.layer.backward(xp, dy, xs, y, params, saved, algo, in_shapes, needs_dx)
    for local, gradient in into_params.items():
        gradient += dparams.pop(local)
    by_source: dict[str, Any] = {}
    for source, dx in zip(node.inputs, dxs, strict=True):
        if dx is not None:
            by_source[source] = dx if source not in by_source else by_source[source] + dx
    for source, gradient in into.items():
        if source in by_source:
            elementwise.add_into(xp, gradient, by_source.pop(source))
    return by_source, dparams
