"""The files vmem reads (profiles, `sim:` GPU files, sessions, calibrations):
what Python's parsers cannot take (a 5,000-digit integer, deep nesting) and
values out of their range are one line naming the file and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import assert_one_line_error, run_cli

from vmem.calibrate import calibrate
from vmem.costs import load_calibration
from vmem.errors import UsageError
from vmem.profile import load_profile
from vmem.profiler.session import SessionError, load_session
from vmem.units import format_bytes

HUGE = "9" * 5000
GPU = 'memory = "24GiB"\ntflops = 30\nbandwidth_gbps = 900\nd2h_gbps = 20\nh2d_gbps = 22\n'
PROFILE = ('input = [1, 8, 8]\n\n[[layer]]\nname = "fc"\ntype = "linear"\nout_features = 4\n\n'
           '[[layer]]\nname = "loss"\ntype = "softmax_loss"\n')


@pytest.fixture(scope="module")
def session_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from vmem.cli import main

    path = tmp_path_factory.mktemp("session") / "s.json"
    assert main(["run", "alexnet-tiny", "--device", "sim:titan-x", "--steps", "2",
                 "--save-session", str(path), "--json"]) == 0
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def calibration_data() -> dict[str, Any]:
    return calibrate(load_profile("alexnet-tiny").network, "cpu", 2, 2)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "fragment"), ids=["digits", "deep", "nested"], argvalues=[
    (PROFILE.replace("out_features = 4", f"out_features = {HUGE}"), "more than 4300 digits"),
    (PROFILE + "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    (PROFILE + "x = " + "[" * 70 + "]" * 70 + "\n", "nested too deeply"),
])
def test_profiles_python_cannot_parse(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      text: str, fragment: str) -> None:
    path = _write(tmp_path, "net.toml", text)
    code, out, err = run_cli(capsys, "plan", str(path), "--device", "sim:titan-x")
    assert_one_line_error(code, err, "net.toml", fragment)


@pytest.mark.parametrize(("text", "fragment"), ids=["digits", "deep", "nan", "negative",
                                                   "zero", "inf"], argvalues=[
    (GPU.replace("tflops = 30", f"tflops = {HUGE}"), "more than 4300 digits"),
    (GPU + "x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
    (GPU.replace("tflops = 30", "tflops = nan"), "tflops must be a positive number, got nan"),
    (GPU.replace("d2h_gbps = 20", "d2h_gbps = -20"), "d2h_gbps must be a positive number"),
    (GPU.replace("h2d_gbps = 22", "h2d_gbps = 0"), "h2d_gbps must be a positive number"),
    (GPU.replace("bandwidth_gbps = 900", "bandwidth_gbps = inf"), "bandwidth_gbps must be"),
])
def test_gpu_files_python_cannot_parse(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       text: str, fragment: str) -> None:
    path = _write(tmp_path, "card.toml", text)
    code, _, err = run_cli(capsys, "plan", "alexnet-tiny", "--device", f"sim:{path}")
    assert_one_line_error(code, err, "card.toml", fragment)


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    *path, last = dotted.split(".")
    node: Any = data
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return data


@pytest.mark.parametrize(("field", "value"), [
    ("trials.0.result.peak_bytes", -100),
    ("trials.0.result.step_ms", -5),
    ("trials.0.result.peak_bytes", 10**400),
    ("trials.0.result.steps_ms.0", -1.0),
    ("trials.0.result.slowdown", 0),
    ("trials.0.records.1.memory.0.nbytes", -4),
    ("trials.0.records.1.memory.0.op", "borrow"),
    ("trials.0.records.1.spans.0.end_ms", -0.5),
    ("meta.memory_limit_bytes", 2**64),
    ("meta.steps", -2),
])
def test_sessions_out_of_range_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           session_data: dict[str, Any], field: str,
                                           value: Any) -> None:
    path = _write(tmp_path, "s.json", json.dumps(_set(session_data, field, value)))
    code, out, err = run_cli(capsys, "report", str(path))
    where = field.split(".")
    dotted = where[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in where[1:])
    assert_one_line_error(code, err, "s.json", dotted.replace(".[", "["), "must be")
    assert out == ""


def test_sessions_python_cannot_parse(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      session_data: dict[str, Any]) -> None:
    text = json.dumps(session_data)
    cases = [(text.replace('"steps": 2', f'"steps": {HUGE}', 1), "more than 4300 digits"),
             ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
             (json.dumps(_set(session_data, "meta.device_facts",
                              {"deep": json.loads("[" * 200 + "]" * 200)})),
              "nested too deeply")]
    for content, fragment in cases:
        path = _write(tmp_path, "s.json", content)
        code, out, err = run_cli(capsys, "report", str(path))
        assert_one_line_error(code, err, "s.json", fragment)
    with pytest.raises(SessionError, match="nested too deeply"):
        load_session(path)


def test_format_bytes_of_any_integer() -> None:
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(10**400).endswith(" B") and "e+400" in format_bytes(10**400)


@pytest.mark.parametrize(("edit", "fragment"), ids=[
    "duplicate", "float16", "nan", "negative", "zero", "inf", "huge", "time", "deep"], argvalues=[
    (lambda d: d["layers"].append(copy.deepcopy(d["layers"][1])), "given twice"),
    (lambda d: d.update(dtype="float16"), "'dtype' must be one of \"float32\""),
    (lambda d: d.update(d2h_gbps=float("nan")), "'d2h_gbps' must be a positive finite number"),
    (lambda d: d.update(h2d_gbps=-3.0), "'h2d_gbps' must be a positive"),
    (lambda d: d.update(bandwidth_gbps=0), "'bandwidth_gbps' must be a positive"),
    (lambda d: d.update(tflops=float("inf")), "'tflops' must be a positive"),
    (lambda d: d.update(batch=2**70), "'batch' must be an integer from 1 to"),
    (lambda d: d["layers"][0].update(forward_ms=-1), "'layers[0].forward_ms' must be"),
    (lambda d: d.update(device={"deep": json.loads("[" * 200 + "]" * 200)}), "nested too deeply"),
])
def test_calibrations_out_of_range_are_refused(tmp_path: Path, calibration_data: dict[str, Any],
                                               edit: Any, fragment: str) -> None:
    data = copy.deepcopy(calibration_data)
    edit(data)
    path = _write(tmp_path, "cal.json", json.dumps(data))
    with pytest.raises(UsageError, match="cal.json") as raised:
        load_calibration(str(path))
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_calibrations_python_cannot_parse(tmp_path: Path,
                                          calibration_data: dict[str, Any]) -> None:
    text = json.dumps(calibration_data).replace('"batch": 2', f'"batch": {HUGE}', 1)
    for content, fragment in [(text, "more than 4300 digits"),
                              ("[" * 100_000 + "]" * 100_000, "nested too deeply")]:
        path = _write(tmp_path, "cal.json", content)
        with pytest.raises(UsageError, match=fragment):
            load_calibration(str(path))
    path = _write(tmp_path, "cal.json", json.dumps(calibration_data))
    assert load_calibration(str(path)).batch == 2
