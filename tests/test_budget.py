"""The budget planner and the schedule it gives (`Move`): against `none`
(bit-identical arithmetic), against vDNN's policies on the sim (peaks, modeled
steps, bytes moved), a hand-computed timeline, and no leaks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from networks import pointwise_network
from test_policies import train

import vmem
from vmem.backends import get_backend
from vmem.costs import load_costs
from vmem.dryrun import PeakOracle
from vmem.executor import Executor
from vmem.graph import Network
from vmem.memory import PinnedHostPool
from vmem.optim import SGD
from vmem.parameters import ParameterStore
from vmem.plan import Move, Plan, move_schedule, offloaded_tensors
from vmem.planning import make_budget, plan_on_device
from vmem.policies.budget import Timeline, _refined, _scheduled
from vmem.profile import load_profile
from vmem.profiler.analysis import peak_bytes
from vmem.profiler.events import Span, StepRecord
from vmem.trial import synthetic_batch, synthetic_data

H100 = load_costs("h100-pcie5")


def limits(network: Network, batch: int = 4) -> tuple[int, int]:
    """`none`'s peak and vdnn-all's on cpu."""
    with vmem.Runtime(network, device="cpu") as probe:
        return (probe.peak_bytes(probe.plan(batch, "none")),
                probe.peak_bytes(probe.plan(batch, "vdnn-all")))


def assert_same_training(losses: list[float], weights: dict[str, np.ndarray],
                         network: Network) -> None:
    reference_losses, reference_weights, runtime = train(network, "none")
    runtime.close()
    assert losses == reference_losses
    for name, value in reference_weights.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


def test_budget_under_a_limit_trains_bit_identically_within_it() -> None:
    network = pointwise_network()
    none_peak, all_peak = limits(network)
    limit = (none_peak + all_peak) // 2
    losses, weights, runtime = train(network, "budget", memory_limit=limit)
    plan = runtime.executor(4).plan
    record = runtime.last_record
    runtime.close()
    offloads = [entry.layer for entry in plan.layers if entry.offload_input]
    # fewer offloads than vdnn-all, and a schedule for them
    assert 0 < len(offloads) < 6 and plan.moves
    assert peak_bytes(record) <= limit
    assert_same_training(losses, weights, network)


def moved_late_and_back_early(network: Network) -> Plan:
    """vdnn-all, with relu1 freed two layers after its last forward consumer and
    brought back three layers before its first backward user."""
    with vmem.Runtime(network, device="cpu") as probe:
        plan = probe.plan(4, "vdnn-all")
    index = network.index
    assert network.lives["relu1"].last_forward_use == index["conv2"]
    assert max(network.lives["relu1"].backward_users) == index["conv2"]
    return replace(plan, moves=(Move("relu1", "conv3", "relu3"),))


def train_plan(network: Network, plan: Plan, steps: int = 3
               ) -> tuple[list[float], dict[str, np.ndarray], StepRecord, int]:
    """`train`'s steps (seed 5, batch 4) under a given plan, through the
    executor; the last step's record and the plan's dry-run peak."""
    backend = get_backend("cpu")
    params = ParameterStore(backend, network, SGD(), np.dtype("float32"), seed=5)
    executor = Executor(backend, network, plan, params, np.dtype("float32"),
                        PinnedHostPool(backend.pinned_empty))
    x, y = synthetic_data(network, 4, seed=2)
    results = [executor.train_step(x, y, step, seed=(5 << 32) + step) for step in range(steps)]
    weights = {name: backend.to_host(value) for name, value in params.arrays(False).items()}
    executor.close()
    params.release()
    dry = PeakOracle(network, np.dtype("float32"), SGD(), costs=None)(plan)
    return [float(r.loss) for r in results], weights, results[-1].record, dry


def test_a_move_frees_and_brings_back_where_it_says_and_changes_no_arithmetic() -> None:
    network = pointwise_network()
    plan = moved_late_and_back_early(network)
    losses, weights, record, dry_peak = train_plan(network, plan)
    assert peak_bytes(record) == dry_peak  # the dry run holds it to the byte
    assert_same_training(losses, weights, network)
    # relu1 runs in place: its map is conv1's block until it comes back
    freed = next(e for e in record.memory if e.label == "conv1" and e.op == "free"
                 and e.phase == "forward")
    back = next(e for e in record.memory if e.label == "relu1" and e.op == "alloc"
                and e.phase == "backward")
    assert (freed.layer, back.layer) == ("conv3", "relu3")
    # the copy back is issued before relu3's backward pass, three layers ahead of
    # conv2's, which waits for it
    prefetch = next(s for s in record.spans if s.kind == "copy_h2d" and s.name == "relu1")
    conv2 = next(s for s in record.spans if s.name == "conv2" and s.phase == "backward"
                 and s.kind == "kernel")
    assert prefetch.end_ms <= conv2.start_ms


@pytest.mark.parametrize(("move", "message"), [
    (Move("relu5", "relu5", "pool"), "does not offload"),
    (Move("relu1", "relu1", "relu3"), "not a layer at or after its last forward"),
    (Move("relu1", "conv3", "relu1"), "not a layer at or after its first backward"),
    (Move("relu1", "nowhere", "relu3"), "not a layer at or after its last forward"),
])
def test_a_move_the_schedule_cannot_keep_is_refused(move: Move, message: str) -> None:
    network = pointwise_network()
    plan = replace(moved_late_and_back_early(network), moves=(move,))
    plan = replace(plan, layers=tuple(replace(e, offload_input=e.layer != "pool")
                                      for e in plan.layers))
    with pytest.raises(ValueError, match=message):
        move_schedule(network, plan, offloaded_tensors(network, plan))


def test_plan_with_moves_round_trips_and_explains() -> None:
    plan = moved_late_and_back_early(pointwise_network())
    assert Plan.from_json(plan.to_json()) == plan
    assert "relu1" in plan.explain() and "freed after" in plan.explain()


def test_twenty_steps_and_a_failure_mid_step_leak_nothing(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    network = pointwise_network()
    none_peak, all_peak = limits(network)
    _, _, runtime = train(network, "budget", steps=1, memory_limit=(none_peak + all_peak) // 2)
    index, lives = network.index, network.lives
    late = [m for m in runtime.executor(4).plan.moves
            if index[m.release_after] > lives[m.tensor].last_forward_use]
    assert late, "the plan frees nothing later than vDNN would"
    device, pinned = runtime.arena.in_use, (runtime.host_pool.in_use, runtime.host_pool.reserved)
    x, y = synthetic_batch(network.input_shape, runtime.num_classes, 4, seed=2)
    for _ in range(20):
        runtime.train_step(x, y)
        assert runtime.arena.in_use == device
        assert (runtime.host_pool.in_use, runtime.host_pool.reserved) == pinned
    # fail in the layer a map's block is held to, its copy out issued, not yet freed
    failing = late[0].release_after
    layer_type = type(network.nodes[index[failing]].layer)
    original = layer_type.forward

    def explode(self: object, *args: object, **kwargs: object) -> object:
        if getattr(self, "name", None) == failing:
            raise RuntimeError("injected")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(layer_type, "forward", explode)
    with pytest.raises(RuntimeError, match="injected"):
        runtime.train_step(x, y)
    assert runtime.arena.in_use == device and runtime.host_pool.in_use == pinned[0]
    monkeypatch.setattr(layer_type, "forward", original)
    assert np.isfinite(runtime.train_step(x, y))
    runtime.close()
    assert runtime.arena.in_use == 0 and runtime.host_pool.reserved == 0


def test_timeline_schedule_matches_hand_computed_points() -> None:
    """Five layers of 10 ms forward and 20 ms backward each; 'a' (read by layer 1
    forward and backward) copies out in 25 ms and back in 30 ms; 'b' (layer 3)
    in 5 ms and 10 ms."""
    t = vmem.layers.LAYER_TYPES
    network = Network.sequential("five", (1, 4, 4), [
        t["conv"](name="c0", out_channels=1, kernel=1), t["conv"](name="c1", out_channels=1,
                                                                   kernel=1),
        t["conv"](name="c2", out_channels=1, kernel=1), t["conv"](name="c3", out_channels=1,
                                                                   kernel=1),
        t["flatten"](name="f"), t["softmax_loss"](name="loss")])
    names = [node.name for node in network.nodes]
    n = len(names)
    forward = tuple(Span(name, "forward", "compute", 10.0 * i, 10.0 * (i + 1))
                    for i, name in enumerate(names))
    backward = tuple(Span(name, "backward", "compute", 10.0 * n + 20.0 * (n - 1 - i),
                          10.0 * n + 20.0 * (n - i)) for i, name in enumerate(names))
    timeline = Timeline(forward, backward, {"c0": 25.0, "c2": 5.0}, {"c0": 30.0, "c2": 10.0})
    lives = network.lives
    # 'c0' (c1's input): out from c1's start (10 ms) to 35 ms, after c1 and c2
    # end (20, 30 ms): freed after c3 (ends 40 ms). 'c2' (c3's input) queues
    # behind it: 35 to 40 ms, freed after c3 too.
    assert timeline.releases(lives, ["c0", "c2"]) == {"c0": 3, "c2": 3}
    # backward starts (ms): loss 60, f 80, c3 100, c2 120, c1 140, c0 160.
    # 'c2' is due at c3's backward (100 ms): 10 ms from f's (80) is the latest
    # start that makes it; 'c0' is due at c1's (140): 30 ms from c2's (120)
    # would end at 150, from c3's (100) at 130.
    assert timeline.prefetches(lives, ["c0", "c2"]) == {"c2": 4, "c0": 3}
    # alone on vDNN's schedule: 'c0' waits 25 - 10 out, and comes back from
    # c2's backward (the next convolution after c1): 30 - 20 late
    assert timeline.alone_ms(network, "c0") == pytest.approx(15.0 + 10.0)


def test_budget_is_faster_than_vdnn_where_pcie_is_slow_beside_compute() -> None:
    """VGG-16 at batch 256 in 12 GiB of an H100's roofline: vDNN's copies show,
    the planner's fewer, better-timed ones less; on the Titan X, whose compute
    hides vDNN's, it moves fewer bytes at no cost."""
    vgg16 = load_profile("vgg16")
    for gpu, faster in (("sim:h100-pcie5", True), ("sim:titan-x", False)):
        planned = {policy: plan_on_device(vgg16, policy, gpu, 256, 12 * 2**30)
                   for policy in ("vdnn-conv", "vdnn-dyn", "budget")}
        oracle = PeakOracle(vgg16.network, np.dtype("float32"), SGD(),
                            costs=load_costs(gpu.removeprefix("sim:")))
        steps, moved = {}, {}
        for policy, device_plan in planned.items():
            assert device_plan.peak <= 12 * 2**30, policy
            record = oracle.run(device_plan.plan).record
            steps[policy] = record.duration_ms
            moved[policy] = sum(s.nbytes for s in record.spans if s.kind == "copy_d2h")
        assert steps["budget"] <= steps["vdnn-dyn"] * (1 + 1e-9), gpu
        assert moved["budget"] < 0.6 * moved["vdnn-conv"], gpu
        if faster:
            assert steps["budget"] < 0.9 * steps["vdnn-dyn"], steps


