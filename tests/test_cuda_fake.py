"""The cuda backend's memory limit and cost model, on a stand-in for CuPy
(tests/fake_cupy.py): the pool limit and its headroom worked out by hand, the
pool's peak, and that a CUDA device plans exactly as the sim of its GPU does."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fake_cupy import ROUND, fake_cupy
from test_cli import run_cli

import vmem
from vmem.backends import get_backend
from vmem.backends.cpu import CpuBackend
from vmem.backends.cuda import UNTRACKED_SLACK_BYTES, CudaBackend, pool_limit_for
from vmem.costs import DEFAULT_COST_MODEL, gpu_presets, preset_for_device
from vmem.errors import OutOfDeviceMemory
from vmem.planning import plan_on_device
from vmem.profile import load_profile
from vmem.profiler.session import load_session

MiB = 2**20
# tests/gpu/test_cuda.py's budget-moves test, as measured by the review of the cuda
# path: the arena peaks at 1,037,756 of 1,054,012 bytes, and 42 of the blocks are
# small parameter, gradient and velocity arrays.
CAPACITY, ARENA_PEAK, SMALL = 1_054_012, 1_037_756, 42


def rounded(nbytes: int) -> int:
    return -(-nbytes // ROUND) * ROUND


def test_pool_limit_is_the_capacity_plus_the_stated_headroom() -> None:
    assert 256 * MiB == UNTRACKED_SLACK_BYTES
    assert pool_limit_for(CAPACITY) == 1_054_012 + 268_435_456
    assert pool_limit_for(0) == UNTRACKED_SLACK_BYTES


def test_a_plan_that_fits_the_arena_fits_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arena's peak in blocks CuPy rounds up to 512 bytes: 42 small arrays of 12
    bytes and one block holding the rest. In a pool capped at the capacity itself
    they do not fit (the headroom is needed); in the backend's pool they do, and the
    pool's peak is their rounded sum."""
    sizes = [12] * SMALL + [ARENA_PEAK - 12 * SMALL]
    need = sum(rounded(n) for n in sizes)
    assert need == 42 * 512 + 1_037_312 > CAPACITY  # 1,058,816: rounding alone overflows
    with fake_cupy(monkeypatch) as cupy:
        capped = cupy.get_default_memory_pool()
        capped.set_limit(CAPACITY)
        with pytest.raises(cupy.cuda.memory.OutOfMemoryError):
            for n in sizes:
                capped.malloc(n)
        capped.used = capped.cached = 0
        backend = CudaBackend(0, capacity=CAPACITY)
        try:
            assert backend.arena.capacity == CAPACITY
            assert capped.get_limit() == CAPACITY + UNTRACKED_SLACK_BYTES
            memories = [backend._malloc(n) for n in sizes]
            assert backend.pool_peak_bytes() == need == backend.pool_reserved_bytes()
            for memory in memories:
                capped.free(memory)
        finally:
            backend.close()
        assert capped.get_limit() == CAPACITY  # the limit found at start, put back


def test_the_pools_peak_survives_releases_and_limit_changes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_cupy(monkeypatch) as cupy:
        pool = cupy.get_default_memory_pool()
        pool.malloc(5 * MiB)  # earlier work in the process: not this backend's
        pool.free(5 * MiB)
        backend = CudaBackend(0, capacity=64 * MiB)
        try:
            assert backend.pool_peak_bytes() == 0 and pool.total_bytes() == 0
            pool.free(backend._malloc(3 * MiB))  # cached after use
            backend.set_capacity(32 * MiB)  # releases the cached blocks
            assert pool.total_bytes() == 0 and pool.get_limit() == 32 * MiB + 256 * MiB
            backend._malloc(MiB)
            assert backend.pool_peak_bytes() == 3 * MiB
            assert backend.facts()["pool_peak_bytes"] == 3 * MiB
            backend.set_capacity(None)  # no limit: the device's memory bounds the arena
            assert backend.arena.capacity == 81559 * MiB and pool.get_limit() == 0
        finally:
            backend.close()


