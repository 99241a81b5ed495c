"""`vmem plan`: its modeled step and slowdown against the oracular step, which
configuration vdnn-dyn chose, aligned columns for long layer names, and its help."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run_cli

from vmem.dryrun import dry_run
from vmem.optim import make_optimizer
from vmem.planning import plan_for
from vmem.policies.vdnn import (
    memory_optimal,
    offload_heavy_inputs,
    offload_kept_inputs,
    vdnn_configuration,
)
from vmem.profile import load_profile


def _plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run_cli(capsys, "plan", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_plan_slowdown_is_its_step_over_the_oracles(capsys: pytest.CaptureFixture[str]) -> None:
    """The oracular step is policy none's with memory for everything: the modeled step
    `vmem plan --policy none` gives on a device with room for it (an H200 for the
    Titan X's cost model would differ: the reference is none on the same device,
    unbounded, which a plan of none within the Titan X's 12 GiB is at batch 32)."""
    argv = ("alexnet", "--batch", "32", "--device", "sim:titan-x")
    none = _plan_json(capsys, *argv, "--policy", "none")
    assert none["fits"] and none["slowdown"] == pytest.approx(1.0)
    assert none["oracle_step_ms"] == pytest.approx(none["step_ms"])
    limited = _plan_json(capsys, *argv, "--memory-limit", "880MB", "--policy", "vdnn-all")
    assert limited["oracle_step_ms"] == pytest.approx(none["step_ms"])
    assert limited["step_ms"] > none["step_ms"]  # offloads the copies cannot all hide
    assert limited["slowdown"] == pytest.approx(limited["step_ms"] / none["step_ms"])
    assert limited["device"] == "sim:titan-x" and limited["cost_model"] == "titan-x"


def test_plan_prints_step_slowdown_and_vdnn_dyns_choice(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "alexnet", "--batch", "32", "--device",
                           "sim:titan-x", "--memory-limit", "880MB")
    assert code == 0
    data = _plan_json(capsys, "alexnet", "--batch", "32", "--device", "sim:titan-x",
                      "--memory-limit", "880MB")
    assert f"slowdown {data['slowdown']:.3f}×" in out
    assert "oracular step (none, memory for everything)" in out
    assert f"vdnn-dyn chose {data['configuration']}" in out
    # 880 MB lies between vdnn-all's fastest peak (875 MB) and its memory-optimal one
    # (863 MB) only after rounding; what it says must be the plan it made
    assert data["configuration"].startswith("vdnn-all's offloads")


def _stepped(network, plan) -> int:
    options = network.algorithms(plan.batch, 4)
    return sum(entry.algorithm != options[entry.layer][0].name for entry in plan.layers)


@pytest.mark.parametrize("profile,batch", [("alexnet", 32), ("vgg16-tiny", 4)])
def test_vdnn_configuration_names_each_of_vdnns_plans(profile: str, batch: int) -> None:
    """Against the configurations built directly: none, vdnn-conv, vdnn-all (fastest
    algorithms), the memory-optimal floor, and what vdnn-dyn makes between them."""
    network = load_profile(profile).network
    none, _ = plan_for(load_profile(profile), "none", "sim:titan-x", batch, None)
    conv, _ = plan_for(load_profile(profile), "vdnn-conv", "sim:titan-x", batch, None)
    every, all_peak = plan_for(load_profile(profile), "vdnn-all", "sim:titan-x", batch, None)
    floor = memory_optimal(network, batch, 4)
    assert vdnn_configuration(network, none, 4) == "no offload, the fastest algorithms"
    assert vdnn_configuration(network, conv, 4) == (
        "vdnn-conv's offloads (the heavy layers' inputs), the fastest algorithms")
    assert vdnn_configuration(network, every, 4) == (
        "vdnn-all's offloads (every kept input), the fastest algorithms")
    assert vdnn_configuration(network, floor, 4).endswith("(memory-optimal)")
    floor_peak = dry_run(network, floor, np.dtype("float32"), make_optimizer("sgd")).peak
    dyn, _ = plan_for(load_profile(profile), "vdnn-dyn", "sim:titan-x", batch,
                      (floor_peak + all_peak) // 2)
    said = vdnn_configuration(network, dyn, 4)
    asked = {entry.layer for entry in dyn.layers if entry.offload_input}
    heavy = {n.name for n in network.nodes if offload_heavy_inputs(network)(n)}
    kept = {n.name for n in network.nodes if offload_kept_inputs(n)}
    assert said.startswith("vdnn-conv's" if asked == heavy else "vdnn-all's")
    assert asked in (heavy, kept)
    count = _stepped(network, dyn)
    assert count > 0 and f"{count} layer" in said


def test_plan_columns_stay_aligned_for_long_layer_names() -> None:
    plan, _ = plan_for(load_profile("gpt2-tiny"), "vdnn-all", "sim:titan-x", 2, None)
    longest = max(len(entry.layer) for entry in plan.layers)
    assert longest > 20  # "h.0.attn.resid_dropout": wider than a fixed 20-odd column
    lines = plan.explain().splitlines()
    header, rows = lines[1], lines[2:2 + len(plan.layers)]
    start = header.index("algorithm")
    for entry, row in zip(plan.layers, rows, strict=True):
        assert row.startswith(entry.layer + " ")
        assert row[start:].startswith(entry.algorithm), row  # every algorithm in one column
        assert row[start - 2:start] == "  "  # at least two spaces after the longest name
    offload, recompute = header.index("offload input"), header.index("recompute output")
    for entry, row in zip(plan.layers, rows, strict=True):
        assert row[offload:].startswith("yes" if entry.offload_input else "-"), row
        assert row[recompute:] == ("yes" if entry.recompute_output else "-"), row


def test_plan_help_describes_it_and_its_batch_is_no_runs(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "--help")
    assert code == 0
    assert "without training" in out and "slowdown" in out and "oracular" in out
    options = out[out.index("options:"):]
    batch = options[options.index("--batch BATCH"):options.index("--device DEVICE")]
    assert "run" not in batch.replace("cpu_batch", "") and "cpu_batch" in batch
