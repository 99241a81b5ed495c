"""`vmem calibrate` on the cpu (the pipeline a GPU run takes), the file it
writes, the sim predictions made from it, and every bad input as one line.

Timings on a shared machine are noisy: these tests check structure (a file
that round-trips, every layer present, predictions positive and finite, bad
files refused), never how close a prediction comes."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vmem import cli
from vmem.backends import cuda
from vmem.costs import (
    CalibratedCosts,
    Calibration,
    CostModel,
    GpuSpec,
    LayerTiming,
    load_calibration,
)
from vmem.errors import UsageError
from vmem.layers.base import Algorithm
from vmem.layers.conv import Conv
from vmem.profile import load_profile

NETWORK = "alexnet-tiny"


def calibrate_cli(*argv: str) -> int:
    """`vmem calibrate ARGV` through the command line's entry point."""
    return run_cli("calibrate", *argv)


def run_cli(*argv: str) -> int:
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "cpu.json"
    assert calibrate_cli(NETWORK, "--device", "cpu", "--batch", "4", "--steps", "3",
                         "-o", str(path)) == 0
    return path


def test_the_file_round_trips(calibration: Path) -> None:
    document = json.loads(calibration.read_text())
    assert (document["format"], document["version"]) == ("vmem-calibration", 1)
    assert (document["profile"], document["batch"], document["dtype"]) == (NETWORK, 4,
                                                                           "float32")
    assert document["device"]["backend"] == "cpu" and document["memory_bytes"] > 0
    network = load_profile(NETWORK).network
    assert [row["name"] for row in document["layers"]] == [n.name for n in network.nodes]
    for key in ("d2h_gbps", "h2d_gbps", "bandwidth_gbps", "launch_us", "tflops"):
        assert math.isfinite(document[key]) and document[key] > 0, key
    for row in document["layers"]:
        assert all(math.isfinite(row[k]) and row[k] >= 0 for k in ("forward_ms",
                                                                    "backward_ms"))
    conv1 = document["layers"][0]
    assert conv1["algorithm"].startswith("im2col:") and conv1["workspace_bytes"] > 0
    loaded = load_calibration(str(calibration))
    assert set(loaded.layers) == {n.name for n in network.nodes}
    assert loaded.layers["conv1"].forward_ms == conv1["forward_ms"]
    assert loaded.layers["conv1"].in_shapes == ((3, 99, 99),)
    assert loaded.gpu.memory_bytes == document["memory_bytes"]
    assert loaded.gpu.d2h_gbps == document["d2h_gbps"]
    CalibratedCosts(calibration=loaded).check_network(network)


def test_json_prints_what_was_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    path = tmp_path / "tiny.json"
    assert calibrate_cli("tiny-branch", "--device", "cpu", "--steps", "2", "-o", str(path),
                         "--json") == 0
    assert json.loads(capsys.readouterr().out) == json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.json"]  # no temporary left
    # written as sessions and traces are: the mode a new file gets under the umask
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_predicting_another_batch(calibration: Path, capsys: pytest.CaptureFixture[str]
                                  ) -> None:
    results = {}
    for device in (f"sim:{calibration}", "cpu"):
        assert run_cli("run", NETWORK, "--device", device, "--batch", "8", "--steps", "3",
                       "--json") == 0
        results[device] = json.loads(capsys.readouterr().out)
    predicted, measured = results[f"sim:{calibration}"], results["cpu"]
    assert predicted["device"] == "sim:cpu.json"
    assert math.isfinite(predicted["step_ms"]) and predicted["step_ms"] > 0
    assert predicted["peak_bytes"] == measured["peak_bytes"]  # the same bytes, exactly
    error = predicted["step_ms"] / measured["step_ms"] - 1
    with capsys.disabled():  # reported (pytest -s), not asserted: the machine is noisy
        print(f"\ncalibrated at batch 4 on cpu, batch 8: predicted {predicted['step_ms']:.1f} "
              f"ms, measured {measured['step_ms']:.1f} ms ({error:+.0%})")
    # and under a policy that copies: the measured copy rates drive the memory stream
    assert run_cli("run", NETWORK, "--device", f"sim:{calibration}", "--batch", "8",
                   "--policy", "vdnn-all", "--steps", "2", "--json") == 0
    offloading = json.loads(capsys.readouterr().out)
    assert offloading["offloaded_bytes"] > 0 and offloading["step_ms"] > 0


