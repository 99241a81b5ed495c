"""`vmem fit`: the largest batch found is one that trains within the memory, and
the next one does not (checked by training on the sim, not by the search's own
dry runs); devices at a batch; bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_cli import assert_one_line_error, run_cli

from vmem.errors import MemoryLimitTooSmall, VmemError
from vmem.fit import fit_device, largest_batch
from vmem.profile import load_profile
from vmem.trial import TrialSpec, run_trial


@pytest.mark.parametrize("last", [0, 1, 2, 3, 7, 8, 9, 1000, 4097])
def test_largest_batch_is_the_last_that_fits(last: int) -> None:
    probed: list[int] = []

    def fits(batch: int) -> bool:
        probed.append(batch)
        return batch <= last

    assert largest_batch(fits, ceiling=5000) == last
    assert len(probed) <= 2 * 13 + 2  # doubling then bisection, not a scan


def test_largest_batch_stops_at_the_ceiling() -> None:
    assert largest_batch(lambda batch: True, ceiling=100) == 100


def _trains(network, batch: int, policy: str, limit: int) -> bool:
    spec = TrialSpec(network, batch, steps=1, device="sim:titan-x", policy=policy,
                     memory_limit=limit)
    try:
        run_trial(spec)
    except VmemError:
        return False
    return True


@pytest.mark.parametrize("policy", ["none", "vdnn-all", "vdnn-dyn", "budget"])
def test_the_largest_batch_trains_and_one_more_does_not(policy: str) -> None:
    network = load_profile("vgg16-tiny").network
    limit = 24 * 2**20
    (fit,) = fit_device(network, "sim:titan-x", limit, [policy], "liveness", "sgd").fits
    assert fit.fits and fit.batch > 1 and fit.peak <= limit
    assert _trains(network, fit.batch, policy, limit)
    assert not _trains(network, fit.batch + 1, policy, limit)
    assert fit.slowdown is not None and fit.slowdown >= 1.0 - 1e-9
    assert fit.samples_per_s == pytest.approx(fit.batch / fit.step_ms * 1e3)


def test_budget_fits_past_vdnn_dyn_where_its_lightest_plan_recomputes_blocks() -> None:
    """GPT-2 small (12 blocks, T = 1024) on sim:a100-80gb within 8 GiB, AdamW:
    budget's largest batch is past vdnn-dyn's, since its lightest plan computes
    every block again from its input; the plan there fits and trains, and one
    sample more does not, each refused with the least it would need."""
    network, limit = load_profile("gpt2").network, 8 * 2**30
    vdnn, ours = fit_device(network, "sim:a100-80gb", limit, ["vdnn-dyn", "budget"],
                            "liveness", "adamw").fits
    assert 0 < vdnn.batch < ours.batch and ours.peak <= limit
    spec = TrialSpec(network, ours.batch, steps=1, device="sim:a100-80gb", policy="budget",
                     memory_limit=limit, optimizer="adamw")
    run_trial(spec)
    with pytest.raises(MemoryLimitTooSmall, match="every repeated block computed again"):
        run_trial(replace(spec, batch=ours.batch + 1))


def test_fit_json_and_devices(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "fit", "vgg16", "--batch", "256", "--devices",
                             "titan-x,h100-pcie5", "--policies", "none,vdnn-conv", "--json")
    assert code == 0, err
    fits = {(f["device"], f["policy"]): f for f in json.loads(out)["fits"]}
    # VGG-16 at 256: none needs 16.17 GiB (docs/paper.md), more than the Titan X's 12 GiB
    assert not fits[("sim:titan-x", "none")]["fits"]
    assert fits[("sim:titan-x", "vdnn-conv")]["fits"]
    assert fits[("sim:h100-pcie5", "none")]["fits"]
    assert fits[("sim:h100-pcie5", "none")]["slowdown"] == pytest.approx(1.0)


@pytest.mark.parametrize(("argv", "fragments"), [
    (["fit", "digits", "--device", "cpu"], ["--memory-limit", "cpu"]),
    (["fit", "digits", "--devices", "all"], ["--devices", "--batch"]),
    (["fit", "digits", "--batch", "4", "--devices", "all", "--memory-limit", "1GiB"],
     ["--memory-limit", "--devices"]),
    (["fit", "digits", "--device", "sim:titan-x", "--policies", "magic"], ["'magic'"]),
])
def test_fit_bad_input(capsys: pytest.CaptureFixture[str], argv, fragments) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_fit_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "fit", "digits", "--device", "sim:titan-x",
                           "--memory-limit", "64MiB", "--policies", "none")
    assert code == 0 and "largest batch" in out and "memory limit 64.00 MiB" in out
