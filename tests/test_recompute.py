"""Recomputation: a cheap layer's output dropped after the forward pass and computed
again before its first backward user. Against `none` (bit-identical arithmetic), the
dry run (peaks to the byte), hand-counted bytes at the end of the forward pass, the
recorded order of events, and no leaks."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest
from networks import recomputing
from test_budget import assert_same_training, train_plan
from test_policies import TINY

import vmem
from vmem.backends import get_backend
from vmem.costs import load_costs
from vmem.dryrun import PeakOracle
from vmem.errors import MemoryLimitTooSmall
from vmem.executor import Executor
from vmem.graph import Network
from vmem.layers.base import numel
from vmem.memory import PinnedHostPool
from vmem.optim import SGD
from vmem.parameters import ParameterStore
from vmem.plan import (
    Plan,
    block_recomputation,
    offloaded_tensors,
    recomputable,
    recomputed_tensors,
)
from vmem.planning import make_budget
from vmem.policies.vdnn import (
    blocks_recomputed,
    build_plan,
    floor_plans,
    offload_kept_inputs,
    offload_nothing,
)
from vmem.profile import load_profile
from vmem.profiler.analysis import peak_bytes
from vmem.profiler.per_layer import layer_stats

budget_module = importlib.import_module("vmem.policies.budget")


def base_plans(network: Network) -> tuple[Plan, Plan]:
    return (build_plan("none", network, 4, 4, offload_nothing),
            build_plan("vdnn-all", network, 4, 4, offload_kept_inputs))


@pytest.mark.parametrize("profile", TINY)
def test_recomputed_maps_change_no_arithmetic(profile: str) -> None:
    """Every recomputable output computed again, alone and beside vdnn-all's
    offloads (which send some recomputed maps' inputs to the host): the numbers
    of `none`, and the dry run's peak to the byte."""
    network = load_profile(profile).network
    for base in base_plans(network):
        plan = recomputing(network, base)
        assert recomputed_tensors(network, plan, 4), profile
        losses, weights, record, dry_peak = train_plan(network, plan)
        assert peak_bytes(record) == dry_peak, base.policy
        assert_same_training(losses, weights, network)


def test_an_offloaded_input_comes_back_for_the_recomputation() -> None:
    """vgg16-tiny under vdnn-all with pool1 computed again: pool1's input is on the
    host when conv2_1's backward pass needs pool1, so it is copied back first and
    the recomputation waits for it."""
    network = load_profile("vgg16-tiny").network
    plan = recomputing(network, base_plans(network)[1], only={"pool1"})
    (source,) = network.nodes[network.index["pool1"]].inputs
    assert source in offloaded_tensors(network, plan)
    _, _, record, _ = train_plan(network, plan)
    back = next(s for s in record.spans if s.kind == "copy_h2d" and s.name == source)
    wait = next(s for s in record.spans if s.kind == "wait" and s.name == source)
    again = next(s for s in record.spans if s.phase == "recompute")
    conv = next(s for s in record.spans if s.name == "conv2_1" and s.phase == "backward"
                and s.kind == "kernel")
    assert back.end_ms <= again.start_ms and wait.end_ms <= again.start_ms
    assert again.name == "pool1" and again.end_ms <= conv.start_ms


def test_recomputed_maps_are_gone_at_the_end_of_the_forward_pass() -> None:
    """At the end of the forward pass the device holds exactly the recomputed maps'
    bytes, and the dropout masks they save, less than under the same plan without
    them (hand-counted from their shapes), each freed after its last forward
    consumer and allocated again as its first backward user's pass begins."""
    network = load_profile("vgg16-tiny").network
    none = base_plans(network)[0]
    plan = recomputing(network, none)
    chosen = sorted(recomputed_tensors(network, plan, 4))
    assert chosen == ["drop6", "drop7", "pool1", "pool2", "pool3", "pool4", "pool5"]
    shapes = network.shapes(4)
    masks = sum(numel(shapes[name]) * 4 for name in chosen if name.startswith("drop"))
    expected = sum(numel(shapes[name]) * 4 for name in chosen) + masks
    ends = {}
    for name, trial in (("none", none), ("recompute", plan)):
        record = train_plan(network, trial, steps=1)[2]
        stats = layer_stats(record)
        ends[name] = stats[-1].after_forward_bytes
        if name == "recompute":
            recorded = {row.name: row.recompute_ms for row in stats if row.recompute_ms}
            assert sorted(recorded) == chosen
            lives, nodes = network.lives, network.nodes
            for tensor in chosen:
                freed = next(e for e in record.memory if e.label == tensor and e.op == "free")
                again = next(e for e in record.memory if e.label == tensor and e.op == "alloc"
                             and e.phase == "recompute")
                assert freed.layer == nodes[lives[tensor].last_forward_use].name
                assert again.layer == tensor
    assert ends["none"] - ends["recompute"] == expected


@pytest.mark.parametrize(("profile", "layers", "message"), [
    ("alexnet-tiny", {"loss"}, "it is the loss"),
    ("alexnet-tiny", {"fc8"}, "no backward pass needs its output"),
    ("alexnet-tiny", {"relu1"}, "its input 'conv1' is gone"),
    # dropout writes over its input: computing it again needs that input computed again
    ("gpt2-tiny", {"h.0.attn.resid_dropout"}, "its input 'h.0.attn.c_proj' is gone"),
    ("gpt2-tiny", {"h.0.attn.c_proj"}, "no backward pass needs its output, nor anything"),
])
def test_a_recomputation_the_executor_cannot_do_is_refused(profile: str, layers: set[str],
                                                            message: str) -> None:
    network = load_profile(profile).network
    plan = base_plans(network)[0]
    plan = replace(plan, layers=tuple(replace(e, recompute_output=e.layer in layers)
                                      for e in plan.layers))
    with pytest.raises(ValueError, match=message):
        recomputed_tensors(network, plan, 4)


def test_plan_with_recomputation_round_trips_and_explains() -> None:
    network = load_profile("alexnet-tiny").network
    plan = recomputing(network, base_plans(network)[0])
    assert Plan.from_json(plan.to_json()) == plan
    line = next(row for row in plan.explain().splitlines() if row.startswith("norm1 "))
    assert line.split()[-1] == "yes" and "recompute output" in plan.explain()


def test_a_failure_while_recomputing_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that fails in pool2's recomputation (its input prefetched, its block
    allocated) leaves the arena and the pinned pool where they were; the next
    step trains."""
    network = load_profile("vgg16-tiny").network
    plan = recomputing(network, base_plans(network)[1], only={"pool2"})
    backend = get_backend("cpu")
    params = ParameterStore(backend, network, SGD(), np.dtype("float32"), seed=5)
    pool = PinnedHostPool(backend.pinned_empty)
    executor = Executor(backend, network, plan, params, np.dtype("float32"), pool)
    x, y = np.zeros((4, *network.input_shape), np.float32), np.zeros(4, np.int64)
    executor.train_step(x, y, 0, seed=0)
    device, pinned = backend.arena.in_use, pool.in_use
    layer = type(network.nodes[network.index["pool2"]].layer)
    original = layer.forward

    def explode(self: object, *args: object, **kwargs: object) -> object:
        if getattr(self, "name", None) == "pool2" and executor._where[1] == "recompute":
            raise RuntimeError("injected")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layer, "forward", explode)
    with pytest.raises(RuntimeError, match="injected"):
        executor.train_step(x, y, 1, seed=1)
    assert (backend.arena.in_use, pool.in_use) == (device, pinned)
    monkeypatch.setattr(layer, "forward", original)
    assert np.isfinite(executor.train_step(x, y, 2, seed=2).loss)
    assert (backend.arena.in_use, pool.in_use) == (device, pinned)
    executor.close()
    params.release()
    backend.close()


def test_budget_recomputes_where_that_beats_every_offload() -> None:
    """GoogLeNet at batch 256 in 4 GiB of an H100's roofline: copies are slow beside
    compute, LRN, pooling and concatenation cheap. The planner computes such maps
    again, and models a shorter step than any plan it makes from offloads alone,
    or vdnn-dyn's."""
    googlenet = load_profile("googlenet").network
    costs = load_costs("h100-pcie5")
    oracle = PeakOracle(googlenet, np.dtype("float32"), SGD(), costs=costs)
    limits = make_budget(googlenet, 4 * 2**30, oracle)
    plan = budget_module.budget(googlenet, 256, 4, limits)
    assert recomputed_tensors(googlenet, plan, 4) and oracle(plan) <= 4 * 2**30
    fastest = build_plan("none", googlenet, 256, 4, offload_nothing)
    everything = build_plan("vdnn-all", googlenet, 256, 4, offload_kept_inputs)
    timeline = budget_module.Timeline.of(googlenet, oracle.run(fastest), oracle.run(everything))
    ranking = budget_module._ranking(googlenet, 256, 4, timeline, recompute=False)
    offloads_only = budget_module._ranked(googlenet, 256, 4, timeline, ranking, limits)
    vdnn_dyn = vmem.planning.plan_with(googlenet, "vdnn-dyn", 256, 4, limits)
    step = oracle.run(plan).record.duration_ms
    for other in [*offloads_only, vdnn_dyn]:
        assert step < 0.75 * oracle.run(other).record.duration_ms


