"""`Plan`: what a policy decided, per layer, as pure data.

A plan names, for every layer, the algorithm it runs with (for convolution the
im2col chunk, hence its workspace), whether its input leaves the device during
the forward pass, and whether its output is dropped after the forward pass and
computed again in the backward pass (recomputation: cheap layers such as
pooling and LRN, whose input the device keeps anyway); optionally, for an
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
    return frozenset(source for node in network.nodes if node.name in asked
                     for source in offloadable_inputs(network, node.name)
                     if source not in recomputed)


def offloadable_inputs(network: Network, layer: str) -> tuple[str, ...]:
    """The inputs of `layer` that offloading its input moves to the host (where
    the plan does not compute them again instead): those a backward pass needs
    later and no layer writes over in place."""
    lives = network.lives
    return tuple(source for source in dict.fromkeys(network.nodes[network.index[layer]].inputs)
                 if lives[source].backward_users and lives[source].inplace_into is None)


def recomputable(network: Network, name: str, itemsize: int, batch: int = 1) -> str | None:
    """Why layer `name`'s output cannot be dropped after the forward pass and
    computed again in the backward pass, or None where it can: a backward pass
    must need it; the layer must save nothing for its own backward pass (dropout
    saves its mask: computing it again would draw another) and not be the loss;
    and each of its inputs must still be held (on the device or the host) when
    its output's first backward user runs, which holds where the layer keeps its
    inputs for its own backward pass (pooling, LRN)."""
    node = network.nodes[network.index[name]]
    lives = network.lives
    if node.layer.IS_LOSS:
        return "it is the loss"
    if not lives[name].backward_users:
        return "no backward pass needs its output"
    shapes = network.shapes(batch)
    if node.layer.saved_bytes(network.in_shapes(node, shapes), itemsize):
        return "it saves state for its backward pass"
    needed_at = max(lives[name].backward_users)
    for source in node.inputs:
        users = lives[source].backward_users
        if not users or min(users) > needed_at:
            return f"its input '{source}' is gone by its output's first backward user"
    return None


def recomputed_tensors(network: Network, plan: Plan, itemsize: int) -> frozenset[str]:
    """The feature maps a plan computes again in the backward pass (each is a
    layer's output, named as the layer); a ValueError where one cannot be, or
    where one is computed from another (a chain would need both at once)."""
    chosen = frozenset(entry.layer for entry in plan.layers if entry.recompute_output)
    for name in sorted(chosen):
        why = recomputable(network, name, itemsize, plan.batch)
        if why is not None:
            raise ValueError(f"plan '{plan.policy}' recomputes the output of '{name}', but "
                             f"{why}")
        node = network.nodes[network.index[name]]
        nested = [source for source in node.inputs if source in chosen]
        if nested:
            raise ValueError(f"plan '{plan.policy}' recomputes the output of '{name}' from "
                             f"'{nested[0]}', which it also recomputes")
    return chosen


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
