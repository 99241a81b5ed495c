"""Memory virtualization: every policy against `none` (bit-identical arithmetic),
peaks against each other, the schedule from recorded events, and no leaks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from networks import pointwise_network

import vmem
from vmem.errors import MemoryLimitTooSmall, OutOfHostMemory
from vmem.plan import Plan, offloaded_tensors
from vmem.planning import plan_for
from vmem.policies.vdnn import memory_optimal
from vmem.profile import load_profile
from vmem.profiler.analysis import peak_bytes
from vmem.trial import synthetic_batch, synthetic_data

POLICIES = ("none", "vdnn-all", "vdnn-conv", "vdnn-dyn")
TINY = ("alexnet-tiny", "overfeat-tiny", "googlenet-tiny", "vgg16-tiny", "resnet18-tiny",
        "tiny-branch", "digits")


def train(network: str | vmem.Network, policy: str, steps: int = 3, batch: int = 4,
          **options: object) -> tuple[list[float], dict[str, np.ndarray], vmem.Runtime]:
    runtime = vmem.Runtime(network, device="cpu", policy=policy, seed=5, **options)
    x, y = synthetic_data(runtime.network, batch, seed=2)
    losses = [runtime.train_step(x, y) for _ in range(steps)]
    return losses, runtime.state_dict(), runtime


@pytest.mark.parametrize("profile", TINY)
def test_every_policy_is_bit_identical_to_none(profile: str) -> None:
    reference_losses, reference_weights, runtime = train(profile, "none")
    runtime.close()
    for policy in POLICIES[1:]:
        losses, weights, runtime = train(profile, policy)
        moved = sum(s.nbytes for s in runtime.last_record.spans if s.kind == "copy_d2h")
        runtime.close()
        assert losses == reference_losses, policy
        for name, value in reference_weights.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{policy}: {name}")
        if policy in ("vdnn-all", "vdnn-conv"):
            assert moved > 0, f"{policy} offloaded nothing on {profile}"


@pytest.mark.parametrize("profile", ["vgg16-tiny", "googlenet-tiny"])
def test_adamw_trains_bit_identically_under_every_policy(profile: str) -> None:
    """AdamW's two moments and its step count live beside the weights: moving feature
    maps changes none of its arithmetic either."""
    adamw = vmem.AdamW(lr=0.01)
    reference_losses, reference_weights, runtime = train(profile, "none", optimizer=adamw)
    runtime.close()
    for policy in (*POLICIES[1:], "budget"):
        losses, weights, runtime = train(profile, policy, optimizer=adamw)
        runtime.close()
        assert losses == reference_losses, policy
        for name, value in reference_weights.items():
            np.testing.assert_array_equal(weights[name], value, err_msg=f"{policy}: {name}")


def test_under_a_limit_none_fails_and_vdnn_all_trains() -> None:
    network = pointwise_network()
    with vmem.Runtime(network, device="cpu") as probe:
        none_peak = probe.peak_bytes(probe.plan(4, "none"))
        all_peak = probe.peak_bytes(probe.plan(4, "vdnn-all"))
    assert all_peak < none_peak
    limit = (none_peak + all_peak) // 2
    with pytest.raises(vmem.OutOfDeviceMemory) as failure:
        train(network, "none", memory_limit=limit)
    assert "fits with --policy" in str(failure.value) and "vdnn-all" in str(failure.value)
    losses, weights, runtime = train(network, "vdnn-all", memory_limit=limit)
    assert peak_bytes(runtime.last_record) == all_peak <= limit
    runtime.close()
    reference_losses, reference_weights, runtime = train(network, "none")
    runtime.close()
    assert losses == reference_losses
    for name, value in reference_weights.items():
        np.testing.assert_array_equal(weights[name], value)


def sim_peaks(profile: str) -> dict[str, int]:
    loaded = load_profile(profile)
    return {policy: plan_for(loaded, policy, "sim:h100-pcie5", None, None)[1]
            for policy in ("none", "vdnn-conv", "vdnn-all")}


def test_peaks_are_ordered_for_alexnet() -> None:
    peaks = sim_peaks("alexnet")  # batch 128, exact dry runs of the executor
    assert peaks["vdnn-all"] < peaks["vdnn-conv"] < peaks["none"]


def test_peaks_are_ordered_for_vgg16() -> None:
    peaks = sim_peaks("vgg16")  # batch 64
    # Offloading convolution inputs already reaches VGG-16's floor, conv1_2's
    # backward pass (its input, output gradient, input gradient and workspace):
    # offloading the pools' inputs too cannot lower the peak below it.
    assert peaks["vdnn-all"] <= peaks["vdnn-conv"] < peaks["none"]
    assert peaks["vdnn-conv"] < 0.8 * peaks["none"]


@pytest.mark.parametrize("profile", [None, "resnet18-tiny"])
def test_sim_peak_equals_cpu_peak_for_every_policy(profile: str | None) -> None:
    network = load_profile(profile).network if profile else pointwise_network()
    for policy in POLICIES:
        _, _, runtime = train(network, policy, steps=1)
        measured = peak_bytes(runtime.last_record)
        assert runtime.peak_bytes(runtime.executor(4).plan) == measured, policy
        runtime.close()


def test_forked_tensor_moves_once() -> None:
    _, _, runtime = train("googlenet-tiny", "vdnn-all", steps=1)
    spans = runtime.last_record.spans
    fork = "pool2/3x3_s2"  # read by three convolutions and a pool of inception_3a
    assert len(runtime.network.lives[fork].consumers) == 4
    offloads = Counter(s.name for s in spans if s.kind == "copy_d2h")
    prefetches = Counter(s.name for s in spans if s.kind == "copy_h2d")
    assert offloads[fork] == 1 and prefetches[fork] == 1
    assert set(offloads) == set(prefetches) == set(runtime.executor(4).offloaded)
    assert max(offloads.values()) == 1 and max(prefetches.values()) == 1
    runtime.close()


def test_offload_overlaps_compute_on_cpu() -> None:
    """From recorded events: some copy to the host ran on the memory stream while
    the compute stream ran the layer it was issued beside."""
    _, _, runtime = train("vgg16-tiny", "vdnn-all", steps=3, batch=16)
    spans = runtime.last_record.spans
    kernels = [s for s in spans if s.kind == "kernel" and s.stream == "compute"]
    copies = [s for s in spans if s.kind == "copy_d2h"]
    runtime.close()
    assert copies and all(c.stream == "memory" for c in copies)
    overlapping = [c for c in copies
                   if any(k.start_ms < c.end_ms and c.start_ms < k.end_ms for k in kernels)]
    assert overlapping, "no offload ran while a layer computed"


def test_prefetch_completes_before_use() -> None:
    _, _, runtime = train("alexnet-tiny", "vdnn-all", steps=1)
    spans = runtime.last_record.spans
    network = runtime.network
    runtime.close()
    for copy in (s for s in spans if s.kind == "copy_h2d"):
        first_user = network.nodes[max(network.lives[copy.name].backward_users)].name
        use = next(s for s in spans if s.kind == "kernel" and s.phase == "backward"
                   and s.name == first_user)
        assert copy.end_ms <= use.start_ms, copy.name


def test_vdnn_prefetch_looks_no_further_than_a_convolution() -> None:
    _, _, runtime = train("alexnet-tiny", "vdnn-all", steps=1)
    spans, network = runtime.last_record.spans, runtime.network
    runtime.close()
    backward = [s for s in spans if s.kind == "kernel" and s.phase == "backward"]
    index = network.index
    for copy in (s for s in spans if s.kind == "copy_h2d"):
        user = max(network.lives[copy.name].backward_users)
        # the backward kernels that ran before this prefetch was issued
        before = [index[s.name] for s in backward if s.end_ms <= copy.start_ms
                  and s.name in index]
        if not before:
            continue
        issued_at = min(before)  # the last layer to finish before the issue
        between = [n for n in network.nodes[user + 1:issued_at]]
        assert sum(n.layer.TYPE == "conv" for n in between) <= 1, copy.name


@pytest.mark.parametrize("policy", POLICIES)
def test_twenty_steps_leak_nothing(policy: str) -> None:
    _, _, runtime = train("alexnet-tiny", policy, steps=1)
    device, pinned = runtime.arena.in_use, (runtime.host_pool.in_use, runtime.host_pool.reserved)
    x, y = synthetic_batch(runtime.network.input_shape, runtime.num_classes, 4, seed=2)
    for _ in range(20):
        runtime.train_step(x, y)
        assert runtime.arena.in_use == device
        assert (runtime.host_pool.in_use, runtime.host_pool.reserved) == pinned
    runtime.close()
    assert runtime.arena.in_use == 0 and runtime.host_pool.reserved == 0


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_injected_failure_mid_step_leaks_nothing(monkeypatch: pytest.MonkeyPatch,
                                                 phase: str) -> None:
    _, _, runtime = train("alexnet-tiny", "vdnn-all", steps=1)
    device, pinned = runtime.arena.in_use, runtime.host_pool.in_use
    x, y = synthetic_batch(runtime.network.input_shape, runtime.num_classes, 4, seed=2)
    lrn = type(runtime.network.nodes[runtime.network.index["norm2"]].layer)
    original = getattr(lrn, phase)

    def explode(*args: object, **kwargs: object) -> object:
        raise RuntimeError("injected")

    monkeypatch.setattr(lrn, phase, explode)
    with pytest.raises(RuntimeError, match="injected"):
        runtime.train_step(x, y)
    assert runtime.arena.in_use == device and runtime.host_pool.in_use == pinned
    monkeypatch.setattr(lrn, phase, original)
    assert np.isfinite(runtime.train_step(x, y))
    assert runtime.arena.in_use == device
    runtime.close()


def test_failed_copy_on_the_memory_stream_is_reported_and_leaks_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, runtime = train("alexnet-tiny", "vdnn-all", steps=1)
    device = runtime.arena.in_use
    x, y = synthetic_batch(runtime.network.input_shape, runtime.num_classes, 4, seed=2)
    original = np.copyto

    def failing_copy(*args: object, **kwargs: object) -> None:
        raise OSError("injected copy failure")

    monkeypatch.setattr(np, "copyto", failing_copy)
    with pytest.raises(OSError, match="injected copy failure"):
        runtime.train_step(x, y)
    monkeypatch.setattr(np, "copyto", original)
    assert runtime.arena.in_use == device
    assert np.isfinite(runtime.train_step(x, y))
    runtime.close()


def test_a_limit_no_policy_meets_is_refused_before_the_first_step() -> None:
    network = pointwise_network()
    with vmem.Runtime(network, device="cpu") as probe:
        floor = probe.peak_bytes(memory_optimal(network, 4, 4))
    runtime = vmem.Runtime(network, device="cpu", policy="vdnn-all", memory_limit=floor - 1)
    x, y = synthetic_batch(network.input_shape, 10, 4, seed=0)
    with pytest.raises(MemoryLimitTooSmall, match=f"needs at least .*{floor:,} bytes"):
        runtime.train_step(x, y)
    assert runtime.steps == 0 and runtime.last_record is None
    runtime.close()


def test_a_host_limit_too_small_is_refused_before_the_first_step() -> None:
    network = pointwise_network()
    runtime = vmem.Runtime(network, device="cpu", policy="vdnn-all", host_memory_limit="64KiB")
    x, y = synthetic_batch(network.input_shape, 10, 4, seed=0)
    with pytest.raises(OutOfHostMemory, match="host-memory limit"):
        runtime.train_step(x, y)
    assert runtime.steps == 0 and runtime.host_pool.reserved <= 64 * 1024
    runtime.close()


def test_vdnn_dyn_chooses_by_budget() -> None:
    alexnet = load_profile("alexnet")
    peaks = sim_peaks("alexnet")
    unlimited, _ = plan_for(alexnet, "vdnn-dyn", "sim:h100-pcie5", None, None)
    assert not any(e.offload_input for e in unlimited.layers)  # none fits: use it
    between, peak = plan_for(alexnet, "vdnn-dyn", "sim:h100-pcie5", None, peaks["none"] - 1)
    assert peak == peaks["vdnn-conv"]  # vdnn-conv with the fastest algorithms fits
    # VGG-16's floor holds conv1_2's workspace: below vdnn-all's peak, vdnn-dyn
    # steps convolutions down to smaller im2col chunks
    vgg16 = load_profile("vgg16")
    fastest, fastest_peak = plan_for(vgg16, "vdnn-all", "sim:h100-pcie5", None, None)
    tight, peak = plan_for(vgg16, "vdnn-dyn", "sim:h100-pcie5", None, fastest_peak - 1)
    assert peak < fastest_peak
    assert sum(e.workspace_bytes for e in tight.layers) < sum(e.workspace_bytes
                                                               for e in fastest.layers)
    with pytest.raises(MemoryLimitTooSmall, match="memory-optimal"):
        plan_for(vgg16, "vdnn-dyn", "sim:h100-pcie5", None, peak // 2)


def test_plan_round_trips_and_explains() -> None:
    plan, _ = plan_for(load_profile("googlenet"), "vdnn-conv", "sim:titan-x", 32, None)
    assert Plan.from_json(plan.to_json()) == plan
    text = plan.explain()
    assert "inception_3a/3x3" in text and "im2col" in text
    offloaded = offloaded_tensors(load_profile("googlenet").network, plan)
    assert "pool2/3x3_s2" in offloaded