def test_plan_reads_the_calibrated_device(calibration: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("plan", NETWORK, "--device", f"sim:{calibration}", "--json") == 0
    assert json.loads(capsys.readouterr().out)["batch"] == 4  # the profile's batch


def test_the_scaling_model() -> None:
    """Measured time × model(b, a) / model(b0, a0), by hand for one convolution."""
    conv = Conv(name="conv", out_channels=64, kernel=3, pad=1)
    gpu = GpuSpec("card.json", 2**34, 10.0, 500.0, 10.0, 12.0, 5.0)
    sample, b0 = (32, 28, 28), 16

    def shapes(batch: int) -> tuple[tuple[tuple[int, ...]], tuple[int, ...]]:
        in_shape = (batch, *sample)
        return (in_shape,), conv.output_shape([in_shape])

    def algorithm(batch: int, chunk: int) -> Algorithm:
        return Algorithm(f"im2col:{chunk}", conv.workspace_bytes(shapes(batch)[0], 4, chunk),
                         chunk)

    timing = LayerTiming("conv", "conv", (sample,), "im2col:8",
                         algorithm(b0, 8).workspace_bytes, 8, 3.0, 7.0)
    costs = CalibratedCosts(calibration=Calibration(
        "card.json", gpu, "net", b0, "float32", {"conv": timing}, 2.0, 1000, {}))
    model = CostModel(gpu)
    # the calibrated batch and algorithm give the measured times
    assert costs.layer_ms(conv, *shapes(b0), algorithm(b0, 8), "forward") == pytest.approx(3.0)
    assert costs.layer_ms(conv, *shapes(b0), algorithm(b0, 8), "backward") == pytest.approx(7.0)
    for batch, chunk in ((64, 8), (64, 2), (4, 4)):
        for phase, measured in (("forward", 3.0), ("backward", 7.0)):
            ratio = (model.layer_ms(conv, *shapes(batch), algorithm(batch, chunk), phase)
                     / model.layer_ms(conv, *shapes(b0), algorithm(b0, 8), phase))
            predicted = costs.layer_ms(conv, *shapes(batch), algorithm(batch, chunk), phase)
            assert predicted == pytest.approx(measured * ratio)
    # four times the batch, same chunk: four times the feature maps, the chunks and
    # their launches; the weights' traffic does not grow, so a little under 4×
    assert costs.layer_ms(conv, *shapes(64), algorithm(64, 8), "forward") == pytest.approx(
        12.0, rel=0.01)
    # the update scales with the weights (SGD with momentum: 5 passes, as measured)
    assert costs.update_ms(2000, traffic=5) == pytest.approx(4.0)
    # ... and with the optimizer's passes over them: AdamW (7) against the SGD measured (5)
    assert costs.update_ms(2000, traffic=7) == pytest.approx(5.6)
    assert model.update_ms(10**9, traffic=7) == pytest.approx(7 * 1e3 / gpu.bandwidth_gbps)
    assert costs.copy_ms(10**9, to_host=True) == pytest.approx(100.005)  # 10 GB/s + launch
    assert costs.copy_ms(12 * 10**8, to_host=False) == pytest.approx(100.005)
    other = replace(conv, name="other")
    with pytest.raises(UsageError, match="no timing for layer 'other'"):
        costs.layer_ms(other, *shapes(b0), algorithm(b0, 8), "forward")


def test_another_network_is_refused(calibration: Path, capsys: pytest.CaptureFixture[str]
                                    ) -> None:
    costs = CalibratedCosts(calibration=load_calibration(str(calibration)))
    with pytest.raises(UsageError) as failure:
        costs.check_network(load_profile("vgg16-tiny").network)
    assert "conv1_1, relu1_1, conv1_2" in str(failure.value)
    assert run_cli("run", "vgg16-tiny", "--device", f"sim:{calibration}", "--steps", "1") == 2
    one_line_error(capsys, "no timing for layer(s) conv1_1", f"profile {NETWORK}")
    # the same layer names with other shapes (AlexNet itself) are refused too
    assert run_cli("run", "alexnet", "--device", f"sim:{calibration}", "--steps", "1") == 2
    one_line_error(capsys, "layer 'conv1' was calibrated as conv with input 3×99×99",
                   "here it is conv with input 3×227×227")


def _edited(calibration: Path, edit: str) -> str:
    document = json.loads(calibration.read_text())
    if edit == "format":
        document["format"] = "vmem-session"
    elif edit == "version":
        document["version"] = 2
    elif edit == "no layers":
        del document["layers"]
    elif edit == "negative time":
        document["layers"][3]["backward_ms"] = -1.0
    elif edit == "bad shapes":
        document["layers"][0]["in_shapes"] = [[3, "99", 99]]
    elif edit == "no memory":
        del document["memory_bytes"]
    elif edit == "zero bandwidth":
        document["d2h_gbps"] = 0
    return json.dumps(document)


@pytest.mark.parametrize(("edit", "fragment"), [
    ("not json", "not valid JSON"),
    ("a list", "not a vmem calibration file"),
    ("format", "not a vmem calibration file"),
    ("version", "version 2; this vmem reads version 1"),
    ("no layers", "missing 'layers'"),
    ("negative time", "'layers[3].backward_ms' must be a finite number from 0"),
    ("bad shapes", "'layers[0].in_shapes[0][1]' must be an integer from 1"),
    ("no memory", "missing 'memory_bytes'"),
    ("zero bandwidth", "'d2h_gbps' must be a positive finite number, got 0"),
    ("absent", "cannot read it"),
])
def test_bad_calibration_files_are_one_line(calibration: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], edit: str,
                                            fragment: str) -> None:
    path = tmp_path / "bad.json"
    if edit == "not json":
        path.write_text("{format: vmem-calibration")
    elif edit == "a list":
        path.write_text("[1, 2]")
    elif edit != "absent":
        path.write_text(_edited(calibration, edit))
    assert run_cli("run", NETWORK, "--device", f"sim:{path}", "--steps", "1") == 2
    one_line_error(capsys, fragment, "bad.json")


