"""How the budget planner searches: the peak bounds that let it skip dry runs
hold against the dry runs themselves, and its plans stay as fast as references
it must not lose to (vdnn-dyn, and an exhaustive search on a small network)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest
from networks import gpt2_tiny, pointwise_network, resnet18_plain

import vmem
from vmem.costs import load_costs
from vmem.dryrun import DryRun, PeakOracle
from vmem.graph import Network
from vmem.optim import SGD
from vmem.plan import recomputable
from vmem.planning import make_budget
from vmem.policies.bound import PeakBound
from vmem.policies.budget import (
    LIGHTER,
    OFFLOAD,
    RECOMPUTE,
    _plan,
    _pruned,
    budget,
    lighter_algorithms,
)
from vmem.policies.vdnn import (
    Budget,
    _step_down_until_fits,
    build_plan,
    memory_optimal,
    offload_heavy_inputs,
    offload_kept_inputs,
    vdnn_dyn,
)
from vmem.profile import load_profile


def oracle(network: Network) -> PeakOracle:
    return PeakOracle(network, np.dtype("float32"), SGD(), costs=load_costs("h100-pcie5"))


def actions(network: Network, batch: int) -> list[tuple[str, str]]:
    """Every offload, recomputation and lighter algorithm the planner may choose."""
    offloads = [(OFFLOAD, n.name) for n in network.nodes if offload_kept_inputs(n)]
    recomputes = [(RECOMPUTE, n.name) for n in network.nodes
                  if recomputable(network, n.name, 4, batch) is None]
    lighter = [(LIGHTER, name) for name in lighter_algorithms(network, batch, 4, {})]
    return offloads + recomputes + lighter


ALL = (OFFLOAD, RECOMPUTE, LIGHTER)


@pytest.mark.parametrize(("network", "batch", "kinds"), [
    (pointwise_network(), 4, ALL), (load_profile("googlenet-tiny").network, 8, ALL),
    (resnet18_plain(), 32, ALL), (gpt2_tiny(tile=2), 4, (OFFLOAD, LIGHTER))],
    ids=["pointwise", "googlenet-tiny", "resnet18-plain", "gpt2-tiny-flash"])
def test_a_bound_from_a_plan_that_does_more_never_exceeds_the_peak(
        network: Network, batch: int, kinds: tuple[str, ...]) -> None:
    """From random plans, random subsets of their actions (of `kinds`; gpt2-tiny's
    offloads and lighter attention, its recomputations being chains, for which no
    bound holds): the bound, where one holds, is at most the subset's exact peak;
    and it is exact where no other map's copy back moves (the bound's worth: it
    spares the planner dry runs)."""
    peak, rng = oracle(network), random.Random(7)
    every = [action for action in actions(network, batch) if action[0] in kinds]
    checked = exact = 0
    for _ in range(12):
        chosen = rng.sample(every, k=rng.randint(1, len(every)))
        plan = _plan(network, batch, 4, chosen)
        bound = PeakBound(network, plan, peak.run(plan), 4)
        assert bound.at_least(plan) == peak(plan)  # nothing removed: the dry run's peak
        for _ in range(4):
            fewer = _plan(network, batch, 4, rng.sample(chosen, k=rng.randint(0, len(chosen))))
            least = bound.at_least(fewer)
            if least is not None:
                checked += 1
                assert least <= peak(fewer)
                exact += least == peak(fewer)
    assert checked >= 8 and exact >= checked // 4


def test_budget_is_no_slower_than_the_fastest_of_every_offload_and_recomputation() -> None:
    """On a small network, every subset of the planner's actions on vDNN's
    schedule, run: within each limit of a sweep, budget's plan is at least as
    fast as the fastest subset that fits (its schedule is what it adds)."""
    network, batch = pointwise_network(), 64
    peak = oracle(network)
    every = actions(network, batch)
    assert len(every) <= 10  # 2**10 dry runs at most
    plans = [_plan(network, batch, 4, list(chosen)) for r in range(len(every) + 1)
             for chosen in itertools.combinations(every, r)]
    least, most = min(map(peak, plans)), peak(plans[0])
    for limit in np.linspace(least, most, 6)[:-1].astype(int):
        fastest = min(peak.run(p).record.duration_ms for p in plans if peak(p) <= limit)
        plan = budget(network, batch, 4, make_budget(network, int(limit), peak))
        assert peak(plan) <= limit
        assert peak.run(plan).record.duration_ms <= fastest + 1e-9, limit


@pytest.mark.parametrize(("network", "limits_gib"), [
    (resnet18_plain(), (2.0, 2.05, 2.1, 2.15, 2.2, 2.3, 2.6)),
    (load_profile("alexnet").network, (1.7, 1.8, 2.0, 2.2, 2.5))],
    ids=["resnet18-plain", "alexnet"])
def test_a_larger_limit_never_gives_a_slower_plan(network: Network,
                                                  limits_gib: tuple[float, ...]) -> None:
    """Batch 256 on sim:h100-pcie5, a sweep of limits: each plan fits its limit,
    is no slower than vdnn-dyn's within it, nor than any smaller limit's plan
    (ResNet-18 without BatchNorm within 2.2 GiB once recomputed pool1 at
    76.80 ms where the plans within 2.05 to 2.15 GiB hid a copy at 76.44 ms)."""
    peak, batch, steps = oracle(network), 256, []
    for gib in limits_gib:
        limits = make_budget(network, int(gib * 2**30), peak)
        plan = budget(network, batch, 4, limits)
        assert peak(plan) <= limits.capacity
        step = peak.run(plan).record.duration_ms
        assert step <= peak.run(vdnn_dyn(network, batch, 4, limits)).record.duration_ms + 1e-9
        assert all(step <= before + 1e-9 for before in steps), (gib, step, steps)
        steps.append(step)


def test_a_plan_for_a_limit_is_no_slower_than_one_found_for_a_smaller_limit() -> None:
    """The plain convolution stack of bench/planner_depth.py at 16 pairs, whose
    fastest-listed im2col chunk the model times slower than the next (a short
    last chunk): a sweep of limits, each plan no slower than the smaller ones'."""
    t = vmem.layers.LAYER_TYPES
    layers = []
    for i in range(16):
        layers += [t["conv"](name=f"conv{i}", out_channels=32, kernel=3, pad=1),
                   t["relu"](name=f"relu{i}")]
    layers += [t["avgpool"](name="pool", kernel=32), t["linear"](name="fc", out_features=10),
               t["softmax_loss"](name="loss")]
    network = vmem.Network.sequential("conv-stack-16", (32, 32, 32), layers)
    peak, batch = oracle(network), 256
    top = peak(_plan(network, batch, 4, []))
    steps = []
    for fraction in (0.2, 0.3, 0.4, 0.5, 0.7, 0.9):
        plan = budget(network, batch, 4, make_budget(network, int(top * fraction), peak))
        step = peak.run(plan).record.duration_ms
        assert all(step <= before + 1e-9 for before in steps), (fraction, step, steps)
        steps.append(step)


