"""vDNN's policies (Rhu et al., MICRO 2016), as pure functions over a budget."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, replace

from vmem.dryrun import DryRun
from vmem.errors import MemoryLimitTooSmall
from vmem.graph import Network, Node
from vmem.layers.base import Algorithm, Keeps
from vmem.plan import LayerPlan, Plan, recomputable_blocks
from vmem.units import format_bytes

Offload = Callable[[Node], bool]
LIMIT_FLAG = "--memory-limit"


@dataclass(frozen=True)
class Budget:
    """What a policy may spend: a device capacity (None: unlimited), a dry run
    of any plan (its exact peak, and its step on the device's cost model's
    clock) and the modeled time of a layer under an algorithm at a batch size
    (forward plus backward, ms, on the same model; None only where no model is
    given, as in a peaks-only budget). `bound` says what sets the capacity, for
    messages: the user's `--memory-limit`, or the device's own memory (a name such
    as "sim:titan-x's memory") where they gave none."""

    capacity: int | None = None
    dry_run: Callable[[Plan], DryRun] | None = None
    layer_ms: Callable[[Node, Algorithm, int], float] | None = None
    bound: str = LIMIT_FLAG
    # whether a plan's peak is within a capacity, where that costs less than its
    # whole dry run (`PeakOracle.fits`); None: from the dry run
    within: Callable[[Plan, int], bool] | None = None

    def describe_capacity(self) -> str:
        """The capacity as the user knows it: a limit they gave, or their device's
        memory when they gave none (never "a memory limit" they did not give)."""
        assert self.capacity is not None
        if self.bound == LIMIT_FLAG:
            return f"a memory limit of {format_bytes(self.capacity)}"
        return f"the {format_bytes(self.capacity)} of {self.bound} (no {LIMIT_FLAG})"

    def peak(self, plan: Plan) -> int:
        assert self.dry_run is not None, "a budget with a capacity needs dry runs"
        return self.dry_run(plan).peak

    def fits(self, plan: Plan) -> bool:
        if self.capacity is None:
            return True
        if self.within is not None:
            return self.within(plan, self.capacity)
        return self.peak(plan) <= self.capacity


def offload_nothing(node: Node) -> bool:
    return False


def offload_kept_inputs(node: Node) -> bool:
    return Keeps.INPUT in type(node.layer).KEEPS


def offload_heavy_inputs(network: Network) -> Offload:
    """vdnn-conv's rule: the inputs of the network's heavy layers
    (`Network.heavy_layers`): its convolutions, as in vDNN, or, in a network
    without any, its linear and attention layers."""
    heavy = network.heavy_layers
    return lambda node: node.name in heavy


def build_plan(policy: str, network: Network, batch: int, itemsize: int, offload: Offload,
               choice: dict[str, int] | None = None) -> Plan:
    """A plan offloading where `offload` says, each layer running the algorithm
    at index choice[layer] of its list (0, the fastest, by default; -1, the
    least workspace)."""
    options, choice = network.algorithms(batch, itemsize), choice or {}
    entries = []
    for node in network.nodes:
        algorithm = options[node.name][choice.get(node.name, 0)]
        entries.append(LayerPlan(node.name, algorithm.name, algorithm.workspace_bytes,
                                 offload(node)))
    return Plan(policy, batch, tuple(entries))


def none(network: Network, batch: int, itemsize: int, budget: Budget) -> Plan:
    return build_plan("none", network, batch, itemsize, offload_nothing)


def vdnn_all(network: Network, batch: int, itemsize: int, budget: Budget) -> Plan:
    return build_plan("vdnn-all", network, batch, itemsize, offload_kept_inputs)


def vdnn_conv(network: Network, batch: int, itemsize: int, budget: Budget) -> Plan:
    return build_plan("vdnn-conv", network, batch, itemsize, offload_heavy_inputs(network))


def memory_optimal(network: Network, batch: int, itemsize: int) -> Plan:
    """vdnn-all with every layer on the algorithm that holds the least (its
    workspace and what it saves for its backward pass; of equals the later, the
    smaller workspace in a convolution's list): the least device memory any
    vDNN configuration needs. Flash attention's tiles, at a T shorter than a
    tile, hold more than the probabilities the materialized algorithm saves."""
    options, shapes = network.algorithms(batch, itemsize), network.shapes(batch)
    least = {}
    for node in network.nodes:
        algos = options[node.name]
        least[node.name] = min(range(len(algos)), key=lambda k: (
            held_bytes(network, node, shapes, itemsize, algos[k]), -k))
    return build_plan("vdnn-all (memory-optimal)", network, batch, itemsize,
                      offload_kept_inputs, least)


def held_bytes(network: Network, node: Node, shapes: dict[str, tuple[int, ...]],
               itemsize: int, algorithm: Algorithm) -> int:
    """What a layer holds on an algorithm beyond its inputs and output: its
    workspace and what it saves for its backward pass."""
    in_shapes = network.in_shapes(node, shapes)
    return algorithm.workspace_bytes + node.layer.saved_bytes(in_shapes, itemsize, algorithm)


def blocks_recomputed(network: Network, plan: Plan, itemsize: int,
                      blocks: dict[str, frozenset[str]] | None = None) -> Plan:
    """`plan` with every repeated block computed again from its input as well
    (`vmem.plan.recomputable_blocks`, or `blocks` where the caller has them at the
    plan's batch); the plan itself in a network without any."""
    if blocks is None:
        blocks = recomputable_blocks(network, itemsize, plan.batch)
    chosen = frozenset().union(*blocks.values())
    if not chosen:
        return plan
    return Plan(plan.policy, plan.batch, tuple(
        replace(entry, recompute_output=entry.recompute_output or entry.layer in chosen)
        for entry in plan.layers), plan.moves)


def floor_plans(network: Network, batch: int, itemsize: int) -> dict[str, Plan]:
    """The lightest plans, by what they do: vDNN's floor (`memory_optimal`) and,
    in a network of repeated blocks, budget's: the same with every block
    computed again from its input, which keeps a block's input alone (offloaded
    too) where vDNN keeps every map a backward pass reads. A capacity that
    neither fits no policy meets; vdnn-dyn meets the first wherever it fits,
    budget either."""
    vdnn = memory_optimal(network, batch, itemsize)
    floors = {"vdnn-all with memory-optimal algorithms": vdnn}
    lighter = blocks_recomputed(network, vdnn, itemsize)
    if lighter is not vdnn:
        floors["vdnn-all with memory-optimal algorithms, every repeated block computed "
               "again from its input"] = replace(lighter, policy="budget (lightest)")
    return floors


def policy_floors(network: Network, batch: int, itemsize: int, policy: str) -> list[Plan]:
    """The lightest plans `policy` can fall back to: budget's `floor_plans`, vDNN's
    memory-optimal configuration for the others (budget's block floor is not built
    for them: `vmem fit` probes a floor at every batch it tries)."""
    if policy == "budget":
        return list(floor_plans(network, batch, itemsize).values())
    return [memory_optimal(network, batch, itemsize)]


def check_trainable(network: Network, batch: int, itemsize: int, budget: Budget) -> None:
    """Refuse a capacity that even the lightest plan vmem makes exceeds."""
    if budget.capacity is None:
        return
    floors = floor_plans(network, batch, itemsize)
    if any(budget.fits(plan) for plan in floors.values()):
        return
    words, least = min(floors.items(), key=lambda item: budget.peak(item[1]))
    raise MemoryLimitTooSmall(
        f"{budget.describe_capacity()} cannot train "
        f"{network.name} at batch {batch} under any policy: {words} needs at least "
        f"{format_bytes(budget.peak(least))} ({budget.peak(least):,} bytes)")


def vdnn_dyn(network: Network, batch: int, itemsize: int, budget: Budget) -> Plan:
    """vDNN's dynamic policy: (1) check trainability with vdnn-all and
    memory-optimal algorithms; (2) the fastest algorithms with no offload, then
    offloading the heavy layers' inputs (vdnn-conv's: convolutions, or linear and
    attention layers where there are none), then all kept inputs, whichever fits
    first; (3) else, offloading the heavy layers' inputs and then all kept inputs,
    step layers down their algorithms (convolutions to smaller workspaces,
    attention from materialized to flash), greedily, until the plan fits;
    (4) else (1)'s configuration."""
    def relabel(plan: Plan) -> Plan:
        return Plan("vdnn-dyn", plan.batch, plan.layers)

    check_trainable(network, batch, itemsize, budget)
    heavy = offload_heavy_inputs(network)
    for offload in (offload_nothing, heavy, offload_kept_inputs):
        plan = build_plan("vdnn-dyn", network, batch, itemsize, offload)
        if budget.fits(plan):
            return plan
    for offload in (heavy, offload_kept_inputs):
        plan = _step_down_until_fits(network, batch, itemsize, offload, budget)
        if plan is not None:
            return plan
    return relabel(memory_optimal(network, batch, itemsize))


def _step_down_until_fits(network: Network, batch: int, itemsize: int, offload: Offload,
                          budget: Budget) -> Plan | None:
    """Greedy: while the plan does not fit, move one layer with several algorithms
    (a convolution's im2col chunks, attention's materialized and flash) to its next
    one down the list, choosing the step that frees the most memory (workspace and
    the state the layer saves for its backward pass) per millisecond it adds (by
    memory alone where no cost is known). None where every step taken does not fit."""
    every = network.algorithms(batch, itemsize)
    options = {node.name: every[node.name] for node in network.nodes
               if len(every[node.name]) > 1}
    by_name = {node.name: node for node in network.nodes}
    shapes = network.shapes(batch)

    def held(name: str, algorithm: Algorithm) -> int:
        return held_bytes(network, by_name[name], shapes, itemsize, algorithm)

    def merit(name: str, k: int) -> float | None:
        """What moving `name` from its algorithm k to k + 1 frees per ms it adds;
        None where it frees nothing (flash attention's tiles at a T shorter than a
        tile hold more than the probabilities): no such step is taken."""
        now, nxt = options[name][k], options[name][k + 1]
        freed = held(name, now) - held(name, nxt)
        if freed <= 0:
            return None
        if budget.layer_ms is None:
            return float(freed)
        added = (budget.layer_ms(by_name[name], nxt, batch)
                 - budget.layer_ms(by_name[name], now, batch))
        return freed / max(added, 1e-6)

    # A step's merit depends on its layer's algorithm alone, so the greedy order of
    # every step is known before any dry run: the best next step of any layer first
    # (the earlier layer of equals).
    order = {name: i for i, name in enumerate(options)}
    heap: list[tuple[float, int, str]] = []
    taken = dict.fromkeys(options, 0)

    def offer(name: str) -> None:
        if taken[name] + 1 < len(options[name]):
            value = merit(name, taken[name])
            if value is not None:
                heapq.heappush(heap, (-value, order[name], name))

    for name in options:
        offer(name)
    steps: list[str] = []
    while heap:
        _, _, name = heapq.heappop(heap)
        steps.append(name)
        taken[name] += 1
        offer(name)

    plans: dict[int, Plan] = {}

    def plan_after(count: int) -> Plan:
        if count not in plans:
            choice = dict.fromkeys(options, 0)
            for name in steps[:count]:
                choice[name] += 1
            plans[count] = build_plan("vdnn-dyn", network, batch, itemsize, offload, choice)
        return plans[count]

    # Each step frees memory, so fewer steps fit only where more do: the fewest that
    # fit, found upwards in doubling steps, then by bisection.
    if not budget.fits(plan_after(len(steps))):
        return None
    fewest, most, step = 0, len(steps), 1
    while fewest + step - 1 < most:
        probe = fewest + step - 1
        if budget.fits(plan_after(probe)):
            most = probe
            break
        fewest, step = probe + 1, step * 2
    while fewest < most:
        middle = (fewest + most) // 2
        if budget.fits(plan_after(middle)):
            most = middle
        else:
            fewest = middle + 1
    return plan_after(most)


def vdnn_configuration(network: Network, plan: Plan, itemsize: int) -> str | None:
    """Which of vDNN's configurations a plan is, in words (what `vmem plan` says
    vdnn-dyn chose): what it offloads (nothing, the heavy layers' inputs, or every
    kept input) and how many layers (convolutions, attention) run a smaller workspace than their
    fastest algorithm; None for a plan that is none of them (budget's, which
    frees and prefetches on its own schedule or recomputes)."""
    if plan.moves or any(entry.recompute_output for entry in plan.layers):
        return None
    asked = {entry.layer for entry in plan.layers if entry.offload_input}
    heavy = offload_heavy_inputs(network)
    offloads = {
        "vdnn-conv's offloads (the heavy layers' inputs)": {
            node.name for node in network.nodes if heavy(node)},
        "vdnn-all's offloads (every kept input)": {
            node.name for node in network.nodes if offload_kept_inputs(node)},
        "no offload": set(),
    }
    what = next((words for words, names in offloads.items() if names == asked), None)
    if what is None:
        return None
    options = network.algorithms(plan.batch, itemsize)
    stepped = [entry.layer for entry in plan.layers
               if entry.algorithm != options[entry.layer][0].name]
    least = all(entry.algorithm == options[entry.layer][-1].name for entry in plan.layers)
    if not stepped:
        return f"{what}, the fastest algorithms"
    if least:
        return f"{what}, every layer on its least-workspace algorithm (memory-optimal)"
    return (f"{what}, {len(stepped)} layer{'s' if len(stepped) != 1 else ''} stepped down to "
            "a smaller workspace")
