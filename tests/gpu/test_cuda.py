"""The cuda backend against its contract and against the cpu backend.

Skipped as a folder (conftest.py) where CuPy sees no CUDA device; cupy is
imported inside the tests so that collection works without it.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from networks import pointwise_network, recomputing

import vmem
from vmem.backends import get_backend
from vmem.backends.cuda import UNTRACKED_SLACK_BYTES, CudaBackend, pool_limit_for
from vmem.errors import DeviceUnavailable, OutOfDeviceMemory
from vmem.profile import load_profile

MiB = 2**20
# CUPY_TF32=1 lets cuBLAS round float32 GEMM inputs to 10-bit mantissas: losses then
# agree with NumPy to about 1e-3, not 1e-7.
TF32 = os.environ.get("CUPY_TF32") == "1"
LOSS_RTOL = 2e-2 if TF32 else 1e-4
# policy against `none`, both on cuda: the same kernels unless vdnn-dyn picks other
# convolution algorithms (other GEMM shapes, other rounding)
POLICY_RTOL = 2e-2 if TF32 else 1e-5


@pytest.fixture
def backend() -> Iterator[CudaBackend]:
    b = CudaBackend(0)
    try:
        yield b
    finally:
        b.close()


def _batch(network: str, batch: int, seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
    """A seeded synthetic batch: inputs N(0, 1), labels uniform over the classes."""
    net = load_profile(network).network
    classes = int(np.prod(net.shapes(1)[net.logits][1:]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, classes, size=batch)
    return x, y


# -- (a) the backend contract on cuda ------------------------------------------------


def test_identity_and_facts(backend: CudaBackend, cp: Any) -> None:
    assert backend.name == "cuda:0"
    assert backend.xp is cp
    assert backend.runs_kernels
    facts = backend.facts()
    assert facts["backend"] == "cuda:0"
    assert isinstance(facts["device"], str) and facts["device"]
    assert facts["total_memory_bytes"] > 0
    assert facts["cupy"] == cp.__version__
    # NVML facts, or one line saying why there are none
    assert "nvml_driver" in facts or str(facts.get("nvml", "")).startswith("unavailable: ")


def test_streams_are_distinct_and_non_blocking(backend: CudaBackend, cp: Any) -> None:
    compute = backend._cupy_stream(backend.compute)
    memory = backend._cupy_stream(backend.memory)
    assert compute.ptr != memory.ptr
    assert compute.ptr != cp.cuda.Stream.null.ptr
    if hasattr(compute, "is_non_blocking"):
        assert compute.is_non_blocking and memory.is_non_blocking


def test_launch_runs_the_op_on_the_named_stream(backend: CudaBackend, cp: Any) -> None:
    seen: dict[str, int] = {}
    for stream in (backend.compute, backend.memory):
        backend.launch(stream, lambda s=stream: seen.__setitem__(
            s.name, cp.cuda.get_current_stream().ptr))
    assert seen["compute"] == backend._cupy_stream(backend.compute).ptr
    assert seen["memory"] == backend._cupy_stream(backend.memory).ptr
    # between launches, stray array work goes to the compute stream, in order with it
    assert cp.cuda.get_current_stream().ptr == backend._cupy_stream(backend.compute).ptr


def test_compute_waits_for_a_copy_on_the_memory_stream(backend: CudaBackend, cp: Any) -> None:
    n = 32 * MiB // 4  # large enough that an unordered read would see garbage
    pinned = backend.pinned_empty(n * 4)
    assert pinned.dtype == np.uint8 and pinned.nbytes == n * 4
    host = pinned.view(np.float32)
    host[:] = np.arange(n, dtype=np.float32) % 1021

    device = backend.copy_to_device(backend.memory, host)
    assert isinstance(device, cp.ndarray)
    assert device.shape == host.shape and device.dtype == host.dtype
    copied = backend.record(backend.memory)
    backend.wait(backend.compute, copied)
    out: dict[str, Any] = {}
    backend.launch(backend.compute, lambda: out.setdefault("y", device * 2 + 1))
    backend.synchronize()

    assert copied.done()
    np.testing.assert_array_equal(backend.to_host(out["y"]), host * 2 + 1)


def test_memory_stream_waits_for_compute_then_offloads(backend: CudaBackend, cp: Any) -> None:
    n = 32 * MiB // 4
    out: dict[str, Any] = {}
    backend.launch(backend.compute, lambda: out.setdefault(
        "y", (cp.arange(n, dtype=cp.float32) % 977) * 3))
    produced = backend.record(backend.compute)
    backend.wait(backend.memory, produced)
    host = backend.pinned_empty(n * 4).view(np.float32)
    host[:] = -1
    backend.copy_to_host(backend.memory, out["y"], host)
    offloaded = backend.record(backend.memory)
    backend.host_wait(offloaded)  # vDNN's end-of-layer wait: the copy has landed

    assert produced.done() and offloaded.done()
    np.testing.assert_array_equal(host, (np.arange(n, dtype=np.float32) % 977) * 3)
    backend.synchronize()


def test_copy_to_host_packs_a_strided_view_and_checks_sizes(backend: CudaBackend,
                                                            cp: Any) -> None:
    full = cp.arange(64 * 48, dtype=cp.float32).reshape(64, 48)  # on the compute stream
    view = full[:, ::2]
    host = backend.pinned_empty(view.nbytes).view(np.float32).reshape(view.shape)
    backend.wait(backend.memory, backend.record(backend.compute))  # as the executor does
    backend.copy_to_host(backend.memory, view, host)
    backend.host_wait(backend.record(backend.memory))
    expected = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)[:, ::2]
    np.testing.assert_array_equal(host, expected)
    # to_host packs a strided view itself: the compute stream stays current (CuPy's
    # get() would pack it inside `with stream:`, leaving the null stream current)
    np.testing.assert_array_equal(backend.to_host(view), host)
    assert cp.cuda.get_current_stream().ptr == backend._cupy_stream(backend.compute).ptr
    with pytest.raises(ValueError, match="bytes"):
        backend.copy_to_host(backend.memory, full, backend.pinned_empty(full.nbytes - 4))
    backend.synchronize()


def test_copies_launched_as_ops_use_the_memory_stream(backend: CudaBackend, cp: Any) -> None:
    host = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    out: dict[str, Any] = {}
    backend.launch(backend.memory, lambda: out.setdefault("d", cp.asarray(host)))
    arrived = backend.record(backend.memory)
    backend.wait(backend.compute, arrived)
    backend.launch(backend.compute, lambda: out.setdefault("s", out["d"].sum(axis=0)))
    backend.synchronize()
    np.testing.assert_allclose(backend.to_host(out["s"]), host.sum(axis=0), rtol=1e-5,
                               atol=1e-4)


def test_marks_time_the_work_between_them(backend: CudaBackend, cp: Any) -> None:
    a = cp.ones((2048, 2048), dtype=cp.float32)
    backend.synchronize()
    start = backend.mark(backend.compute)
    out: dict[str, Any] = {}
    backend.launch(backend.compute, lambda: out.setdefault("c", a @ a @ a))
    end = backend.mark(backend.compute)
    backend.synchronize()
    elapsed = backend.elapsed_ms(start, end)
    assert 0 < elapsed < 10_000
    assert backend.elapsed_ms(start, start) == 0


def test_asarray_and_to_host_round_trip(backend: CudaBackend, cp: Any) -> None:
    host = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float32)
    device = backend.asarray(host)
    assert isinstance(device, cp.ndarray)
    back = backend.to_host(device)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    assert float(backend.to_host(device.sum())) == pytest.approx(float(host.sum()), rel=1e-5)


def test_asarray_of_pinned_memory_may_be_reused_on_return(backend: CudaBackend) -> None:
    # CuPy copies pinned host memory directly, asynchronously: asarray must wait
    host = backend.pinned_empty(32 * MiB).view(np.float32)
    host[:] = 1
    device = backend.asarray(host)
    host[:] = 2
    assert (backend.to_host(device) == 1).all()


def test_cupy_tf32_sets_the_cublas_math_mode_and_close_puts_it_back(
        monkeypatch: pytest.MonkeyPatch, cp: Any) -> None:
    """CuPy applies CUPY_TF32 to 2-D GEMMs only; the backend puts the cuBLAS handle in
    TF32 math mode for the batched ones (the convolution's forward), and back at close."""
    from cupy_backends.cuda.libs import cublas

    from vmem.backends.cuda import CUBLAS_TF32_TENSOR_OP_MATH

    handle = cp.cuda.device.get_cublas_handle()
    before = cublas.getMathMode(handle)
    monkeypatch.setenv("CUPY_TF32", "1")
    b = CudaBackend(0)
    try:
        assert cublas.getMathMode(handle) == CUBLAS_TF32_TENSOR_OP_MATH
        facts = b.facts()
        assert facts["tf32"] is True and facts["tf32_gemms"].startswith("every float32 GEMM")
    finally:
        b.close()
    assert cublas.getMathMode(handle) == before


def test_set_capacity_limits_the_pool_and_puts_it_back(backend: CudaBackend, cp: Any) -> None:
    pool = cp.get_default_memory_pool()
    before = pool.get_limit()
    backend.set_capacity(96 * MiB)
    assert backend.arena.capacity == 96 * MiB
    assert pool.get_limit() == 96 * MiB + UNTRACKED_SLACK_BYTES
    backend.set_capacity(None)  # the device's memory bounds the arena, as a sim GPU's
    assert backend.arena.capacity == backend.facts()["total_memory_bytes"]
    assert pool.get_limit() == before


def test_pool_overflow_inside_launch_is_out_of_device_memory(cp: Any) -> None:
    pool = cp.get_default_memory_pool()
    limit_before = pool.get_limit()
    b = CudaBackend(0, capacity=64 * MiB)
    try:
        assert pool.get_limit() == pool_limit_for(64 * MiB)
        with pytest.raises(OutOfDeviceMemory, match="CuPy pool"):
            b.launch(b.compute, lambda: cp.empty(pool_limit_for(64 * MiB) + 64 * MiB,
                                                 dtype=cp.uint8))
        b.synchronize()
        assert b.pool_reserved_bytes() <= pool_limit_for(64 * MiB)
        kept: dict[str, Any] = {}
        b.launch(b.compute, lambda: kept.setdefault("x", cp.zeros(16 * MiB, dtype=cp.uint8)))
        b.synchronize()
    finally:
        b.close()
    assert pool.get_limit() == limit_before


def test_close_restores_stream_and_is_idempotent(cp: Any) -> None:
    before = cp.cuda.get_current_stream().ptr
    b = CudaBackend(0)
    assert cp.cuda.get_current_stream().ptr == b._cupy_stream(b.compute).ptr
    b.close()
    b.close()
    assert cp.cuda.get_current_stream().ptr == before


def test_device_index_out_of_range_names_the_count(cp: Any) -> None:
    count = cp.cuda.runtime.getDeviceCount()
    with pytest.raises(DeviceUnavailable) as info:
        get_backend(f"cuda:{count}")
    message = str(info.value)
    assert "\n" not in message
    assert f"{count} CUDA device" in message and "cuda:N" in message


def test_auto_picks_cuda() -> None:
    b = get_backend("auto")
    try:
        assert b.name == "cuda:0"
    finally:
        b.close()


# -- (b) cuda gives the cpu's numbers ----------------------------------------------------


@pytest.mark.parametrize(("network", "batch", "steps", "optimizer"), [
    ("digits", 64, 10, vmem.SGD()), ("alexnet-tiny", 8, 3, vmem.SGD()),
    ("digits", 64, 5, vmem.AdamW())], ids=["digits", "alexnet-tiny", "digits-adamw"])
def test_training_matches_cpu(network: str, batch: int, steps: int,
                              optimizer: vmem.SGD | vmem.AdamW) -> None:
    x, y = _batch(network, batch)
    losses: dict[str, list[float]] = {}
    peaks: dict[str, int] = {}
    for device in ("cpu", "cuda"):
        with vmem.Runtime(network, device=device, seed=7, optimizer=optimizer) as rt:
            losses[device] = [rt.train_step(x, y) for _ in range(steps)]
            peaks[device] = rt.arena.peak
    for step, (cpu, cuda) in enumerate(zip(losses["cpu"], losses["cuda"], strict=True)):
        assert math.isfinite(cuda), f"step {step}: cuda loss {cuda}"
        assert cuda == pytest.approx(cpu, rel=LOSS_RTOL), (
            f"step {step}: cuda {cuda!r} vs cpu {cpu!r}; all: {losses}")
    assert peaks["cuda"] == peaks["cpu"]  # the arena counts the same bytes on both


def _offloading_policies() -> list[str]:
    from vmem.policies import POLICIES

    return [name for name in POLICIES if name != "none"]


@pytest.mark.parametrize("policy", _offloading_policies())
def test_policies_give_the_numbers_of_none_on_cuda(policy: str) -> None:
    """Offload and prefetch only move bytes: the losses are those of `none` (the
    race-prone path: copies on the memory stream, events between the streams)."""
    x, y = _batch("alexnet-tiny", 8)
    losses: dict[str, list[float]] = {}
    kinds: set[str] = set()
    for name in ("none", policy):
        with vmem.Runtime("alexnet-tiny", device="cuda", policy=name, seed=3) as rt:
            losses[name] = [rt.train_step(x, y) for _ in range(3)]
            if name == policy:
                kinds = {span.kind for span in rt.last_record.spans}
    assert losses[policy] == pytest.approx(losses["none"], rel=POLICY_RTOL), losses
    if policy in ("vdnn-all", "vdnn-conv"):
        assert {"copy_d2h", "copy_h2d"} <= kinds


def test_budget_moves_give_the_numbers_of_none_and_leak_nothing_on_cuda() -> None:
    """The budget planner's schedule on real streams: a map's block freed layers
    after its copy out was issued, copies back started layers early."""
    network = pointwise_network()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=4)
    with vmem.Runtime(network, device="cuda", seed=3) as rt:
        none_losses = [rt.train_step(x, y) for _ in range(3)]
        none_peak = rt.arena.peak
        all_peak = rt.peak_bytes(rt.plan(4, "vdnn-all"))
    with vmem.Runtime(network, device="cuda", policy="budget", seed=3,
                      memory_limit=(none_peak + all_peak) // 2) as rt:
        plan = rt.executor(4).plan
        index, lives = network.index, network.lives
        assert any(index[m.release_after] > lives[m.tensor].last_forward_use
                   for m in plan.moves), plan.explain()
        losses = [rt.train_step(x, y) for _ in range(3)]
        in_use = rt.arena.in_use
        for _ in range(5):
            rt.train_step(x, y)
            assert rt.arena.in_use == in_use
        assert rt.arena.peak <= rt.memory_limit
        assert rt.backend.pool_peak_bytes() <= pool_limit_for(rt.memory_limit)
    assert losses == pytest.approx(none_losses, rel=POLICY_RTOL)


def test_a_state_dict_loads_in_place_and_training_resumes_on_cuda(cp: Any) -> None:
    """write_from_host copies over the parameters without allocating: the pool's used
    bytes do not move, and training goes on as the saving runtime's did."""
    x, y = _batch("digits", 32)
    with vmem.Runtime("digits", device="cuda", seed=2, optimizer=vmem.AdamW()) as rt:
        rt.train_step(x, y)
        saved = rt.state_dict(optimizer=True)
        expected = [rt.train_step(x, y) for _ in range(2)]
    with vmem.Runtime("digits", device="cuda", seed=2, optimizer=vmem.AdamW()) as rt:
        rt.train_step(x, y)
        used = cp.get_default_memory_pool().used_bytes()
        rt.load_state_dict(saved)
        assert cp.get_default_memory_pool().used_bytes() == used
        resumed = [rt.train_step(x, y) for _ in range(2)]
    assert resumed == pytest.approx(expected, rel=POLICY_RTOL)


def test_recomputed_maps_give_the_numbers_of_none_on_cuda() -> None:
    """googlenet-tiny under vdnn-all with every recomputable output (LRN, pooling,
    concatenations) computed again: recomputations on the compute stream after
    their inputs' copies back, the losses of `none` on cuda, nothing leaked."""
    from vmem.executor import Executor
    from vmem.memory import PinnedHostPool
    from vmem.optim import SGD
    from vmem.parameters import ParameterStore
    from vmem.policies.vdnn import build_plan, offload_kept_inputs, offload_nothing

    network = load_profile("googlenet-tiny").network
    x, y = _batch("googlenet-tiny", 4)
    losses: dict[str, list[float]] = {}
    for name, plan in (("none", build_plan("none", network, 4, 4, offload_nothing)),
                       ("recompute", recomputing(network, build_plan(
                           "vdnn-all", network, 4, 4, offload_kept_inputs)))):
        backend = get_backend("cuda")
        params = ParameterStore(backend, network, SGD(), np.dtype("float32"), seed=3)
        executor = Executor(backend, network, plan, params, np.dtype("float32"),
                            PinnedHostPool(backend.pinned_empty))
        try:
            losses[name] = [float(executor.train_step(x, y, k, seed=k).loss)
                            for k in range(3)]
            assert backend.arena.in_use == sum(b.nbytes for b in params.blocks)
        finally:
            executor.close()
            params.release()
            backend.close()
    assert losses["recompute"] == pytest.approx(losses["none"], rel=POLICY_RTOL), losses


def test_last_record_has_cuda_times() -> None:
    x, y = _batch("digits", 32)
    with vmem.Runtime("digits", device="cuda", seed=0) as rt:
        rt.train_step(x, y)
        record = rt.last_record
    assert record is not None
    assert record.duration_ms > 0
    assert record.spans and all(s.end_ms >= s.start_ms for s in record.spans)


# -- (c) a memory limit on cuda -----------------------------------------------------------


def test_memory_limit_below_peak_fails_cleanly_then_a_larger_one_trains(cp: Any) -> None:
    network, batch = "digits", 64
    x, y = _batch(network, batch)
    with vmem.Runtime(network, device="cuda", seed=0) as rt:
        rt.train_step(x, y)
        peak = rt.arena.peak  # the `none` policy's peak, no limit

    gc.collect()  # arrays of earlier tests held by reference cycles would count
    pool = cp.get_default_memory_pool()
    limit_before = pool.get_limit()
    # 5% under the `none` peak: a policy that offloads would fit (so the runtime
    # does not refuse the limit up front), `none` does not.
    limit = peak * 19 // 20
    rt = vmem.Runtime(network, device="cuda", policy="none", memory_limit=limit, seed=0)
    try:
        assert pool.get_limit() == pool_limit_for(limit)
        before = rt.arena.in_use
        with pytest.raises(vmem.OutOfDeviceMemory):
            rt.train_step(x, y)
        assert rt.arena.in_use == before
        assert rt.backend.pool_peak_bytes() <= pool_limit_for(limit)
    finally:
        rt.close()
    assert pool.get_limit() == limit_before

    # A limit of exactly the arena's peak trains: CuPy's own bytes (temporaries,
    # 512-byte rounding) go in the pool's headroom above it.
    with vmem.Runtime(network, device="cuda", policy="none", memory_limit=peak,
                      seed=0) as rt:
        losses = [rt.train_step(x, y) for _ in range(3)]
        assert rt.arena.peak == peak
        assert rt.backend.pool_peak_bytes() <= pool_limit_for(peak)
    assert all(math.isfinite(loss) for loss in losses)
    assert pool.get_limit() == limit_before


def test_a_non_finite_step_is_refused_and_not_applied_on_cuda() -> None:
    """The loss and one float64 sum per weight gradient come back in one copy: a step
    that overflows raises NonFiniteError, and the state is that before it."""
    x, y = _batch("digits", 16)
    with vmem.Runtime("digits", device="cuda", seed=2) as rt:
        rt.train_step(x, y)
        before = rt.state_dict(optimizer=True)
        with pytest.raises(vmem.NonFiniteError) as refused:
            rt.train_step(np.full_like(x, 3e38), y)
        assert refused.value.step == 2 and rt.steps == 1
        after = rt.state_dict(optimizer=True)
        for key, value in before.items():
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        assert math.isfinite(rt.train_step(x, y))


def test_pinned_memory_is_bounded_by_the_largest_plan_on_cuda() -> None:
    with vmem.Runtime("digits", device="cuda", policy="vdnn-all", seed=2) as rt:
        rt.train_step(*_batch("digits", 64))
        largest = rt.host_pool.reserved
        for n in (1, 17, 63, 64, 32):
            rt.train_step(*_batch("digits", n))
        assert rt.host_pool.reserved == largest and rt.host_pool.in_use == 0
