"""`Network`: a DAG of layers, with shape inference, topological order,
consumers and liveness. It knows nothing of plans or devices.

Tensors are named after the node that produces them; the network's input is
the tensor `data`: floating values, or, where the network has a vocabulary, token
ids (integers in [0, vocab), one sample a sequence (T,)). Each node has one output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from vmem.errors import NetworkError, ShapeError
from vmem.layers.base import TOKEN_DTYPE, Algorithm, Keeps, Layer, Shape, numel

DATA = "data"
#: The layers whose inputs vDNN's convolution rules apply to where there is no
#: convolution (`Network.heavy_layers`).
HEAVY_WITHOUT_CONVOLUTIONS = ("linear", "attention")


@dataclass(frozen=True)
class Node:
    layer: Layer
    inputs: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.layer.name


@dataclass(frozen=True)
class TensorLife:
    """When a tensor's value is needed, by node index in topological order.

    `backward_users` are the nodes whose backward pass reads the value (consumers
    that keep their input, the producer if it keeps its output). A feature map is
    freed after its last forward consumer when it has no backward users, else
    after the backward pass of its earliest backward user (the backward pass runs
    in reverse). `inplace_into` is the consumer that takes over its buffer.
    """

    name: str
    producer: int  # -1 for the network input
    consumers: tuple[int, ...]
    backward_users: tuple[int, ...]
    inplace_into: int | None

    @property
    def last_forward_use(self) -> int:
        return max(self.consumers, default=self.producer)

    @property
    def last_backward_use(self) -> int | None:
        return min(self.backward_users, default=None)


@dataclass(frozen=True)
class Network:
    name: str
    input_shape: Shape  # one sample, e.g. (3, 224, 224), or (T,) token ids
    nodes: tuple[Node, ...]  # topological order, the loss last
    description: str = ""
    vocab: int = 0  # > 0: the input is token ids in [0, vocab)
    # a profile's repeated-block instances, each with its layers in topological
    # order: where a whole block may be computed again from its input. Not part
    # of what the network computes: the same layers written out flat are equal.
    blocks: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False)

    @staticmethod
    def build(name: str, input_shape: Sequence[int], nodes: Iterable[Node],
              description: str = "", vocab: int = 0,
              blocks: Iterable[tuple[str, Sequence[str]]] = ()) -> Network:
        """Validate names, inputs, arity and acyclicity, order the nodes
        topologically (stable: profile order where it is free), check shapes,
        token inputs and shared parameters."""
        nodes = list(nodes)
        if not nodes:
            raise NetworkError(f"network '{name}' has no layers")
        by_name: dict[str, Node] = {}
        for node in nodes:
            if node.name == DATA or node.name in by_name:
                raise NetworkError(f"layer name '{node.name}' is used twice"
                                   + (" (data is the network input)" if node.name == DATA else ""),
                                   layer=node.name)
            by_name[node.name] = node
        for node in nodes:
            arity = type(node.layer).ARITY
            if arity is not None and len(node.inputs) != arity:
                raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}) takes {arity} "
                                   f"input(s), got {len(node.inputs)}", layer=node.name)
            if arity is None and len(node.inputs) < 2:
                raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}) takes two or "
                                   f"more inputs, got {len(node.inputs)}", layer=node.name)
            for source in node.inputs:
                if source != DATA and source not in by_name:
                    raise NetworkError(f"layer '{node.name}' reads '{source}', which is no "
                                       f"layer (nor data)", layer=node.name)
        ordered = _topological(nodes)
        losses = [n for n in ordered if n.layer.IS_LOSS]
        if len(losses) != 1 or ordered[-1] is not losses[0]:
            raise NetworkError(f"network '{name}' must end in exactly one loss layer "
                               f"(softmax_loss) that nothing reads",
                               layer=losses[-1].name if losses else ordered[-1].name)
        read = {source for node in ordered for source in node.inputs}
        for node in ordered[:-1]:
            if node.name not in read:
                raise NetworkError(f"layer '{node.name}' is read by no layer: every layer but "
                                   f"the loss must lead to it", layer=node.name)
        _check_tokens(ordered, tuple(input_shape), vocab)
        position = {node.name: i for i, node in enumerate(ordered)}
        instances = []
        for instance, members in blocks:
            unknown = [m for m in members if m not in position]
            if unknown or not members:
                raise NetworkError(f"block instance '{instance}' names no layer "
                                   f"'{unknown[0] if unknown else ''}'", layer=instance)
            instances.append((instance, tuple(sorted(members, key=position.__getitem__))))
        network = Network(name, tuple(int(d) for d in input_shape), tuple(ordered), description,
                          vocab, tuple(instances))
        network.shapes(1)  # raises ShapeError where shapes do not connect
        _check_shared(network)
        return network

    @staticmethod
    def sequential(name: str, input_shape: Sequence[int], layers: Iterable[Layer],
                   description: str = "", vocab: int = 0) -> Network:
        """A chain: each layer reads the one before it, the first reads data."""
        nodes, previous = [], DATA
        for layer in layers:
            nodes.append(Node(layer, (previous,)))
            previous = layer.name
        return Network.build(name, input_shape, nodes, description, vocab)

    @property
    def takes_tokens(self) -> bool:
        return self.vocab > 0

    def dtype_of(self, tensor: str, dtype: np.dtype) -> np.dtype:
        """A tensor's dtype when the network computes in `dtype`: token ids for a
        language model's input, `dtype` for everything else."""
        return TOKEN_DTYPE if tensor == DATA and self.takes_tokens else np.dtype(dtype)

    @cached_property
    def index(self) -> dict[str, int]:
        return {node.name: i for i, node in enumerate(self.nodes)}

    @property
    def loss(self) -> Node:
        return self.nodes[-1]

    @property
    def logits(self) -> str:
        """The tensor the loss reads: what evaluation turns into probabilities."""
        return self.loss.inputs[0]

    def label_shape(self, batch: int) -> Shape:
        """The labels a step takes: (N,) class indices, or (N, T) next-token ids."""
        return tuple(self.loss.layer.label_shape(self.in_shapes(self.loss, self.shapes(batch))))

    @property
    def classes(self) -> int:
        """The length of each distribution the loss computes: classes, or tokens."""
        return int(self.loss.layer.classes(self.in_shapes(self.loss, self.shapes(1))))

    @cached_property
    def heavy_layers(self) -> frozenset[str]:
        """The layers vDNN's rules centre on: whose inputs vdnn-conv offloads, and
        past which vDNN's prefetch does not look. vDNN's are the convolutions; in a
        network without any (a transformer), the layers that multiply matrices,
        linear and attention: those whose compute most outlasts the copy of the
        input they keep (the most FLOPs per byte kept, by hundreds against a
        layernorm's or GELU's few)."""
        convolutions = frozenset(n.name for n in self.nodes if n.layer.TYPE == "conv")
        return convolutions or frozenset(n.name for n in self.nodes
                                         if n.layer.TYPE in HEAVY_WITHOUT_CONVOLUTIONS)

    @cached_property
    def _shapes_by_batch(self) -> dict[int, dict[str, Shape]]:
        return {}

    def shapes(self, batch: int) -> dict[str, Shape]:
        """Every tensor's shape at this batch size, `data` included (inferred once
        per batch: plans and dry runs ask again and again)."""
        known = self._shapes_by_batch.get(batch)
        if known is None:
            known = self._shapes_by_batch[batch] = self._infer_shapes(batch)
        return dict(known)

    def _infer_shapes(self, batch: int) -> dict[str, Shape]:
        shapes: dict[str, Shape] = {DATA: (batch, *self.input_shape)}
        for node in self.nodes:
            in_shapes = [shapes[s] for s in node.inputs]
            try:
                shapes[node.name] = tuple(node.layer.output_shape(in_shapes))
            except ShapeError as exc:
                if exc.layer is None:
                    exc.layer = node.name
                raise
        return shapes

    @cached_property
    def _algorithms_by_batch(self) -> dict[tuple[int, int], dict[str, tuple[Algorithm, ...]]]:
        return {}

    def algorithms(self, batch: int, itemsize: int) -> dict[str, tuple[Algorithm, ...]]:
        """Every layer's algorithms (fastest first, least workspace last) at this
        batch size and item size, by layer name; asked once per batch, since every
        plan and every dry run needs them."""
        known = self._algorithms_by_batch.get((batch, itemsize))
        if known is None:
            shapes = self.shapes(batch)
            known = self._algorithms_by_batch[(batch, itemsize)] = {
                node.name: tuple(node.layer.algorithms(self.in_shapes(node, shapes), itemsize))
                for node in self.nodes}
        return dict(known)

    def in_shapes(self, node: Node, shapes: dict[str, Shape]) -> tuple[Shape, ...]:
        return tuple(shapes[s] for s in node.inputs)

    def param_shapes(self) -> dict[str, dict[str, Shape]]:
        return {name: dict(params) for name, (params, _) in self.layer_shapes.items()}

    @cached_property
    def layer_shapes(self) -> dict[str, tuple[dict[str, Shape], dict[str, Shape]]]:
        """Each layer's parameter shapes and state shapes (at batch 1: neither
        depends on the batch), by layer name; asked for by every dry run."""
        shapes = self.shapes(1)
        return {n.name: (n.layer.param_shapes(self.in_shapes(n, shapes)),
                         n.layer.state_shapes(self.in_shapes(n, shapes))) for n in self.nodes}

    def num_params(self) -> int:
        """Parameters, each counted once: a shared one (a tied weight) by its owner."""
        return sum(numel(s) for params in self.param_shapes().values() for s in params.values())

    def flops(self, batch: int) -> int:
        """Forward FLOPs of one step at this batch size."""
        shapes = self.shapes(batch)
        return sum(n.layer.flops(self.in_shapes(n, shapes)) for n in self.nodes)

    @cached_property
    def lives(self) -> dict[str, TensorLife]:
        return liveness(self)