def with_recomputed(plan: Plan, layers: frozenset[str] | set[str]) -> Plan:
    return replace(plan, layers=tuple(replace(e, recompute_output=e.layer in layers)
                                      for e in plan.layers))


def whole_blocks(network: Network, batch: int = 4) -> frozenset[str]:
    """Every block instance computed again from its input (torch.utils.checkpoint)."""
    return frozenset().union(*(block_recomputation(network, instance, 4, batch)
                               for instance, _ in network.blocks))


def selective(network: Network) -> frozenset[str]:
    """Korthikanti et al. 2022's cheap, large activations: attention's probabilities
    (with its output), layer normalisation's and GELU's outputs."""
    return frozenset(n.name for n in network.nodes
                     if n.layer.TYPE in ("attention", "layernorm", "gelu")
                     and recomputable(network, n.name, 4, 4) is None)


@pytest.mark.parametrize(("profile", "choice"), [
    ("gpt2-tiny", "blocks"), ("gpt2-tiny", "selective"), ("resnet18-tiny", "blocks")])
def test_recomputing_blocks_or_selected_maps_changes_no_bit(profile: str, choice: str) -> None:
    """Whole blocks computed again from their inputs (chains through dropout's
    in-place mask, BatchNorm's statistics moved once), or only the cheap maps, on
    their own and beside vdnn-all's offloads: losses and weights after three steps
    are `none`'s to the bit, the cpu backend's peak is the dry run's to the byte."""
    network = load_profile(profile).network
    chosen = whole_blocks(network) if choice == "blocks" else selective(network)
    assert len(network.blocks) >= 2 and chosen
    for base in base_plans(network):
        plan = with_recomputed(base, chosen)
        assert recomputed_tensors(network, plan, 4) == chosen
        losses, weights, record, dry_peak = train_plan(network, plan)
        assert peak_bytes(record) == dry_peak, base.policy
        assert any(s.phase == "recompute" for s in record.spans)
        assert_same_training(losses, weights, network)


