"""The budget planner: vmem's policy past vDNN.

vDNN offloads a fixed class of feature maps (every kept input, or every
convolution's), frees each at the end of the layer that offloads it (the host
waits for the copy there) and prefetches at most one convolution ahead. On a
GPU whose compute has outgrown its PCIe link, those copies show. The budget
planner spends the memory budget instead:

1. the fewest offloads that fit: layers ranked by the bytes their inputs free
   per modeled millisecond offloading them alone adds, the shortest prefix of
   the ranking that fits, less each layer it fits without; and the same again
   with recomputation ranked beside the offloads: a cheap layer's output
   (pooling, LRN, concatenation) dropped after the forward pass and computed
   again before its first backward user, for the bytes it frees per modeled
   millisecond of its forward pass; and the same once more with whole repeated
   blocks ranked beside those (each computed again from its input, as
   torch.utils.checkpoint does, for the bytes its layers' outputs and saved
   state free per modeled millisecond of their forward passes);
2. a schedule for them (`Move`), timed on the step with no offloads: a map's
   device block is freed at the end of the first layer by which its copy is
   modeled to be done, so the host does not wait for it, and its copy back
   starts as late as lets it arrive before its first backward user (or keeps
   the memory stream busy, where the copies queue up), in the order the maps
   are needed; where that does not fit, the largest map held at the peak goes
   back towards vDNN's schedule, until it does;
3. the same schedule over the shortest prefix of the ranking with which it fits
   whole (more offloads, none held back);
4. the fastest on the dry run's modeled clock of those, the fewest offloads on
   vDNN's schedule, the whole ranking (on vDNN's schedule and scheduled), what
   `vdnn-dyn` makes, every block computed again (on the quickest algorithms,
   and on the lighter ones), and the lightest plans (`floor_plans`): never
   slower than vDNN, nor than recomputing every block, where the model holds,
   and a plan wherever the lightest fits, below vDNN's floor too;
5. where the compute stream still waits for copies back under that plan, they
   start earlier: all at once by a layer while that fits and shortens the step,
   then one at a time, each change kept where it does.

Every layer runs the algorithm the cost model times fastest, so that a
smaller limit (which steps `vdnn-dyn`'s convolutions down) cannot buy a faster
plan; with the whole ranking always a candidate too, a larger limit gives a
slower plan less often (not never: the search's other choices depend on the
limit; bench/planner_monotone.py lists where it does).

Everything is decided from dry runs (exact peaks, modeled steps), so the
planner is a pure function of the network, the batch and the budget. A dry run
that only asks whether a plan fits stops at the first allocation past the
capacity (`PeakOracle.fits`). A plan on
vDNN's schedule that does less than one found to fit is not run where a bound
from that one's dry run already puts its peak above the capacity
(`vmem.policies.bound`): pruning and most of the search for the fewest
actions cost no dry run at all. Prefixes are searched upwards from the
shortest not ruled out (for a schedule, from the shortest on vDNN's schedule)
in doubling steps, then by bisection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from vmem.dryrun import DryRun
from vmem.graph import Network, TensorLife
from vmem.layers.base import numel
from vmem.plan import (
    LayerPlan,
    Move,
    Plan,
    offloadable_inputs,
    offloaded_tensors,
    recomputable,
    recomputable_blocks,
    recompute_schedule,
)
from vmem.policies.bound import PeakBound
from vmem.policies.vdnn import (
    Budget,
    blocks_recomputed,
    build_plan,
    check_trainable,
    floor_plans,
    held_bytes,
    offload_kept_inputs,
    offload_nothing,
    vdnn_dyn,
)
from vmem.profiler.events import Span

NAME = "budget"
SCHEDULE_TRIES = 32  # steps back towards vDNN's schedule before giving the schedule up
REFINE_TRIES = 24  # changes kept that start copies back earlier
REFINE_MISSES = 16  # plans tried in a row that do not help before refining stops
PRUNE_TRIES = 16  # dry runs that find an action needed before the rest are kept unasked
WAIT_MS = 1e-3  # a wait shorter than a microsecond is no wait
BOUNDS_KEPT = 3  # bounds tried before a dry run: the latest plans found to fit, the tightest
OFFLOAD, RECOMPUTE, LIGHTER, BLOCK = "offload", "recompute", "lighter", "block"
#: What the planner may do to a layer: offload its inputs, compute its output again, or
#: run it on its algorithm that keeps the least (attention's flash, whose log-sum-exp
#: stands for the probabilities the quicker materialized algorithm keeps); or to a
#: repeated block's instance (named as the profile names it): compute the whole block
#: again from its input (`block_recomputation`), as torch.utils.checkpoint does.
Action = tuple[str, str]
#: Repeated blocks' instances by name, each with the layers a BLOCK action on it recomputes.
Blocks = dict[str, frozenset[str]]


def budget(network: Network, batch: int, itemsize: int, limits: Budget) -> Plan:
    check_trainable(network, batch, itemsize, limits)
    quickest = _quickest(network, batch, itemsize, limits)
    fastest = build_plan(NAME, network, batch, itemsize, offload_nothing, quickest)
    if limits.fits(fastest):
        return fastest
    return _search(network, batch, itemsize, limits, fastest, quickest)


def _quickest(network: Network, batch: int, itemsize: int, limits: Budget) -> dict[str, int]:
    """Each layer's algorithm (its index) that the cost model times fastest, the
    earlier of equals: a list's first is the fastest by its own account, which a
    model may time slower than one with less workspace (a last, short chunk of
    the batch), and a plan should not need a smaller limit to run faster."""
    if limits.layer_ms is None:
        return {}
    options = network.algorithms(batch, itemsize)
    return {node.name: min(range(len(options[node.name])),
                           key=lambda k: (limits.layer_ms(node, options[node.name][k], batch), k))
            for node in network.nodes if len(options[node.name]) > 1}


def lighter_algorithms(network: Network, batch: int, itemsize: int,
                       quickest: dict[str, int]) -> dict[str, int]:
    """The layers whose last algorithm (the least memory) keeps less for the
    backward pass than their quickest, and holds less in all, by that algorithm's
    index: what a LIGHTER action switches them to. Convolutions' algorithms
    differ in workspace alone, held only while they run: vdnn-dyn's step-down, a
    candidate here, weighs those."""
    options, shapes = network.algorithms(batch, itemsize), network.shapes(batch)
    lighter = {}
    for node in network.nodes:
        algos = options[node.name]
        fast, light = algos[quickest.get(node.name, 0)], algos[-1]
        in_shapes = network.in_shapes(node, shapes)
        light_saved = node.layer.saved_bytes(in_shapes, itemsize, light)
        fast_saved = node.layer.saved_bytes(in_shapes, itemsize, fast)
        if (light_saved < fast_saved
                and light_saved + light.workspace_bytes < fast_saved + fast.workspace_bytes):
            lighter[node.name] = len(algos) - 1
    return lighter


def _search(network: Network, batch: int, itemsize: int, limits: Budget, fastest: Plan,
            quickest: dict[str, int]) -> Plan:
    """Steps 1 to 5 within one limit, where `fastest` does not fit, each layer on
    its `quickest` algorithm but where a LIGHTER action moves it. The lightest
    plans (`floor_plans`) are candidates too: the search finds a plan wherever
    either fits."""
    run = _dry_run(limits)
    lighter = lighter_algorithms(network, batch, itemsize, quickest)
    blocks = recomputable_blocks(network, itemsize, batch)
    # every block computed again, as torch.utils.checkpoint does, on the quickest
    # algorithms and on the lighter ones: where that fits, the search's fewest
    # actions (offloads first, as they rank) are not always quicker
    checkpointed = [blocks_recomputed(network, plan, itemsize, blocks) for plan in
                    (fastest, build_plan(NAME, network, batch, itemsize, offload_nothing,
                                         quickest | lighter))]
    candidates = [*(plan for plan in checkpointed if plan.layers != fastest.layers),
                  _relabel(vdnn_dyn(network, batch, itemsize, limits)),
                  *map(_relabel, floor_plans(network, batch, itemsize).values())]
    everything = build_plan(NAME, network, batch, itemsize, offload_kept_inputs,
                            quickest | lighter)
    timeline = Timeline.of(network, run(fastest), run(everything))
    # offloads alone; with single maps computed again; and with whole blocks too
    # (a ranking with more actions may settle on a slower plan: each is a candidate)
    rankings: list[tuple[bool, Blocks]] = [(False, {}), (True, {})]
    if blocks:
        rankings.append((True, blocks))
    for recompute, whole in rankings:
        ranking = _ranking(network, batch, itemsize, timeline, recompute,
                           quickest, lighter, limits, whole)
        candidates[:0] = _ranked(network, batch, itemsize, timeline, ranking, limits,
                                 quickest, whole)
    fitting = [plan for plan in candidates if limits.fits(plan)]
    best = min(fitting or candidates[-1:], key=lambda plan: run(plan).record.duration_ms)
    return _refined(network, best, limits) if best.moves else best


def _dry_run(limits: Budget) -> Callable[[Plan], DryRun]:
    assert limits.dry_run is not None, "the budget planner needs dry runs"
    return limits.dry_run


def _relabel(plan: Plan) -> Plan:
    return replace(plan, policy=NAME)


def _ranked(network: Network, batch: int, itemsize: int, timeline: Timeline,
            ranking: list[Action], limits: Budget, quickest: dict[str, int] | None = None,
            blocks: Blocks | None = None) -> list[Plan]:
    """Steps 1 to 3 over one ranking: the fewest actions that fit, on vDNN's
    schedule and scheduled; the shortest prefix whose whole schedule fits.
    Nothing where the whole ranking does not fit."""

    made: dict[tuple[Action, ...], Plan] = {}  # plain plans by their actions
    base = build_plan(NAME, network, batch, itemsize, offload_nothing, quickest)

    def plain(actions: Iterable[Action]) -> Plan:
        key = tuple(actions)
        if key not in made:
            made[key] = _plan(network, batch, itemsize, key, quickest, base, blocks)
        return made[key]

    def scheduled(actions: Iterable[Action]) -> Plan:
        return _scheduled(network, plain(actions), timeline)

    bounds: list[PeakBound] = []  # from the plain plans found to fit, the latest last

    def ruled_out(actions: list[Action]) -> bool:
        """Whether a bound from a plan found to fit says the plain plan does not."""
        plan, capacity = plain(actions), limits.capacity
        assert capacity is not None, "only a capacity makes a plan offload"
        return any((least := bound.at_least(plan)) is not None and least > capacity
                   for bound in bounds[-BOUNDS_KEPT:])

    needed = [0]  # dry runs that found a plain plan not to fit

    def fits_plain(actions: list[Action]) -> bool:
        if ruled_out(actions):
            return False
        plan = plain(actions)
        if not limits.fits(plan):
            needed[0] += 1
            return False
        bounds.append(PeakBound(network, plan, _dry_run(limits)(plan), itemsize))
        return True

    def fits_scheduled(actions: list[Action]) -> bool:
        return limits.fits(scheduled(actions))

    if not fits_plain(ranking):
        return []
    prefix = _shortest_prefix(ranking, fits_plain, _first_not_ruled_out(ranking, ruled_out))
    needed[0] = 0
    fewest = _pruned(prefix, fits_plain, lambda: needed[0] >= PRUNE_TRIES)
    # the whole ranking too: it fits every limit the search runs within, and the
    # fewest actions are not always the fastest (copies a schedule cannot hide)
    plans = [_fitted(network, plain(fewest), scheduled(fewest), limits, itemsize),
             plain(fewest),
             plain(ranking)]
    if fits_scheduled(ranking):  # enough offloads for the whole schedule to fit
        # a schedule holds maps longer than vDNN's: it needs a prefix at least as long
        plans[:0] = [scheduled(_shortest_prefix(ranking, fits_scheduled, len(prefix))),
                     scheduled(ranking)]
    return plans


def _plan(network: Network, batch: int, itemsize: int, actions: Iterable[Action],
          choice: dict[str, int] | None = None, base: Plan | None = None,
          blocks: Blocks | None = None) -> Plan:
    """Offloading the inputs of the layers the actions name and computing again
    the outputs they name (every layer `blocks` gives a BLOCK action's
    instance), the algorithms of `choice` but where a LIGHTER action names the
    layer (its last), vDNN's schedule. The blocks are computed again first
    (a chain from each block's input, which the block before keeps); beside
    them an output is not computed again from, nor into, another that is: of
    two such actions, the earlier in `actions` is taken. `base` is the plan of
    no actions on `choice`'s algorithms, where the caller has it: only the
    entries the actions touch are made anew (a search makes hundreds of plans of
    a thousand layers)."""
    actions = list(actions)
    offloads, recomputed, lighter = set(), set(), set()
    for kind, name in actions:
        if kind == BLOCK:
            assert blocks is not None, "a block action needs the blocks"
            recomputed |= blocks[name]
    for kind, layer in actions:
        if kind == OFFLOAD:
            offloads.add(layer)
        elif kind == LIGHTER:
            lighter.add(layer)
        elif kind == RECOMPUTE and not _chained(network, layer, recomputed):
            recomputed.add(layer)
    if base is None:
        base = build_plan(NAME, network, batch, itemsize, offload_nothing, choice)
    options, index, entries = network.algorithms(batch, itemsize), network.index, list(base.layers)
    for layer in offloads | recomputed | lighter:
        entry = entries[index[layer]]
        algorithm, workspace = entry.algorithm, entry.workspace_bytes
        if layer in lighter:
            light = options[layer][-1]
            algorithm, workspace = light.name, light.workspace_bytes
        entries[index[layer]] = LayerPlan(layer, algorithm, workspace, layer in offloads,
                                          layer in recomputed)
    return replace(base, layers=tuple(entries))


def _chained(network: Network, layer: str, recomputed: set[str]) -> bool:
    """Whether `layer`'s output is computed from, or into, one in `recomputed`."""
    nodes = network.nodes
    return (any(source in recomputed for source in nodes[network.index[layer]].inputs)
            or any(nodes[k].name in recomputed for k in network.lives[layer].consumers))


@dataclass(frozen=True)
class Timeline:
    """A step with no offloads on the modeled clock (when each layer's forward
    and backward pass start and end, by node index), and how long each
    offloadable map's copies take: what the planner times its choices on."""

    forward: tuple[Span, ...]
    backward: tuple[Span, ...]
    to_host_ms: dict[str, float]
    to_device_ms: dict[str, float]

    @staticmethod
    def of(network: Network, reference: DryRun, everything: DryRun) -> Timeline:
        spans = {(s.name, s.phase): s for s in reference.record.spans if s.kind == "kernel"}
        copies = {(s.name, s.kind): s.ms for s in everything.record.spans}
        moved = {s.name for s in everything.record.spans if s.kind == "copy_d2h"}
        return Timeline(tuple(spans[(node.name, "forward")] for node in network.nodes),
                        tuple(spans[(node.name, "backward")] for node in network.nodes),
                        {name: copies[(name, "copy_d2h")] for name in moved},
                        {name: copies[(name, "copy_h2d")] for name in moved})

    def releases(self, lives: dict[str, TensorLife], moved: Sequence[str]) -> dict[str, int]:
        """Where each map (in the order they are offloaded) is freed: the end of
        the first layer that ends after its copy, the memory stream copying in
        issue order, each once the layer that offloads it starts."""
        release, free_at, last = {}, 0.0, len(self.forward) - 1
        for name in moved:
            first = lives[name].last_forward_use
            free_at = max(self.forward[first].start_ms, free_at) + self.to_host_ms[name]
            release[name] = next((k for k in range(first, last + 1)
                                  if self.forward[k].end_ms >= free_at), last)
        return release

    def alone_ms(self, network: Network, name: str) -> float:
        """What offloading one map alone on vDNN's schedule adds to the step: its
        copy out beyond its last forward consumer (the host waits for it at the
        layer's end), and its copy back beyond the backward passes between
        vDNN's prefetch (at the nearest convolution, of `Network.heavy_layers`,
        after its first backward user, else the start of the backward pass) and
        that user's."""
        life, nodes = network.lives[name], network.nodes
        consumer, user = life.last_forward_use, max(life.backward_users)
        issue = next((k for k in range(user + 1, len(nodes))
                      if nodes[k].name in network.heavy_layers), len(nodes) - 1)
        out = self.to_host_ms[name] - self.forward[consumer].ms
        back = self.to_device_ms[name] - (self.backward[user].start_ms
                                          - self.backward[issue].start_ms)
        return max(out, 0.0) + max(back, 0.0)

    def prefetches(self, lives: dict[str, TensorLife], moved: Sequence[str]) -> dict[str, int]:
        """Where each map's copy back starts, in the order they are needed (never
        ahead of a map needed sooner): as late as lets it be back when its first
        backward user starts, and, where the copies back queue up, as late as
        keeps the memory stream busy."""
        prefetch, free_at, latest = {}, 0.0, len(self.backward) - 1
        for name in sorted(moved, key=lambda t: (-max(lives[t].backward_users), t)):
            user = max(lives[name].backward_users)
            took, due = self.to_device_ms[name], self.backward[user].start_ms
            at = next((k for k in range(user, latest + 1)
                       if max(self.backward[k].start_ms, free_at) + took <= due
                       or self.backward[k].start_ms <= free_at), latest)
            prefetch[name], latest = at, at
            free_at = max(self.backward[at].start_ms, free_at) + took
        return prefetch


def _ranking(network: Network, batch: int, itemsize: int, timeline: Timeline,
             recompute: bool = False, quickest: dict[str, int] | None = None,
             lighter: dict[str, int] | None = None, limits: Budget | None = None,
             blocks: Blocks | None = None) -> list[Action]:
    """Layers whose inputs may be offloaded, by the bytes each frees per modeled
    millisecond it adds to the step on its own under vDNN's schedule; with
    `recompute`, beside them the layers whose output may be computed again, by
    the bytes it frees per modeled millisecond of the layer's forward pass, and
    the `blocks` that may be, by the bytes their layers' outputs and saved state
    free per modeled millisecond of their forward passes; and
    the layers `lighter` names, by the bytes their lighter algorithm frees (what
    it saves and its workspace less the quickest's) per modeled millisecond it
    adds to the layer's passes."""
    shapes = network.shapes(batch)
    merit: dict[Action, float] = {}
    options = network.algorithms(batch, itemsize)
    for node in network.nodes:
        if node.name not in (lighter or {}):
            continue
        assert limits is not None and lighter is not None
        fast = options[node.name][(quickest or {}).get(node.name, 0)]
        light = options[node.name][lighter[node.name]]
        freed = (held_bytes(network, node, shapes, itemsize, fast)
                 - held_bytes(network, node, shapes, itemsize, light))
        added = 0.0
        if limits.layer_ms is not None:
            added = max(limits.layer_ms(node, light, batch) - limits.layer_ms(node, fast, batch),
                        0.0)
        merit[(LIGHTER, node.name)] = freed / (added + 0.01)
    for i, node in enumerate(network.nodes):
        action = (OFFLOAD, node.name)
        moved = offloadable_inputs(network, node.name) if offload_kept_inputs(node) else ()
        if moved:
            freed = sum(numel(shapes[name]) for name in moved) * itemsize
            added = sum(timeline.alone_ms(network, name) for name in moved)
            merit[action] = freed / (added + 0.01)  # +10 µs: no copy is free
        if recompute and recomputable(network, node.name, itemsize, batch) is None:
            freed = numel(shapes[node.name]) * itemsize
            merit[(RECOMPUTE, node.name)] = freed / (timeline.forward[i].ms + 0.01)
    for instance, layers in (blocks or {}).items() if recompute else ():
        freed, took = 0, 0.0
        for name in layers:
            k = network.index[name]
            node, algorithm = network.nodes[k], options[name][(quickest or {}).get(name, 0)]
            freed += (numel(shapes[name]) * itemsize + node.layer.saved_bytes(
                network.in_shapes(node, shapes), itemsize, algorithm))
            took += timeline.forward[k].ms
        merit[(BLOCK, instance)] = freed / (took + 0.01)
    return sorted(merit, key=lambda action: (-merit[action], action))


def _shortest_prefix(ranking: list[Action], fits: Callable[[list[Action]], bool],
                     fewest: int = 0) -> list[Action]:
    """The shortest prefix of the ranking that fits, taken to be no shorter than
    `fewest` (the caller has checked that the whole ranking fits): upwards from
    `fewest` in doubling steps, then by bisection."""
    most, step = len(ranking), 1
    while fewest + step - 1 < most:
        probe = fewest + step - 1
        if fits(ranking[:probe]):
            most = probe
            break
        fewest, step = probe + 1, step * 2
    while fewest < most:
        middle = (fewest + most) // 2
        if fits(ranking[:middle]):
            most = middle
        else:
            fewest = middle + 1
    return ranking[:most]


def _first_not_ruled_out(ranking: list[Action], ruled_out: Callable[[list[Action]], bool]
                         ) -> int:
    """The length of the shortest prefix the bounds do not rule out, by bisection
    (a longer prefix frees more, so its bound is lower)."""
    fewest, most = 0, len(ranking)
    while fewest < most:
        middle = (fewest + most) // 2
        if ruled_out(ranking[:middle]):
            fewest = middle + 1
        else:
            most = middle
    return most


def _pruned(chosen: list[Action], fits: Callable[[list[Action]], bool],
            done: Callable[[], bool] = lambda: False) -> list[Action]:
    """`chosen` less each action it fits without, the last taken first, until
    `done` says the search has spent enough (the actions not yet tried stay: the
    plan still fits). Where fewer actions hold more memory, dropping a run of
    actions that fits without all of them gives what dropping them one by one
    gives, so runs are tried, doubling after each that fits and halving after
    each that does not: a long run of actions not needed costs a few dry runs,
    not one each."""
    kept = list(chosen)  # decided to stay, or not yet tried: the prefix before `end`
    end, run = len(kept), 1
    while end > 0 and not done():
        run = min(run, end)
        rest = kept[:end - run] + kept[end:]
        if fits(rest):
            kept, end, run = rest, end - run, run * 2
        elif run > 1:
            run //= 2
        else:
            end -= 1  # this one stays
    return kept


def _scheduled(network: Network, plain: Plan, timeline: Timeline) -> Plan:
    """`plain`'s offloads with moves timed on the timeline, memory aside."""
    nodes, lives = network.nodes, network.lives
    moved = sorted(offloaded_tensors(network, plain), key=lambda t: (lives[t].last_forward_use, t))
    release, prefetch = timeline.releases(lives, moved), timeline.prefetches(lives, moved)
    return replace(plain, moves=tuple(Move(name, nodes[release[name]].name,
                                           nodes[prefetch[name]].name) for name in moved))


def _fitted(network: Network, plain: Plan, scheduled: Plan, limits: Budget, itemsize: int
            ) -> Plan:
    """`scheduled`, its moves stepped back towards vDNN's schedule until the plan
    fits (else `plain`: its offloads on vDNN's schedule)."""
    index = network.index
    release = {m.tensor: index[m.release_after] for m in scheduled.moves}
    prefetch = {m.tensor: index[m.prefetch_before] for m in scheduled.moves}
    shapes = network.shapes(plain.batch)
    sizes = {name: numel(shapes[name]) for name in release}
    recompute_at = recompute_schedule(network, plain, itemsize).at
    for _ in range(SCHEDULE_TRIES):
        plan = replace(plain, moves=tuple(Move(m.tensor, network.nodes[release[m.tensor]].name,
                                               network.nodes[prefetch[m.tensor]].name)
                                          for m in scheduled.moves if m.tensor in release))
        assert limits.capacity is not None, "only a capacity makes a plan offload"
        outcome = _dry_run(limits)(plan)  # whole: stepping back reads where its peak is
        if outcome.peak <= limits.capacity:
            return plan
        # maps held at the peak, in elements, that stepping back must free
        excess = -(-(outcome.peak - limits.capacity) // itemsize)
        if not _step_back(network, outcome, sizes, release, prefetch, recompute_at, excess):
            break
    return plain


def _step_back(network: Network, outcome: DryRun, sizes: dict[str, int],
               release: dict[str, int], prefetch: dict[str, int],
               recompute_at: dict[str, int], excess: int = 0) -> bool:
    """One step back towards vDNN's schedule at the peak: of the maps the moves
    hold on the device at the peak's layer, the largest is freed before that
    layer and at least halfway back to its last forward consumer, where vDNN
    frees it (forward), or brought back just after that layer (backward; where
    that is its first backward user, its move is dropped: vDNN's rule brings it
    back earlier); where the largest is smaller than the peak's `excess` over
    the capacity (in elements, as `sizes`), the largest that together reach it.
    False where no move holds anything at the peak."""
    peak = max(outcome.record.memory, key=lambda event: event.in_use)
    layer, lives = network.index.get(peak.layer, -1), network.lives
    if peak.phase == RECOMPUTE:  # a map computed again, where the backward pass needs it
        layer = recompute_at[peak.layer]
    if peak.phase == "forward":
        held = [n for n in release if lives[n].last_forward_use < layer <= release[n]]
    else:
        held = [n for n in prefetch if max(lives[n].backward_users) < layer <= prefetch[n]]
    if not held:
        return False
    # the largest first, as many as the excess needs: a deep network's schedule
    # may hold a hundred small maps at its peak, which one at a time would take as
    # many tries
    chosen, covered = [], 0
    for name in sorted(held, key=lambda n: (sizes[n], n), reverse=True):
        chosen.append(name)
        covered += sizes[name]
        if covered >= excess:
            break
    for name in chosen:
        if peak.phase == "forward":
            first = lives[name].last_forward_use
            release[name] = min(first + (release[name] - first) // 2, layer - 1)
        elif layer - 1 > max(lives[name].backward_users):
            prefetch[name] = layer - 1
        else:
            del release[name], prefetch[name]
    return True


def _refined(network: Network, plan: Plan, limits: Budget) -> Plan:
    """Where the compute stream waits for copies back, those copies started
    earlier in the backward pass, a change kept where the plan still fits and
    its modeled step is shorter: first every waited-for copy one layer earlier
    at once (a transformer's blocks wait alike, and one dry run then does what
    one a map would), again while that helps; then each alone 1, 2 or 4 layers
    earlier, the longest wait first. At most REFINE_TRIES changes are kept, and
    the search ends after REFINE_MISSES plans tried in a row are not."""
    run, index, nodes = _dry_run(limits), network.index, network.nodes
    settled: set[str] = set()  # maps no earlier start helps
    misses = 0

    def earlier(base: Plan, steps: dict[str, int]) -> Plan | None:
        """`base` with the named maps' copies back started that many layers earlier."""
        moves = list(base.moves)
        for k, move in enumerate(moves):
            if move.tensor in steps:
                at = index[move.prefetch_before] + steps[move.tensor]
                if at >= len(nodes):
                    return None
                moves[k] = replace(move, prefetch_before=nodes[at].name)
        return replace(base, moves=tuple(moves))

    def better(trial: Plan) -> bool:
        nonlocal misses
        if (limits.fits(trial)
                and run(trial).record.duration_ms < run(plan).record.duration_ms):
            misses = 0
            return True
        misses += 1
        return False

    together = True
    for _ in range(REFINE_TRIES):
        moved = {move.tensor for move in plan.moves}
        waits = sorted((s for s in run(plan).record.spans if s.kind == "wait"
                        and s.ms > WAIT_MS and s.name in moved and s.name not in settled),
                       key=lambda s: (-s.ms, s.name))
        found = None
        if together and len(waits) > 1:
            trial = earlier(plan, {wait.name: 1 for wait in waits})
            if trial is not None and better(trial):
                found = trial
            together = found is not None
        for wait in waits if found is None else ():
            for step in (1, 2, 4):
                if misses >= REFINE_MISSES:
                    return plan
                trial = earlier(plan, {wait.name: step})
                if trial is None:
                    break
                if better(trial):
                    found = trial
                    break
            if found is not None:
                break
            settled.add(wait.name)
        if found is None:
            return plan
        plan = found
    return plan