def test_the_pool_overflowing_in_a_launch_names_its_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_cupy(monkeypatch):
        backend = CudaBackend(0, capacity=64 * MiB)
        try:
            with pytest.raises(OutOfDeviceMemory) as info:
                backend.launch(backend.compute, lambda: backend._malloc(400 * MiB))
            assert info.value.capacity == 320 * MiB and "CuPy pool" in str(info.value)
            assert "\n" not in str(info.value)
        finally:
            backend.close()


# -- the cost model a device plans with ----------------------------------------------


@pytest.mark.parametrize(("device", "preset"), [
    ("NVIDIA H100 PCIe", "h100-pcie5"),
    ("NVIDIA H100 80GB HBM3", "h100-pcie5"),
    ("nvidia h100 pcie", "h100-pcie5"),  # case is ignored
    ("NVIDIA GeForce GTX TITAN X", "titan-x"),
    ("Tesla V100-PCIE-16GB", "v100"),
    ("Tesla V100-SXM2-16GB", "v100"),
    ("Tesla V100-SXM2-32GB", None),  # twice the memory: not the 16 GB preset
    ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
    ("NVIDIA A100 80GB PCIe", None),  # slower memory than the SXM board's
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("NVIDIA L40S", None),  # not an L4, though its name holds "NVIDIA L4"
    ("NVIDIA H200", "h200"),
    ("Tesla K80", None),
    ("", None),
])
def test_device_names_match_presets(device: str, preset: str | None) -> None:
    found = preset_for_device(device)
    assert (found.name if found else None) == preset


def test_the_longest_match_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    h100 = gpu_presets()["h100-pcie5"]
    monkeypatch.setattr("vmem.costs.gpu_presets", lambda: {
        "h100": replace(h100, name="h100", match=("H100",)),
        "h100-sxm": replace(h100, name="h100-sxm", match=("H100 SXM5", "H100 80GB HBM3"))})
    assert preset_for_device("NVIDIA H100 80GB HBM3").name == "h100-sxm"
    assert preset_for_device("NVIDIA H100 SXM5 94GB").name == "h100-sxm"
    assert preset_for_device("NVIDIA H100 NVL").name == "h100"


def test_no_two_presets_claim_a_name() -> None:
    """Each match entry belongs to one preset (ignoring case): no name is claimed by
    two presets with the same entry, which the longest-match rule could not decide."""
    entries = [(m.casefold(), name) for name, spec in gpu_presets().items() for m in spec.match]
    assert entries and len({m for m, _ in entries}) == len(entries)


@pytest.mark.parametrize(("device", "preset", "line"), [
    ("NVIDIA H100 PCIe", "h100-pcie5", "the preset matching 'NVIDIA H100 PCIe'"),
    ("Tesla K80", DEFAULT_COST_MODEL, "no preset of vmem/gpus.toml matches 'Tesla K80'"),
])
def test_a_cuda_device_plans_with_the_preset_its_name_matches(
        monkeypatch: pytest.MonkeyPatch, device: str, preset: str, line: str) -> None:
    with fake_cupy(monkeypatch, device):
        backend = CudaBackend(0)
        try:
            assert backend.costs is not None and backend.costs.gpu.name == preset
            assert line in backend.facts()["cost_model"]
        finally:
            backend.close()


def test_cpu_plans_with_the_default_model() -> None:
    backend = get_backend("cpu")
    try:
        assert backend.costs is not None and backend.costs.gpu.name == DEFAULT_COST_MODEL
    finally:
        backend.close()


# vgg16-tiny at batch 32 in 18,622,393 bytes: the sim of an H100 planned a peak of
# 14,494,060 bytes where the cpu, weighing convolution algorithms by workspace alone,
# planned 17,117,228.
CASE = ("vgg16-tiny", 32, 18_622_393)