def test_a_recomputed_gpt2_block_holds_none_of_its_activations_after_the_forward_pass() -> None:
    """gpt2-tiny (N = 4, T = 32, C = 64, 4 heads), each block computed again from its
    input: at the end of the forward pass the device holds, per block, 17 C values
    a token fewer (ln_1 1, c_attn 3, attn 1, the attention dropout's mask 1, add_1 1,
    ln_2 1, c_fc 4, GELU 4, the MLP dropout's mask 1), both layernorms' statistics
    (2 x 2 a token) and attention's probabilities (heads x T a token): float32,
    counted by hand."""
    network = load_profile("gpt2-tiny").network
    none = base_plans(network)[0]
    plan = with_recomputed(none, whole_blocks(network))
    n, t, c, heads = 4, 32, 64, 4
    per_block = n * t * (17 * c + 2 * 2 + heads * t) * 4
    ends = [layer_stats(train_plan(network, trial, steps=1)[2])[-1].after_forward_bytes
            for trial in (none, plan)]
    assert ends[0] - ends[1] == len(network.blocks) * per_block
    # each block's layers are computed again once, together, as its dropout's
    # mask is first needed
    record = train_plan(network, plan, steps=1)[2]
    again = [s for s in record.spans if s.phase == "recompute"]
    assert sorted(s.name for s in again) == sorted(whole_blocks(network))


