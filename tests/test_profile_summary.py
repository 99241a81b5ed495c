"""`vmem profiles FILE.toml`: a user's own profile checked and summarised, its
figures against hand counts and measured runs; bad files and flags get one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

SMALL = """\
name = "mine"
description = "two channels of 2x2, one linear layer"
input = [2, 2, 2]
batch = 6
cpu_batch = 3

[[layer]]
name = "flat"
type = "flatten"

[[layer]]
name = "fc"
type = "linear"
out_features = 3

[[layer]]
name = "loss"
type = "softmax_loss"
"""


def _summary(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run_cli(capsys, "profiles", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_a_users_profile_is_summarised(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(SMALL)
    row = _summary(capsys, str(path))
    assert row["name"] == "mine" and row["path"] == str(path)
    assert row["parameters"] == 8 * 3 + 3  # fc: 8 inputs to 3 outputs, and 3 biases
    assert row["input"] == [2, 2, 2] and row["layers"] == 3
    # the default device is a sim GPU, at the profile's batch; it fits its 80 GB
    assert row["device"] == "sim:h100-pcie5" and row["peak_batch"] == 6 and row["fits"]
    # the peak none holds, as a real training step on the cpu measures it
    on_cpu = _summary(capsys, str(path), "--device", "cpu")
    assert on_cpu["peak_batch"] == 3 and on_cpu["device_memory_bytes"] is None
    for batch in ("3", "6"):
        code, out, err = run_cli(capsys, "run", str(path), "--device", "cpu", "--batch", batch,
                                 "--steps", "2", "--json")
        assert code == 0, err
        measured = json.loads(out)["peak_bytes"]
        assert _summary(capsys, str(path), "--batch", batch)["none_peak_bytes"] == measured
    assert on_cpu["none_peak_bytes"] == _summary(capsys, str(path), "--batch", "3")[
        "none_peak_bytes"]
    code, out, _ = run_cli(capsys, "profiles", str(path))
    assert code == 0 and "a valid profile" in out and "27 parameters" in out
    assert f"{row['none_peak_bytes']:,} bytes" in out and "at batch 6 on sim:h100-pcie5" in out


def test_a_shipped_profile_agrees_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    listed = {row["name"]: row for row in _summary(capsys)}
    row = _summary(capsys, "alexnet-tiny")
    for key in ("parameters", "gflops_per_sample", "layers", "batch", "cpu_batch", "input"):
        assert row[key] == listed["alexnet-tiny"][key], key


def test_a_peak_beyond_the_device_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """VGG-16 at batch 256 under none needs more than a Titan X's 12 GiB; the peak is
    the one `vmem plan --policy none` gives where it fits (an H200's 141 GB)."""
    row = _summary(capsys, "vgg16", "--batch", "256", "--device", "sim:titan-x")
    code, out, _ = run_cli(capsys, "plan", "vgg16", "--batch", "256", "--device", "sim:h200",
                           "--policy", "none", "--json")
    assert code == 0 and json.loads(out)["peak_bytes"] == row["none_peak_bytes"]
    assert row["device_memory_bytes"] == 12 * 2**30 and row["fits"] is False
    code, out, _ = run_cli(capsys, "profiles", "vgg16", "--batch", "256", "--device",
                           "sim:titan-x")
    assert code == 0 and "more than the device's 12.00 GiB" in out and "vmem fit" in out


def test_adamw_holds_more_than_sgd(capsys: pytest.CaptureFixture[str]) -> None:
    """AdamW keeps two state buffers a parameter to SGD's one: 4 bytes more each."""
    sgd = _summary(capsys, "alexnet-tiny")
    adamw = _summary(capsys, "alexnet-tiny", "--optimizer", "adamw")
    assert adamw["none_peak_bytes"] - sgd["none_peak_bytes"] == 4 * sgd["parameters"]


@pytest.mark.parametrize("text,fragments", [
    ('name = "x"\n', ["bad.toml:1", "missing top-level key 'input'"]),
    (SMALL.replace('type = "linear"', 'type = "linaer"'), ["bad.toml", "linaer"]),
    (SMALL.replace("out_features = 3", "out_features = -3"), ["bad.toml", "fc"]),
    ("input = [", ["bad.toml"]),
])
def test_bad_files_get_the_profile_error(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         text: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for extra in ((), ("--json",)):
        code, out, err = run_cli(capsys, "profiles", str(path), *extra)
        assert_one_line_error(code, err, "vmem profiles: error: ", *fragments)
        assert out == ""


@pytest.mark.parametrize("argv,fragments", [
    (["profiles", "--device", "cpu"], ["--device: give a profile too"]),
    (["profiles", "--batch", "4"], ["--batch: give a profile too"]),
    (["profiles", "digits", "--device", "sim:nope"], ["--device", "nope"]),
    (["profiles", "digits", "--batch", "0"], ["--batch"]),
    (["profiles", "no/such.toml"], ["no/such.toml"]),
])
def test_bad_flags_get_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                fragments: list[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert out == ""
