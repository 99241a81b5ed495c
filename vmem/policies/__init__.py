"""Policies: pure functions `(network, batch, itemsize) -> Plan`.

`none` keeps everything on the device and runs every layer with its fastest
algorithm: with no memory limit it is the oracular reference every other
policy is measured against.
"""

from __future__ import annotations

from collections.abc import Callable

from vmem.errors import UsageError
from vmem.graph import Network
from vmem.plan import LayerPlan, Plan

Policy = Callable[[Network, int, int], Plan]


def none(network: Network, batch: int, itemsize: int) -> Plan:
    shapes = network.shapes(batch)
    entries = []
    for node in network.nodes:
        fastest = node.layer.algorithms(network.in_shapes(node, shapes), itemsize)[0]
        entries.append(LayerPlan(node.name, fastest.name, fastest.workspace_bytes))
    return Plan("none", batch, tuple(entries))


POLICIES: dict[str, Policy] = {"none": none}


def make_plan(policy: str, network: Network, batch: int, itemsize: int) -> Plan:
    try:
        make = POLICIES[policy]
    except KeyError:
        raise UsageError(f"--policy: unknown policy '{policy}'; known: "
                         f"{', '.join(POLICIES)}") from None
    return make(network, batch, itemsize)
