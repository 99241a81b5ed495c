"""`vmem report` reads a bounded amount (a file past vmem.files.MAX_FILE_BYTES is
refused in one line, /dev/zero too, after at most that many bytes) and its work
grows linearly with the session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

import vmem.files
from vmem.cli import main


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


def test_a_file_past_the_limit_is_refused_by_its_size(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as file:  # sparse: 300 MiB that take no disk
        file.truncate(300 * 2**20)
    code, out, err = run_cli(capsys, "report", str(huge))
    assert_one_line_error(code, err, "huge.json", "larger than 256 MiB")
    assert out == ""


def test_an_endless_file_is_refused_after_the_limit(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/zero has no size: reading stops one byte past the limit (a smaller limit
    here, to keep the test light; without a bound it would never end)."""
    monkeypatch.setattr(vmem.files, "MAX_FILE_BYTES", 2**20)
    code, out, err = run_cli(capsys, "report", "/dev/zero")
    assert_one_line_error(code, err, "/dev/zero", "larger than 1 MiB")


def _saved(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / f"s{steps}.json"
    assert main(["run", "alexnet-tiny", "--device", "sim:titan-x", "--steps", str(steps),
                 "--save-session", str(path), "--json"]) == 0
    return path


def _calls(capsys: pytest.CaptureFixture[str], path: Path) -> int:
    """Python function calls made to load and render the session with --layers."""
    calls = 0

    def count(_frame: object, event: str, _arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    capsys.readouterr()
    sys.setprofile(count)
    try:
        code = main(["report", str(path), "--layers"])
    finally:
        sys.setprofile(None)
    assert code == 0 and "per layer" in capsys.readouterr().out
    return calls


def _values(data: object) -> int:
    """JSON values in a document, containers included."""
    if isinstance(data, dict):
        return 1 + sum(_values(v) for v in data.values())
    if isinstance(data, list):
        return 1 + sum(_values(v) for v in data)
    return 1


def test_rendering_work_grows_linearly(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    """Twice the steps (so twice the events): at most 2.2 times the calls (linear
    work plus a fixed part; quadratic work would need about four times), and the
    steps added cost a few calls per JSON value they add (checking each value
    is a call or two, rendering a step's row a few more; decoding that looked up
    each object's type hints again made 13 calls a value)."""
    small, large = _saved(tmp_path, 8), _saved(tmp_path, 16)
    added = (_values(json.loads(large.read_text())) - _values(json.loads(small.read_text())))
    assert added > 0.9 * _values(json.loads(small.read_text()))
    _calls(capsys, small)  # the first render imports and caches what later ones reuse
    few, many = _calls(capsys, small), _calls(capsys, large)
    assert many <= 2.2 * few
    assert many - few <= 4 * added
