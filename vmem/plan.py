"""`Plan`: what a policy decided, per layer, as pure data.

A plan names, for every layer, the algorithm it runs with (for convolution the
im2col chunk, hence its workspace), whether its input leaves the device during
the forward pass, and whether its output, and what it saves for its backward pass, are dropped
after the forward pass and computed again in the backward pass
(recomputation: cheap layers such as pooling, LRN, layer normalisation, GELU
and attention's probabilities, whose input the device keeps anyway, or a
whole block from its input, as torch.utils.checkpoint does); optionally, for an
offloaded feature map, when its device copy is freed and when it comes back
(`Move`; by default vDNN's schedule). It round-trips through JSON and explains
itself as a table. It never changes the arithmetic, only where bytes live and
when.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmem.graph import Network
    from vmem.layers.base import Algorithm


@dataclass(frozen=True)
class LayerPlan:
    layer: str
    algorithm: str
    workspace_bytes: int = 0
    offload_input: bool = False
    recompute_output: bool = False


@dataclass(frozen=True)
class Move:
    """When an offloaded feature map leaves the device and when it returns.

    release_after   the layer at the end of whose forward pass the host waits
                    for the map's copy and frees its device block: its last
                    forward consumer (vDNN's end-of-layer synchronization) or a
                    later layer, so that the copy overlaps more compute
    prefetch_before the layer before whose backward pass the copy back starts:
                    its first backward user or an earlier one in the backward
                    pass (a later layer), so that the copy hides behind more
                    compute; vDNN prefetches at most one convolution ahead
    """

    tensor: str
    release_after: str
    prefetch_before: str


@dataclass(frozen=True)
class Plan:
    policy: str
    batch: int
    layers: tuple[LayerPlan, ...]
    moves: tuple[Move, ...] = ()  # offloaded maps without one follow vDNN's schedule

    def for_layer(self, name: str) -> LayerPlan:
        entry = self._by_layer.get(name)
        if entry is None:
            raise KeyError(f"plan '{self.policy}' has no entry for layer '{name}'")
        return entry

    @cached_property
    def _by_layer(self) -> dict[str, LayerPlan]:
        return {entry.layer: entry for entry in reversed(self.layers)}  # the first one wins

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_json(text: str) -> Plan:
        data = json.loads(text)
        return Plan(data["policy"], int(data["batch"]),
                    tuple(LayerPlan(**entry) for entry in data["layers"]),
                    tuple(Move(**entry) for entry in data.get("moves", ())))

    def explain(self) -> str:
        """The plan as aligned columns, as wide as its longest layer name needs."""
        from vmem.units import format_bytes

        name = max([len("layer"), *(len(lp.layer) for lp in self.layers)])
        algorithm = max([len("algorithm"), *(len(lp.algorithm) for lp in self.layers)])
        rows = [f"plan '{self.policy}' at batch {self.batch}",
                f"{'layer':<{name}}  {'algorithm':<{algorithm}}  {'workspace':>10}  "
                "offload input  recompute output"]
        for lp in self.layers:
            rows.append(f"{lp.layer:<{name}}  {lp.algorithm:<{algorithm}}  "
                        f"{format_bytes(lp.workspace_bytes):>10}  "
                        f"{'yes' if lp.offload_input else '-':<13}  "
                        f"{'yes' if lp.recompute_output else '-'}")
        if self.moves:
            tensor = max([len("offloaded map"), *(len(m.tensor) for m in self.moves)])
            after = max([len("freed after"), *(len(m.release_after) for m in self.moves)])
            rows += ["when offloaded maps move: freed after that layer's forward pass, "
                     "copied back as that layer's backward pass starts",
                     f"{'offloaded map':<{tensor}}  {'freed after':<{after}}  copied back at"]
            rows += [f"{m.tensor:<{tensor}}  {m.release_after:<{after}}  {m.prefetch_before}"
                     for m in self.moves]
        return "\n".join(rows)

def offloaded_tensors(network: Network, plan: Plan) -> frozenset[str]:
    """The feature maps a plan moves to the host: inputs of the layers whose entry
    says offload, where a backward pass needs them later, no layer writes over
    them in place, and the plan does not compute them again instead. A tensor
    read by several layers is offloaded once, after the last of them
    (GoogLeNet's forks)."""
    asked = {entry.layer for entry in plan.layers if entry.offload_input}
    recomputed = {entry.layer for entry in plan.layers if entry.recompute_output}
    return frozenset(source for layer in asked if layer in network.index
                     for source in offloadable_inputs(network, layer)
                     if source not in recomputed)


def offloadable_inputs(network: Network, layer: str) -> tuple[str, ...]:
    """The inputs of `layer` that offloading its input moves to the host (where
    the plan does not compute them again instead): those a backward pass needs
    later and no layer writes over in place."""
    lives = network.lives
    return tuple(source for source in dict.fromkeys(network.nodes[network.index[layer]].inputs)
                 if lives[source].backward_users and lives[source].inplace_into is None)


def recomputable(network: Network, name: str, itemsize: int, batch: int = 1,
                 also: frozenset[str] = frozenset()) -> str | None:
    """Why layer `name`'s output (and whatever it saves for its backward pass)
    cannot be dropped after the forward pass and computed again in the backward
    pass beside the layers in `also`, or None where it can (see
    `recompute_schedule`). A layer that can be recomputed alone can be beside
    any others that can: more recomputation only moves its recomputation
    earlier in the backward pass, while its kept inputs are still held."""
    return _problem(network, name, _recompute_points(network, also | {name}, itemsize, batch))


def _saves(network: Network, name: str, itemsize: int, shapes: dict[str, tuple[int, ...]],
           options: dict[str, tuple[Algorithm, ...]]) -> bool:
    """Whether the layer saves state for its backward pass under any of its
    algorithms (a plan's choice among them does not change where it is needed)."""
    node = network.nodes[network.index[name]]
    in_shapes = network.in_shapes(node, shapes)
    return any(node.layer.saved_bytes(in_shapes, itemsize, algo) > 0
               for algo in options[name])


def _recompute_points(network: Network, chosen: frozenset[str] | set[str], itemsize: int,
                      batch: int) -> dict[str, int | None]:
    """For each chosen layer, the node before whose backward pass its output is
    computed again: the first (in the backward pass) of its output's backward
    users, itself where it saves state for its backward pass, and the points
    where a chosen consumer is computed again from it; None where nothing needs
    it."""
    lives, index, at = network.lives, network.index, {}
    shapes, options = network.shapes(batch), network.algorithms(batch, itemsize)
    for name in sorted(chosen, key=lambda n: -index[n]):  # consumers before producers
        needs = list(lives[name].backward_users)
        if _saves(network, name, itemsize, shapes, options):
            needs.append(index[name])
        needs += [point for c in lives[name].consumers
                  if network.nodes[c].name in chosen
                  and (point := at.get(network.nodes[c].name)) is not None]
        at[name] = max(needs, default=None)
    return at


def _problem(network: Network, name: str, at: dict[str, int | None]) -> str | None:
    node = network.nodes[network.index[name]]
    lives = network.lives
    if node.layer.IS_LOSS:
        return "it is the loss"
    needed_at = at[name]
    if needed_at is None:
        return "no backward pass needs its output, nor anything it saves"
    for source in node.inputs:
        if source in at:
            continue
        users = lives[source].backward_users
        if not users or min(users) > needed_at:
            return f"its input '{source}' is gone by the time it is computed again"
    return None


@dataclass(frozen=True)
class Recomputation:
    """Where a plan computes dropped maps again (tensors named as their layers).

    at           the node before whose backward pass each is computed again (the
                 maps computed at one node are computed in topological order)
    freed_after  the maps no backward pass reads after another's recomputation
                 (a chain's inner maps), freed right after that one's, by name
    """

    at: dict[str, int]
    freed_after: dict[str, str]

    @property
    def tensors(self) -> frozenset[str]:
        return frozenset(self.at)


def recompute_schedule(network: Network, plan: Plan, itemsize: int) -> Recomputation:
    """The plan's recomputation: each chosen layer's output and saved state are
    dropped after the forward pass (the output after its last forward consumer)
    and computed again, by the layer's forward pass, where the backward pass
    first needs either (a chain, such as a whole block, from its first kept
    input onwards); a ValueError where one cannot be (the loss; nothing needs
    it; an input neither held then nor computed again)."""
    chosen = frozenset(entry.layer for entry in plan.layers if entry.recompute_output)
    at = _recompute_points(network, chosen, itemsize, plan.batch)
    for name in sorted(chosen):
        why = _problem(network, name, at)
        if why is not None:
            raise ValueError(f"plan '{plan.policy}' recomputes the output of '{name}', but "
                             f"{why}")
    index, lives, nodes = network.index, network.lives, network.nodes
    freed_after: dict[str, str] = {}
    for name in chosen:
        # program order in the backward pass: node k's recomputations (by index)
        # come before node k's backward pass, and node k before node k - 1
        uses = [(-user, 1, 0, "") for user in lives[name].backward_users]
        uses += [(-at[c.name], 0, index[c.name], c.name) for c in
                 (nodes[k] for k in lives[name].consumers) if c.name in chosen]
        if not uses:  # computed again for what it saves: the output is not read
            freed_after[name] = name
        elif (last := max(uses))[1] == 0:
            freed_after[name] = last[3]
    return Recomputation({name: point for name, point in at.items() if point is not None},
                         freed_after)


def block_recomputation(network: Network, instance: str, itemsize: int, batch: int = 1
                        ) -> frozenset[str]:
    """The layers a plan recomputes to compute a repeated block's instance again
    from its input, as torch.utils.checkpoint does: every layer of the block
    whose output stays within it (the block's output, read by the next block,
    is kept), less those whose output and saved state no backward pass needs
    even then (a map a layer writes over in place, and nothing else reads).
    Empty where the block cannot be computed again that way."""
    members = dict(network.blocks).get(instance)
    if members is None:
        raise KeyError(f"network '{network.name}' has no block instance '{instance}'")
    inside, index, nodes = frozenset(members), network.index, network.nodes
    chosen = {name for name in members
              if all(nodes[c].name in inside for c in network.lives[name].consumers)
              and not nodes[index[name]].layer.IS_LOSS}
    while True:
        at = _recompute_points(network, chosen, itemsize, batch)
        needless = {name for name, point in at.items() if point is None}
        if not needless:
            break
        chosen -= needless
    if not chosen or any(_problem(network, name, at) for name in chosen):
        return frozenset()
    return frozenset(chosen)


def recomputable_blocks(network: Network, itemsize: int, batch: int = 1
                        ) -> dict[str, frozenset[str]]:
    """Each repeated block's instance that can be computed again from its input,
    with the layers that recomputes (`block_recomputation`), in profile order."""
    blocks = {instance: block_recomputation(network, instance, itemsize, batch)
              for instance, _ in network.blocks}
    return {instance: layers for instance, layers in blocks.items() if layers}


def recomputed_tensors(network: Network, plan: Plan, itemsize: int) -> frozenset[str]:
    """The feature maps a plan computes again in the backward pass (each is a
    layer's output, named as the layer); a ValueError where one cannot be."""
    return recompute_schedule(network, plan, itemsize).tensors


def move_schedule(network: Network, plan: Plan, offloaded: frozenset[str]
                  ) -> tuple[dict[str, int], dict[str, int]]:
    """Node indices where each offloaded map's device block is freed (every one)
    and where its copy back starts (those the plan gives a `Move`, in the plan's
    order). A move must free a map no earlier than its last forward consumer and
    start its copy back no later than its first backward user."""
    index, lives = network.index, network.lives
    release_at = {name: lives[name].last_forward_use for name in sorted(offloaded)}
    prefetch_at: dict[str, int] = {}
    for move in plan.moves:
        if move.tensor not in offloaded:
            raise ValueError(f"plan '{plan.policy}' moves '{move.tensor}', which it does "
                             "not offload")
        life = lives[move.tensor]
        release, prefetch = index.get(move.release_after), index.get(move.prefetch_before)
        if release is None or release < life.last_forward_use:
            raise ValueError(f"plan '{plan.policy}' frees '{move.tensor}' after "
                             f"'{move.release_after}', not a layer at or after its last "
                             "forward consumer")
        if prefetch is None or prefetch < max(life.backward_users):
            raise ValueError(f"plan '{plan.policy}' brings '{move.tensor}' back before "
                             f"'{move.prefetch_before}', not a layer at or after its first "
                             "backward user")
        release_at[move.tensor], prefetch_at[move.tensor] = release, prefetch
    return release_at, prefetch_at