def test_budget_plans_below_vdnns_floor_by_recomputing_whole_blocks() -> None:
    """GPT-2 small (12 blocks, T = 1024) at batch 2 on sim:a100-80gb's model, AdamW,
    within a limit halfway between budget's lightest plan (vdnn-all on
    memory-optimal algorithms, every block computed again from its input) and
    vDNN's floor (the same without recomputation): budget's plan fits, computing
    every block again, vdnn-dyn's does not; a byte below the lightest plan the
    limit is refused, by that plan and its exact peak."""
    network = load_profile("gpt2").network
    oracle = PeakOracle(network, np.dtype("float32"), vmem.AdamW(), costs=load_costs("a100-80gb"))
    vdnn_floor, lightest = floor_plans(network, 2, 4).values()
    low, high = oracle(lightest), oracle(vdnn_floor)
    assert low < high
    limits = make_budget(network, (low + high) // 2, oracle)
    plan = vmem.planning.plan_with(network, "budget", 2, 4, limits)
    assert oracle(plan) <= limits.capacity
    assert recomputed_tensors(network, plan, 4) >= whole_blocks(network, 2)
    assert not limits.fits(vmem.planning.plan_with(network, "vdnn-dyn", 2, 4, limits))
    words = "vdnn-all with memory-optimal algorithms, every repeated block computed again"
    with pytest.raises(MemoryLimitTooSmall, match=f"under any policy: {words}.*\\({low:,} bytes"):
        vmem.planning.plan_with(network, "budget", 2, 4, make_budget(network, low - 1, oracle))


def test_blocks_computed_again_beside_single_maps_and_offloads_change_no_bit() -> None:
    """A budget plan of every kind of action on gpt2-tiny: one block computed
    again whole, the other's cheap maps singly, offloads in both (the first
    block's input comes back for its recomputation): `none`'s losses and
    weights to the bit, the cpu backend's peak the dry run's to the byte."""
    network = load_profile("gpt2-tiny").network
    (first, members), (second, _) = network.blocks
    blocks = {first: block_recomputation(network, first, 4, 4)}
    singles = [(budget_module.RECOMPUTE, name) for name in selective(network)
               if name.startswith(second + ".")]
    offloads = [(budget_module.OFFLOAD, n.name) for n in network.nodes if offload_kept_inputs(n)]
    actions = [(budget_module.BLOCK, first), *singles, *offloads]
    plan = budget_module._plan(network, 4, 4, actions, blocks=blocks)
    recomputed = recomputed_tensors(network, plan, 4)
    assert blocks[first] <= recomputed and len(recomputed) > len(blocks[first])
    block_input = network.nodes[network.index[members[0]]].inputs[0]
    assert block_input in offloaded_tensors(network, plan)
    losses, weights, record, dry_peak = train_plan(network, plan)
    assert peak_bytes(record) == dry_peak
    assert_same_training(losses, weights, network)


def test_budget_is_no_slower_than_computing_every_block_again_where_that_fits() -> None:
    """GPT-2 small (12 blocks, T = 1024) at batch 8 on sim:a100-80gb's model, AdamW,
    within each block-recomputing plan's own peak (on the fastest algorithms, and
    with flash attention) and a little above: budget's plan fits and models a step
    no longer than that plan's (torch.utils.checkpoint's configuration is one of
    its candidates, and its search may find quicker)."""
    network = load_profile("gpt2").network
    oracle = PeakOracle(network, np.dtype("float32"), vmem.AdamW(), costs=load_costs("a100-80gb"))
    fastest = build_plan("none", network, 8, 4, offload_nothing)
    flash = {n.name: len(network.algorithms(8, 4)[n.name]) - 1 for n in network.nodes
             if n.layer.TYPE == "attention"}
    for base in (fastest, build_plan("flash", network, 8, 4, offload_nothing, flash)):
        checkpointed = blocks_recomputed(network, base, 4)
        assert recomputed_tensors(network, checkpointed, 4) == whole_blocks(network, 8)
        for limit in (oracle(checkpointed), oracle(checkpointed) + 2**28):
            limits = make_budget(network, limit, oracle)
            plan = budget_module.budget(network, 8, 4, limits)
            assert oracle(plan) <= limit
            assert (oracle.run(plan).record.duration_ms
                    <= oracle.run(checkpointed).record.duration_ms + 1e-9)