def _check_tokens(nodes: list[Node], input_shape: Shape, vocab: int) -> None:
    """Token ids are read by layers that take them (embeddings), and only they read
    them; an embedding's table covers the vocabulary."""
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 0:
        raise NetworkError(f"vocab must be an integer >= 1 (token input) or 0, got {vocab!r}")
    for node in nodes:
        tokens = type(node.layer).TAKES_TOKENS
        if vocab and DATA in node.inputs and not tokens:
            raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): reads data, which is "
                               f"token ids: only an embedding reads them", layer=node.name)
        if tokens and node.inputs != (DATA,):
            raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): reads token ids: its "
                               f"input must be data", layer=node.name)
        if tokens and not vocab:
            raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): reads token ids, but "
                               f"the network's input is not tokens (give it a vocab)",
                               layer=node.name)
        if tokens and node.layer.vocab != vocab:
            raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): vocab "
                               f"{node.layer.vocab}, but the input's is {vocab}", layer=node.name)
    if vocab and len(input_shape) != 1:
        raise NetworkError(f"a token input is one sequence a sample, input (T,); got "
                           f"{list(input_shape)}")


def _check_shared(network: Network) -> None:
    """Every shared parameter is its owner's, of the shape its user needs."""
    shapes = network.shapes(1)
    for node in network.nodes:
        for local, shared in node.layer.shared_params(network.in_shapes(node, shapes)).items():
            owner = network.index.get(shared.owner)
            owned = ({} if owner is None else network.nodes[owner].layer.param_shapes(
                network.in_shapes(network.nodes[owner], shapes)))
            if shared.param not in owned:
                raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): uses the "
                                   f"{shared.param} of '{shared.owner}', which "
                                   f"{'is no layer' if owner is None else 'has none'}",
                                   layer=node.name)
            if tuple(owned[shared.param]) != tuple(shared.shape):
                raise NetworkError(f"layer '{node.name}' ({node.layer.TYPE}): needs its {local} "
                                   f"of shape {tuple(shared.shape)}; the {shared.param} of "
                                   f"'{shared.owner}' is {tuple(owned[shared.param])}",
                                   layer=node.name)


