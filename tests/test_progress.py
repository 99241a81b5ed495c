"""Progress bars on standard error: on a terminal only, never when piped or with
--json. `calibrate` counts its steps and probes, `plan` its dry runs."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

from vmem.cli import main
from vmem.profiler import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch: pytest.MonkeyPatch) -> _Terminal:
    """Standard error as a terminal, and a bar from the first moment (no delay).
    Called in the test itself: pytest sets its own sys.stderr after the fixtures."""
    monkeypatch.setattr(progress, "DELAY_S", 0)
    monkeypatch.setenv("NO_COLOR", "1")
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


CALIBRATE = ("calibrate", "tiny-branch", "--device", "cpu", "--steps", "2")
PLAN = ("plan", "vgg16-tiny", "--policy", "budget", "--device", "sim:titan-x",
        "--memory-limit", "24MiB")


@pytest.mark.parametrize("argv", [CALIBRATE, PLAN])
def test_a_terminal_shows_progress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   argv: tuple[str, ...]) -> None:
    terminal = _terminal(monkeypatch)
    out = ["-o", str(tmp_path / "c.json")] if argv[0] == "calibrate" else []
    assert main([*argv, *out]) == 0
    shown = terminal.getvalue()
    assert ("calibrate: training steps" if argv[0] == "calibrate" else
            "plan budget: dry runs") in shown, shown


@pytest.mark.parametrize("argv", [CALIBRATE, PLAN])
def test_json_shows_none_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       argv: tuple[str, ...]) -> None:
    terminal = _terminal(monkeypatch)
    out = ["-o", str(tmp_path / "c.json")] if argv[0] == "calibrate" else []
    assert main([*argv, *out, "--json"]) == 0
    assert terminal.getvalue() == ""


@pytest.mark.parametrize("argv", [CALIBRATE, PLAN])
def test_piped_shows_none(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                          tmp_path: Path, argv: tuple[str, ...]) -> None:
    monkeypatch.setattr(progress, "DELAY_S", 0)
    out = ["-o", str(tmp_path / "c.json")] if argv[0] == "calibrate" else []
    code, _, err = run_cli(capsys, *argv, *out)
    assert code == 0 and err == ""


def test_a_plan_counts_its_dry_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The count the bar shows is the number of dry runs made, each once: whole
    ones and those stopped past the capacity (a plan found not to fit)."""
    from vmem import dryrun
    from vmem.planning import plan_with_oracle
    from vmem.profile import load_profile

    made = []
    real = dryrun.dry_run_within

    def counted(*args: object, **kwargs: object) -> object:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dryrun, "dry_run_within", counted)
    calls = []
    plan_with_oracle(load_profile("vgg16-tiny"), "budget", "sim:titan-x", None, 7 * 2**19,
                     on_dry_run=lambda: calls.append(1))
    assert len(calls) == len(made) > 2
