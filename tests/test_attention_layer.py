"""The attention layer's two algorithms, materialized and flash: the same results to
float32 rounding, what each keeps and needs against what its passes allocate, its
cost by hand, every policy bit-identical to `none` on flash, the sim's bytes against
the cpu's, and the planners choosing flash where materialized does not fit."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from networks import gpt2_tiny, train

from vmem.dryrun import dry_run
from vmem.layers import Context
from vmem.layers.attention import FLASH, MATERIALIZED, Attention, visited_scores
from vmem.layers.base import Algorithm, Keeps, PassCost
from vmem.optim import SGD
from vmem.planning import make_budget, peak_oracle, resolve_target
from vmem.policies import make_plan
from vmem.policies.vdnn import build_plan, offload_kept_inputs
from vmem.profiler.analysis import peak_bytes


def algorithm(layer: Attention, in_shapes: list[tuple[int, ...]], name: str) -> Algorithm:
    return next(a for a in layer.algorithms(in_shapes, 4) if a.name == name)


def passes(layer: Attention, x: np.ndarray, dy: np.ndarray, algo: Algorithm
           ) -> tuple[np.ndarray, np.ndarray]:
    y, saved = layer.forward(np, [x], {}, algo, Context())
    (dx,), _ = layer.backward(np, dy, [x], y, {}, saved, algo, [x.shape], [True])
    return y, dx


def test_flash_gives_materialized_results_to_float32_rounding() -> None:
    """T = 300 in tiles of 128 keys (the last one short), 3 heads of 16. In float64
    the algorithms agree within 1e-12 of the result's largest magnitude; in float32
    each is within 1e-6 of that of float64, and the two within 2e-6 of each other,
    output and input gradient (2e-6 is 17 float32 units in the last place at 1)."""
    layer = Attention(name="attn", heads=3)
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((2, 300, 3 * 48))
    dy64 = rng.standard_normal((2, 300, 48))
    shapes = [x64.shape]
    exact = passes(layer, x64, dy64, algorithm(layer, shapes, MATERIALIZED))
    scale = [np.abs(a).max() for a in exact]
    flash64 = passes(layer, x64, dy64, algorithm(layer, shapes, FLASH))
    for got, want, top in zip(flash64, exact, scale, strict=True):
        assert np.abs(got - want).max() <= 1e-12 * top
    x, dy = x64.astype(np.float32), dy64.astype(np.float32)
    results = {name: passes(layer, x, dy, algorithm(layer, shapes, name))
               for name in (MATERIALIZED, FLASH)}
    for name, result in results.items():
        for got, want, top in zip(result, exact, scale, strict=True):
            assert got.dtype == np.float32
            assert np.abs(got - want).max() <= 1e-6 * top, name
    for got, want, top in zip(results[FLASH], results[MATERIALIZED], scale, strict=True):
        assert np.abs(got - want).max() <= 2e-6 * top


def test_what_each_algorithm_keeps_and_offers() -> None:
    """Materialized keeps P, (N, heads, T, T); flash a log-sum-exp a row, (N, heads, T);
    both keep the input and the output (flash's backward reads the output)."""
    n, t, c, heads = 2, 10, 12, 3
    shapes = [(n, t, 3 * c)]
    layer = Attention(name="attn", heads=heads, tile=4)
    assert Keeps.INPUT in Attention.KEEPS and Keeps.OUTPUT in Attention.KEEPS
    materialized, flash = layer.algorithms(shapes, 4)
    assert (materialized.name, flash.name) == (MATERIALIZED, FLASH)
    assert layer.saved_bytes(shapes, 4, materialized) == n * heads * t * t * 4
    assert layer.saved_bytes(shapes, 4, flash) == n * heads * t * 4
    assert materialized.workspace_bytes == (n * heads * t * t + 4 * n * t * c) * 4
    # five tiles of (N, heads, T, 4) scores, three row statistics, five (N, T, C)
    assert flash.workspace_bytes == (5 * n * heads * t * 4 + 3 * n * heads * t
                                     + 5 * n * t * c) * 4
    assert [a.name for a in Attention(name="a", heads=3, algorithm=FLASH).algorithms(
        shapes, 4)] == [FLASH]
    assert [a.name for a in Attention(name="a", heads=3, algorithm=MATERIALIZED).algorithms(
        shapes, 4)] == [MATERIALIZED]


def test_flash_cost_by_hand() -> None:
    """T = 5 in tiles of 2: the tiles' queries are 5, 3 and 1, of 2, 2 and 1 keys,
    17 scores a head; forward 4 d FLOPs a score for the two products and 7 for the
    softmax; backward 10 d (the scores again, dV, dP, dQ, dK), 7, and D's 2 N T C."""
    n, t, c, heads = 2, 5, 12, 3
    d = c // heads
    layer = Attention(name="attn", heads=heads, tile=2)
    shapes = [(n, t, 3 * c)]
    assert visited_scores(5, 2) == 5 * 2 + 3 * 2 + 1 * 1 == 17
    assert visited_scores(7, 100) == 49  # one tile: every score, the masked ones too
    flash = algorithm(layer, shapes, FLASH)
    scores = n * heads * 17
    assert layer.pass_cost(shapes, flash, True) == PassCost(4 * scores * d + 7 * scores,
                                                            21 * 3 + 8)
    assert layer.pass_cost(shapes, flash, False) == PassCost(
        10 * scores * d + 7 * scores + 2 * n * t * c, 19 * 3 + 8)
    assert layer.pass_cost(shapes, algorithm(layer, shapes, MATERIALIZED), True) is None


@pytest.mark.parametrize("name", [MATERIALIZED, FLASH])
def test_each_pass_allocates_no_more_than_the_layer_declares(name: str) -> None:
    """What the passes allocate beyond their inputs (tracemalloc's peak): forward at
    most the workspace, the output and the saved state; backward at most the
    workspace and the input gradient (T = 300, tiles of 128)."""
    layer = Attention(name="attn", heads=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 300, 3 * 48)).astype(np.float32)
    dy = rng.standard_normal((2, 300, 48)).astype(np.float32)
    algo = algorithm(layer, [x.shape], name)
    saved_bytes = layer.saved_bytes([x.shape], 4, algo)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        y, saved = layer.forward(np, [x], {}, algo, Context())
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        (dx,), _ = layer.backward(np, dy, [x], y, {}, saved, algo, [x.shape], [True])
        backward_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert sum(a.nbytes for a in saved) == saved_bytes
    assert forward_peak <= algo.workspace_bytes + y.nbytes + saved_bytes
    assert backward_peak <= algo.workspace_bytes + dx.nbytes