def test_attention_on_flash_is_an_action_with_a_bound() -> None:
    """gpt2-tiny, flash tiles of 2: each attention layer may go lighter (flash keeps
    a log-sum-exp a row where materialized keeps P, and its workspace is smaller);
    the bound from the plan with all of them lighter, for a plan with none, is at
    most its peak and more than the lighter plan's; where the bound's plan is the
    heavier one, there is none."""
    network, batch = gpt2_tiny(tile=2), 4
    peak = oracle(network)
    attention = [n.name for n in network.nodes if n.layer.TYPE == "attention"]
    assert lighter_algorithms(network, batch, 4, {}) == dict.fromkeys(attention, 1)
    light = _plan(network, batch, 4, [(LIGHTER, name) for name in attention])
    heavy = _plan(network, batch, 4, [])
    assert {light.for_layer(name).algorithm for name in attention} == {"flash"}
    assert peak(light) < peak(heavy)
    least = PeakBound(network, light, peak.run(light), 4).at_least(heavy)
    assert least is not None and peak(light) < least <= peak(heavy)
    assert PeakBound(network, heavy, peak.run(heavy), 4).at_least(light) is None
    # tiles of 8: flash's workspace is larger than materialized's, its saved state
    # and workspace together smaller: lighter, but no bound holds across it
    wider = gpt2_tiny(tile=8)
    assert lighter_algorithms(wider, batch, 4, {}) == dict.fromkeys(attention, 1)
    light = _plan(wider, batch, 4, [(LIGHTER, name) for name in attention])
    peak = oracle(wider)
    assert PeakBound(wider, light, peak.run(light), 4).at_least(_plan(wider, batch, 4, [])) is None
    # at T = 32 in one tile of 128 keys, flash's tiles hold more than P: not lighter
    assert lighter_algorithms(gpt2_tiny(), batch, 4, {}) == {}


def sequential_pruned(chosen: list, fits) -> list:  # noqa: ANN001 - the reference
    for action in reversed(chosen):
        rest = [other for other in chosen if other != action]
        if fits(rest):
            chosen = rest
    return chosen


