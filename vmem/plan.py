"""`Plan`: what a policy decided, per layer, as pure data.

A plan names, for every layer, the algorithm it runs with (for convolution the
im2col chunk, hence its workspace) and whether its input leaves the device
during the forward pass. It round-trips through JSON and explains itself as a
table. It never changes the arithmetic, only where bytes live.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vmem.graph import Network


@dataclass(frozen=True)
class LayerPlan:
    layer: str
    algorithm: str
    workspace_bytes: int = 0
    offload_input: bool = False


@dataclass(frozen=True)
class Plan:
    policy: str
    batch: int
    layers: tuple[LayerPlan, ...]

    def for_layer(self, name: str) -> LayerPlan:
        for layer_plan in self.layers:
            if layer_plan.layer == name:
                return layer_plan
        raise KeyError(f"plan '{self.policy}' has no entry for layer '{name}'")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @staticmethod
    def from_json(text: str) -> Plan:
        data = json.loads(text)
        return Plan(data["policy"], int(data["batch"]),
                    tuple(LayerPlan(**entry) for entry in data["layers"]))

    def explain(self) -> str:
        from vmem.units import format_bytes

        rows = [f"plan '{self.policy}' at batch {self.batch}",
                f"{'layer':<24} {'algorithm':<14} {'workspace':>12}  offload input"]
        for lp in self.layers:
            rows.append(f"{lp.layer:<24} {lp.algorithm:<14} {format_bytes(lp.workspace_bytes):>12}"
                        f"  {'yes' if lp.offload_input else '-'}")
        return "\n".join(rows)


def offloaded_tensors(network: Network, plan: Plan) -> frozenset[str]:
    """The feature maps a plan moves to the host: inputs of the layers whose entry
    says offload, where a backward pass needs them later and no layer writes over
    them in place. A tensor read by several layers is offloaded once, after the
    last of them (GoogLeNet's forks)."""
    asked = {entry.layer for entry in plan.layers if entry.offload_input}
    lives = network.lives
    return frozenset(source for node in network.nodes if node.name in asked
                     for source in node.inputs
                     if lives[source].backward_users and lives[source].inplace_into is None)