# ---------------------------------------------------------------- in a network


def test_every_policy_trains_flash_gpt2_bit_identically_to_none() -> None:
    """Attention on flash alone (tiles of 8 keys: 4 a sequence): every policy gives
    none's losses and weights bit for bit, without a limit and within one between
    vdnn-all's peak and none's, where vdnn-dyn and budget must move maps."""
    network = gpt2_tiny(algorithm=FLASH, tile=8)
    reference_losses, reference_weights, runtime = train(network, "none")
    plan = runtime.executor(2).plan
    attention = [n.name for n in network.nodes if n.layer.TYPE == "attention"]
    assert {plan.for_layer(name).algorithm for name in attention} == {FLASH}
    none_peak = runtime.peak_bytes(plan)
    all_peak = runtime.peak_bytes(runtime.plan(2, "vdnn-all"))
    runtime.close()
    assert all_peak < none_peak
    runs = [(policy, None) for policy in ("vdnn-all", "vdnn-conv", "vdnn-dyn", "budget")]
    runs += [(policy, (none_peak + all_peak) // 2) for policy in ("vdnn-dyn", "budget")]
    for policy, limit in runs:
        losses, weights, runtime = train(network, policy, memory_limit=limit)
        moved = sum(s.nbytes for s in runtime.last_record.spans if s.kind == "copy_d2h")
        runtime.close()
        assert losses == reference_losses, policy
        for name, value in reference_weights.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{policy}: {name}")
        assert moved > 0 or (policy in ("vdnn-dyn", "budget") and limit is None)


def test_flash_and_materialized_gpt2_train_alike() -> None:
    """The same network on either algorithm: losses to float32 rounding (1e-5)."""
    flash, _, runtime = train(gpt2_tiny(algorithm=FLASH, tile=8), "none", steps=3)
    runtime.close()
    materialized, _, runtime = train(gpt2_tiny(algorithm=MATERIALIZED), "none", steps=3)
    runtime.close()
    np.testing.assert_allclose(flash, materialized, rtol=1e-5)


@pytest.mark.parametrize("policy", ["none", "vdnn-all"])
def test_sim_allocates_what_the_cpu_allocates_with_flash(policy: str) -> None:
    network = gpt2_tiny(algorithm=FLASH, tile=8)
    records = {}
    for device in ("cpu", "sim:h100-pcie5"):
        _, _, runtime = train(network, policy, device=device, steps=1)
        records[device] = runtime.last_record
        runtime.close()
    cpu, sim = records["cpu"], records["sim:h100-pcie5"]
    assert ([(e.op, e.label, e.kind, e.nbytes, e.in_use) for e in sim.memory]
            == [(e.op, e.label, e.kind, e.nbytes, e.in_use) for e in cpu.memory])
    assert peak_bytes(sim) == peak_bytes(cpu)
    saved = {e.label: e.nbytes for e in cpu.memory if e.kind == "saved" and e.op == "alloc"}
    assert saved["h.0.attn.saved"] == 2 * 4 * 32 * 4  # the log-sum-exp: N heads T floats


def test_tight_limits_make_the_planners_choose_flash() -> None:
    """gpt2-tiny (T = 32, flash tiles of 8 keys) at batch 64 on sim:h100-pcie5, where
    the model times materialized attention faster (flash launches some ninety kernels
    a pass and computes the scores again): without a limit every plan is materialized; within
    a limit below what offloading every kept input needs with materialized attention,
    vdnn-dyn and budget fit by choosing flash, and budget's modeled step is no slower
    than vdnn-dyn's."""
    network, batch = gpt2_tiny(tile=8), 64
    target = resolve_target("sim:h100-pcie5", None)
    oracle = peak_oracle(network, target)
    every = make_budget(network, None, oracle)
    attention = [n for n in network.nodes if n.layer.TYPE == "attention"]
    for node in attention:
        materialized, flash = network.algorithms(batch, 4)[node.name]
        assert every.layer_ms(node, materialized, batch) < every.layer_ms(node, flash, batch)
    unlimited = make_plan("budget", network, batch, 4, every)
    assert {unlimited.for_layer(n.name).algorithm for n in attention} == {MATERIALIZED}
    everything = build_plan("x", network, batch, 4, offload_kept_inputs)
    least = build_plan("x", network, batch, 4, offload_kept_inputs,
                       {n.name: -1 for n in network.nodes})
    low, high = oracle.run(least).peak, oracle.run(everything).peak
    assert low < high
    limits = make_budget(network, (low + high) // 2, oracle)
    steps = {}
    for policy in ("vdnn-dyn", "budget"):
        plan = make_plan(policy, network, batch, 4, limits)
        assert limits.fits(plan), policy
        assert FLASH in {plan.for_layer(n.name).algorithm for n in attention}, policy
        steps[policy] = oracle.run(plan).record.duration_ms
    assert steps["budget"] <= steps["vdnn-dyn"] + 1e-9


def test_a_step_on_flash_holds_the_declared_workspace() -> None:
    """A dry run of gpt2-tiny whose attention is flash in tiles of 8: the arena's
    workspace block for attention is the declared one, its saved block the
    log-sum-exp."""
    network = gpt2_tiny(algorithm=FLASH, tile=8)
    plan = build_plan("none", network, 2, 4, lambda node: False)
    run = dry_run(network, plan, np.dtype(np.float32), SGD())
    blocks = {e.label: e.nbytes for e in run.record.memory if e.op == "alloc"}
    (declared,) = network.algorithms(2, 4)["h.0.attn"]
    assert declared.name == FLASH
    assert blocks["h.0.attn.workspace"] == declared.workspace_bytes
    assert blocks["h.0.attn.saved"] == 2 * 4 * 32 * 4