def test_pruning_in_runs_gives_what_pruning_one_by_one_gives() -> None:
    """Where fewer actions never free more (memory falls as actions are added):
    random weighted actions and needs, the result of pruning runs of actions, and
    fewer calls where many actions are not needed."""
    rng = random.Random(3)
    for trial in range(200):
        weights = {f"a{i}": rng.choice([0, 0, 1, 2, 5]) for i in range(rng.randint(1, 40))}
        chosen = list(weights)
        need = rng.randint(0, sum(weights.values()))

        def fits(actions: list, weights: dict = weights, need: int = need) -> bool:
            return sum(weights[a] for a in actions) >= need

        assert _pruned(chosen, fits) == sequential_pruned(chosen, fits), trial
    chosen = [f"a{i}" for i in range(64)]
    calls = [0]

    def loose(actions: list) -> bool:  # only the first action is needed
        calls[0] += 1
        return "a0" in actions

    assert _pruned(chosen, loose) == ["a0"] and calls[0] <= 16
    assert _pruned(chosen, loose, done=lambda: True) == chosen  # spent: nothing dropped


def sequential_step_down(network: Network, batch: int, offload, budget: Budget):  # noqa: ANN001, ANN201
    """vdnn-dyn's step-down as a greedy loop, one dry run a step: the reference."""
    every = network.algorithms(batch, 4)
    options = {n.name: every[n.name] for n in network.nodes if len(every[n.name]) > 1}
    by_name = {n.name: n for n in network.nodes}
    shapes = network.shapes(batch)

    def held(name: str, algo) -> int:  # noqa: ANN001
        node = by_name[name]
        return algo.workspace_bytes + node.layer.saved_bytes(
            network.in_shapes(node, shapes), 4, algo)

    choice = dict.fromkeys(options, 0)
    while True:
        plan = build_plan("vdnn-dyn", network, batch, 4, offload, choice)
        if budget.fits(plan):
            return plan

        def merit(name: str) -> float:
            now, nxt = options[name][choice[name]], options[name][choice[name] + 1]
            added = budget.layer_ms(by_name[name], nxt, batch) - budget.layer_ms(
                by_name[name], now, batch)
            return (held(name, now) - held(name, nxt)) / max(added, 1e-6)

        steps = [n for n in options if choice[n] + 1 < len(options[n])
                 and held(n, options[n][choice[n]]) > held(n, options[n][choice[n] + 1])]
        if not steps:
            return None
        choice[max(steps, key=merit)] += 1


@pytest.mark.parametrize(("network", "batch"), [
    (load_profile("vgg16-tiny").network, 64), (load_profile("alexnet-tiny").network, 64),
    (gpt2_tiny(tile=8), 16)], ids=["vgg16-tiny", "alexnet-tiny", "gpt2-tiny-flash"])
def test_the_step_down_by_bisection_is_the_greedy_loop(network: Network, batch: int) -> None:
    """vdnn-dyn's step-down finds the fewest greedy steps that fit by bisection
    over the greedy order (known before any dry run): the plan the one-step-a-dry-run
    loop finds, over a sweep of limits from the memory-optimal peak up."""
    peak = oracle(network)
    heavy = offload_heavy_inputs(network)
    low = peak(memory_optimal(network, batch, 4))
    high = peak(build_plan("x", network, batch, 4, offload_kept_inputs))
    compared = 0
    for limit in np.linspace(low, high, 7).astype(int):
        limits = make_budget(network, int(limit), peak)
        for offload in (heavy, offload_kept_inputs):
            expected = sequential_step_down(network, batch, offload, limits)
            got = _step_down_until_fits(network, batch, 4, offload, limits)
            assert got == expected, limit
            compared += expected is not None
    assert compared >= 4


@pytest.mark.parametrize(("network", "batch"), [
    (pointwise_network(), 16), (load_profile("googlenet-tiny").network, 8),
    (gpt2_tiny(tile=2), 4)], ids=["pointwise", "googlenet-tiny", "gpt2-tiny"])
def test_a_step_stopped_past_the_capacity_tells_what_the_whole_dry_run_does(
        network: Network, batch: int) -> None:
    """`PeakOracle.fits` against the peaks of whole dry runs (a second oracle) for
    random plans, within capacities about each peak: the same answer every time;
    a step that completes within the capacity is the whole dry run, event for
    event; and a plan found past a capacity is not run again for a smaller one."""
    whole, rng = oracle(network), random.Random(3)
    every = actions(network, batch)

    def same(a: DryRun, b: DryRun) -> bool:  # the host's own issuing time aside
        return a.peak == b.peak and replace(a.record, host_ms=None) == replace(b.record,
                                                                                host_ms=None)

    for _ in range(6):
        plan = _plan(network, batch, 4, rng.sample(every, k=rng.randint(0, len(every))))
        exact = whole.run(plan)
        for capacity in (exact.peak - 1, exact.peak, exact.peak // 2, exact.peak + 1):
            stopped = oracle(network)
            assert stopped.fits(plan, capacity) == (exact.peak <= capacity)
            assert stopped.dry_runs == 1
            if exact.peak <= capacity:
                assert same(stopped.run(plan), exact) and stopped.dry_runs == 1
            else:
                assert not stopped.fits(plan, capacity - 1) and stopped.dry_runs == 1
                assert same(stopped.run(plan), exact) and stopped.dry_runs == 2