def test_refining_starts_a_waited_for_copy_back_earlier() -> None:
    """vdnn-all on the pointwise network with relu1's copy back started only at
    its user's own backward pass: the compute stream waits for it, and the
    refined plan starts it earlier and models a shorter step."""
    network = pointwise_network()
    oracle = PeakOracle(network, np.dtype("float32"), SGD(), costs=H100)
    late = replace(moved_late_and_back_early(network),
                   moves=(Move("relu1", "conv2", "conv2"),))
    waits = [s for s in oracle.run(late).record.spans if s.kind == "wait" and s.name == "relu1"]
    assert waits and waits[0].ms > 0
    refined = _refined(network, late, make_budget(network, None, oracle))
    (move,) = refined.moves
    assert network.index[move.prefetch_before] > network.index["conv2"]
    assert oracle.run(refined).record.duration_ms < oracle.run(late).record.duration_ms


def test_moves_over_forks_change_no_arithmetic() -> None:
    """googlenet-tiny, every kept input offloaded, each map moved as the
    planner's timeline says (forks and concatenations included): the numbers of
    `none`, and the dry run's peak to the byte."""
    network = load_profile("googlenet-tiny").network
    with vmem.Runtime(network, device="cpu") as probe:
        fastest, everything = probe.plan(4, "none"), probe.plan(4, "vdnn-all")
        oracle = PeakOracle(network, np.dtype("float32"), SGD(), costs=H100)
    timeline = Timeline.of(network, oracle.run(fastest), oracle.run(everything))
    plan = _scheduled(network, everything, timeline)
    index, lives = network.index, network.lives
    forks = [m for m in plan.moves if len(lives[m.tensor].consumers) > 1]
    assert forks and any(index[m.release_after] > lives[m.tensor].last_forward_use
                         for m in plan.moves)
    losses, weights, record, dry_peak = train_plan(network, plan)
    assert peak_bytes(record) == dry_peak
    assert_same_training(losses, weights, network)