def _topological(nodes: list[Node]) -> list[Node]:
    position = {n.name: i for i, n in enumerate(nodes)}
    placed: set[str] = {DATA}
    ordered: list[Node] = []
    pending = list(nodes)
    while pending:
        ready = next((n for n in pending if all(s in placed for s in n.inputs)), None)
        if ready is None:
            stuck = min(pending, key=lambda n: position[n.name])
            raise NetworkError(f"layers form a cycle through '{stuck.name}'", layer=stuck.name)
        pending.remove(ready)
        placed.add(ready.name)
        ordered.append(ready)
    return ordered


def liveness(network: Network) -> dict[str, TensorLife]:
    """Consumers, backward users and in-place ownership of every tensor.

    A node runs in place (its output takes over its input's buffer) when its
    layer allows it, its input is a layer's output read by no other node, and
    nobody needs that input's value in the backward pass.
    """
    consumers: dict[str, list[int]] = {DATA: []} | {n.name: [] for n in network.nodes}
    backward_users: dict[str, list[int]] = {name: [] for name in consumers}
    for i, node in enumerate(network.nodes):
        keeps = type(node.layer).KEEPS
        for source in dict.fromkeys(node.inputs):  # a node reading a tensor twice counts once
            consumers[source].append(i)
            if Keeps.INPUT in keeps:
                backward_users[source].append(i)
        if Keeps.OUTPUT in keeps:
            backward_users[node.name].append(i)
    lives: dict[str, TensorLife] = {}
    for name in consumers:
        producer = network.index.get(name, -1)
        only = consumers[name][0] if len(consumers[name]) == 1 else None
        inplace_into = None
        if (only is not None and producer >= 0 and not backward_users[name]
                and type(network.nodes[only].layer).INPLACE):
            inplace_into = only
        lives[name] = TensorLife(name, producer, tuple(consumers[name]),
                                 tuple(backward_users[name]), inplace_into)
    return lives