@pytest.mark.parametrize("policy", ["vdnn-dyn", "budget"])
def test_devices_with_one_cost_model_make_one_plan(monkeypatch: pytest.MonkeyPatch,
                                                   policy: str) -> None:
    """cpu (the default model), a CUDA device named "NVIDIA H100 PCIe" and
    sim:h100-pcie5 plan the same, to the byte of the peak; through `vmem plan`'s path
    and a runtime's."""
    profile, batch, limit = load_profile(CASE[0]), CASE[1], CASE[2]
    sim = plan_on_device(profile, policy, "sim:h100-pcie5", batch, limit)
    assert sim.peak == 14_494_060
    assert plan_on_device(profile, policy, "cpu", batch, limit).plan == sim.plan
    with vmem.Runtime(profile.network, device="cpu", policy=policy, memory_limit=limit,
                      batch=batch) as runtime:
        assert runtime.plan(batch) == sim.plan
    with fake_cupy(monkeypatch, "NVIDIA H100 PCIe"):
        on_cuda = plan_on_device(profile, policy, "cuda", batch, limit)
        assert (on_cuda.plan, on_cuda.peak) == (sim.plan, sim.peak)
        with vmem.Runtime(profile.network, device="cuda", policy=policy, memory_limit=limit,
                          batch=batch) as runtime:
            assert runtime.plan(batch) == sim.plan
            assert runtime.peak_bytes(runtime.plan(batch)) == sim.peak


def test_without_a_limit_cuda_plans_within_its_memory_as_the_sim(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """VGG-16 at batch 256 does not fit a Titan X's 12 GiB: a CUDA device of that name
    and memory, with no --memory-limit, makes sim:titan-x's plan."""
    profile = load_profile("vgg16")
    sim = plan_on_device(profile, "vdnn-dyn", "sim:titan-x", 256, None)
    assert any(entry.offload_input for entry in sim.plan.layers) and sim.peak <= 12 * 2**30
    with fake_cupy(monkeypatch, "NVIDIA GeForce GTX TITAN X", 12 * 2**30):
        on_cuda = plan_on_device(profile, "vdnn-dyn", "cuda", 256, None)
    assert (on_cuda.plan, on_cuda.peak, on_cuda.capacity) == (sim.plan, sim.peak, 12 * 2**30)


# -- the pool's figures in reports ----------------------------------------------------


def test_reports_show_the_pools_peak_beside_the_arenas(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    """What a backend with a pool reports (here the cpu made to report 5 MiB at the
    peak and 3 MiB at the end) reaches `run --json`, the run and compare tables and a
    saved session."""
    monkeypatch.setattr(CpuBackend, "pool_peak_bytes", lambda self: 5 * MiB)
    monkeypatch.setattr(CpuBackend, "pool_reserved_bytes", lambda self: 3 * MiB)
    common = ("alexnet-tiny", "--device", "cpu", "--steps", "1", "--batch", "2")
    code, out, _ = run_cli(capsys, "run", *common, "--json")
    result = json.loads(out)
    assert code == 0 and (result["pool_peak_bytes"], result["pool_reserved_bytes"]) == (
        5 * MiB, 3 * MiB) and result["peak_bytes"] > 0
    saved = tmp_path / "run.json"
    code, out, _ = run_cli(capsys, "run", *common, "--save-session", str(saved))
    assert "CuPy pool reserved (peak / at the end)" in out and "5.00 MiB / 3.00 MiB" in out
    assert load_session(saved).trials[0].result.pool_peak_bytes == 5 * MiB
    code, out, _ = run_cli(capsys, "compare", *common, "--policies", "vdnn-all")
    line = next(line for line in out.splitlines() if line.startswith("vdnn-all: arena peak"))
    assert "CuPy pool reserved (peak / at the end) 5.00 MiB / 3.00 MiB" in line
