"""How the budget planner searches: the peak bounds that let it skip dry runs
hold against the dry runs themselves, and its plans stay as fast as references
it must not lose to (vdnn-dyn, and an exhaustive search on a small network)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from networks import pointwise_network, resnet18_plain

from vmem.costs import load_costs
from vmem.dryrun import PeakOracle
from vmem.graph import Network
from vmem.optim import SGD
from vmem.plan import recomputable
from vmem.planning import make_budget
from vmem.policies.bound import PeakBound
from vmem.policies.budget import OFFLOAD, RECOMPUTE, _plan, budget
from vmem.policies.vdnn import offload_kept_inputs
from vmem.profile import load_profile


def oracle(network: Network) -> PeakOracle:
    return PeakOracle(network, np.dtype("float32"), SGD(), costs=load_costs("h100-pcie5"))


def actions(network: Network, batch: int) -> list[tuple[str, str]]:
    """Every offload and recomputation the planner may choose."""
    offloads = [(OFFLOAD, n.name) for n in network.nodes if offload_kept_inputs(n)]
    recomputes = [(RECOMPUTE, n.name) for n in network.nodes
                  if recomputable(network, n.name, 4, batch) is None]
    return offloads + recomputes


@pytest.mark.parametrize(("network", "batch"), [
    (pointwise_network(), 4), (load_profile("googlenet-tiny").network, 8),
    (resnet18_plain(), 32)], ids=["pointwise", "googlenet-tiny", "resnet18-plain"])
def test_a_bound_from_a_plan_that_does_more_never_exceeds_the_peak(network: Network,
                                                                    batch: int) -> None:
    """From random plans, random subsets of their actions: the bound, where one
    holds, is at most the subset's exact peak; and it is exact where no other
    map's copy back moves (the bound's worth: it spares the planner dry runs)."""
    peak, rng = oracle(network), random.Random(7)
    every = actions(network, batch)
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
        plan = budget(network, batch, 4, make_budget(network, int(limit), peak, peak.costs))
        assert peak(plan) <= limit
        assert peak.run(plan).record.duration_ms <= fastest + 1e-9, limit