@pytest.mark.skipif(cuda.available(), reason="checks the message on a machine without a GPU")
def test_without_a_gpu_calibrate_says_so_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert calibrate_cli(NETWORK, "-o", str(tmp_path / "cal.json")) == 2
    one_line_error(capsys, "--device cuda", "calibrate measures a GPU", "--device cpu")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("argv", "fragment"), [
    (("-o", "{tmp}/cal.txt"), "-o: the file must end in .json"),
    (("-o", "{tmp}/missing/cal.json"), "-o: cannot write"),
    (("-o", "{tmp}/cal.json", "--steps", "1"), "--steps: calibrate needs at least 2"),
    (("-o", "{tmp}/cal.json", "--device", "sim:titan-x"), "calibrate measures a real device"),
    (("-o", "{tmp}/cal.json", "--batch", "0"), "--batch: must be a positive integer"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    argv: tuple[str, ...], fragment: str) -> None:
    args = [a.format(tmp=tmp_path) for a in argv]
    assert calibrate_cli(NETWORK, "--device", "cpu", *args) == 2
    one_line_error(capsys, fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_trial_stages_its_batch_in_the_backends_pinned_memory():
    """run_trial and calibrate upload the batch from the backend's pinned_empty buffer
    (page-locked on cuda): the values are the batch's, the memory the backend's."""
    from vmem.backends.cpu import CpuBackend
    from vmem.trial import staged_for_upload, synthetic_batch

    given: list[np.ndarray] = []

    class Recording(CpuBackend):
        def pinned_empty(self, nbytes: int) -> np.ndarray:
            given.append(super().pinned_empty(nbytes))
            return given[-1]

    x, _ = synthetic_batch((3, 4, 4), 10, 2, seed=1)
    staged = staged_for_upload(Recording(), x)
    assert np.array_equal(staged, x) and staged.dtype == x.dtype and staged.shape == x.shape
    assert np.shares_memory(staged, given[0])
