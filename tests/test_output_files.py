"""The files vmem writes (--trace, --save-session, --plot, report --trace,
calibrate -o): a path that cannot be written is refused before the job in one
line, and a file is replaced whole, keeping its mode, through a symbolic link,
and never leaving a temporary behind; '-' is standard output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

from vmem.errors import UsageError
from vmem.profiler.output import write_atomic
from vmem.profiler.session import load_session

RUN = ("run", "alexnet-tiny", "--device", "sim:titan-x", "--steps", "1")


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def session_file(tmp_path_factory: pytest.TempPathFactory,
                 capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path_factory.mktemp("session") / "s.json"
    code, _, err = run_cli(capsys, *RUN, "--save-session", str(path))
    assert code == 0, err
    return path


@pytest.mark.parametrize("flag", ["--trace", "--save-session", "--plot"])
def test_a_name_over_255_bytes_is_refused_before_the_run(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str) -> None:
    path = tmp_path / ("n" * 251 + ".json")
    code, out, err = run_cli(capsys, *RUN, flag, str(path))
    assert_one_line_error(code, err, flag, "256 bytes", "at most 255")
    assert out == "" and os.listdir(tmp_path) == []
    # a directory's name too long, in the middle of the path
    code, _, err = run_cli(capsys, *RUN, flag, str(tmp_path / ("d" * 300) / "t.json"))
    assert_one_line_error(code, err, flag, "300 bytes")


def test_report_and_calibrate_refuse_a_name_over_255_bytes(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, session_file: Path) -> None:
    long_name = str(tmp_path / ("n" * 251 + ".json"))
    code, _, err = run_cli(capsys, "report", str(session_file), "--trace", long_name)
    assert_one_line_error(code, err, "--trace", "256 bytes")
    code, _, err = run_cli(capsys, "calibrate", "alexnet-tiny", "--device", "cpu", "-o",
                           long_name)
    assert_one_line_error(code, err, "-o", "256 bytes")
    assert os.listdir(tmp_path) == []


def test_a_name_of_250_bytes_is_written(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    """The temporary file's name must fit wherever the final name fits."""
    trace, saved = tmp_path / ("t" * 245 + ".json"), tmp_path / ("s" * 250 + ".json")
    code, _, err = run_cli(capsys, *RUN, "--trace", str(trace), "--save-session", str(saved))
    assert code == 0, err
    assert "traceEvents" in json.loads(trace.read_text())
    assert load_session(saved).meta.profile == "alexnet-tiny"
    assert sorted(os.listdir(tmp_path)) == sorted([trace.name, saved.name])


def test_replacing_a_file_keeps_its_mode(tmp_path: Path) -> None:
    private = tmp_path / "private.json"
    private.write_text("old")
    private.chmod(0o600)
    write_atomic(private, "new", "--trace")
    assert private.read_text() == "new"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    shared = tmp_path / "shared.json"
    shared.write_text("old")
    shared.chmod(0o664)
    write_atomic(shared, "new", "--trace")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_file_gets_the_umasks_mode(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.json", "x", "--trace")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "trace.json"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(link, "new", "--trace")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real"]
    assert os.listdir(tmp_path / "real") == ["trace.json"]
    # a link to a file not yet there creates the file where it points
    dangling = tmp_path / "later.json"
    dangling.symlink_to(tmp_path / "real" / "later.json")
    write_atomic(dangling, "made", "--trace")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.json").read_text() == "made"


def test_a_fifo_is_written_into_not_replaced(tmp_path: Path) -> None:
    """A FIFO (as /dev/stdout is, under a pipe) or a character device receives the
    bytes; it is never replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_atomic(fifo, "through the pipe", "--trace")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_an_interrupt_mid_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def interrupted(_: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "new" * 100_000, "--trace", check=interrupted)
    assert os.listdir(tmp_path) == ["out.json"] and target.read_text() == "old"


def test_dash_is_standard_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 session_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace or the session alone on standard output; the table moves to
    standard error."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "report", str(session_file), "--trace", "-")
    assert code == 0, err
    assert "traceEvents" in json.loads(out) and "vmem run alexnet-tiny" in err
    code, out, err = run_cli(capsys, *RUN, "--save-session", "-")
    assert code == 0, err
    assert json.loads(out)["format"] == "vmem-session" and "peak device memory" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--trace", "-", "--save-session", "-"], ["--save-session", "standard output",
                                                "--trace"]),
    (["--trace", "-", "--json"], ["--json", "standard output", "--trace"]),
])
def test_two_things_for_standard_output_are_refused(capsys: pytest.CaptureFixture[str],
                                                    argv: list[str],
                                                    fragments: list[str]) -> None:
    code, out, err = run_cli(capsys, *RUN, *argv)
    assert_one_line_error(code, err, *fragments)
    assert out == ""


def test_a_plot_is_not_written_to_a_terminal(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_cli(capsys, *RUN, "--plot", "-")
    assert_one_line_error(code, err, "--plot", "terminal", "PNG")


def test_dash_where_standard_output_makes_no_sense(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="--out: '-'"):
        write_atomic("-", "report", "--out")
    assert os.listdir(tmp_path) == []


def test_each_file_written_is_named_below_the_tables(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    """`run` says where it wrote the trace and the session (on standard error with
    --json, whose standard output is the JSON alone), and names no output sent to
    standard output."""
    trace, session = tmp_path / "my trace.json", tmp_path / "s.json"
    argv = ["run", "digits", "--device", "sim:titan-x", "--steps", "1", "--trace", str(trace),
            "--save-session", str(session)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and err == ""
    assert out.splitlines()[-2:] == [
        f"wrote the trace to {trace}: open it in Perfetto (ui.perfetto.dev) or chrome://tracing",
        f"wrote the session to {session}: `vmem report {session}` prints these tables again"]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0 and json.loads(out)["policy"] == "none"
    assert err.splitlines() == [
        f"wrote the trace to {trace}: open it in Perfetto (ui.perfetto.dev) or chrome://tracing",
        f"wrote the session to {session}: `vmem report {session}` prints these tables again"]
    code, out, err = run_cli(capsys, "report", str(session), "--trace", "-")
    assert code == 0 and "traceEvents" in out and "wrote" not in out + err
