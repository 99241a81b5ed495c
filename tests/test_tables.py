"""Tables never cut a number, at any width: every figure of the data behind a
command's tables appears whole on its row's lines at 60, 80 and 120 columns, on a
terminal or piped, and the width follows COLUMNS."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import pytest
from cli_helpers import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from vmem.cli import main
from vmem.profiler.tables import (
    PIPE_COLUMNS,
    Column,
    Row,
    console_width,
    print_table,
    split_columns,
)
from vmem.units import format_bytes

WIDTHS = (60, 80, 120)


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


def _row_lines(out: str, label: str) -> str:
    """The lines a row was printed on: in every part of a split table, or its
    one line where the table was printed as lines."""
    lines = [line for line in out.splitlines()
             if (line.startswith("│") and line.split("│")[1].strip() == label)
             or line.startswith(f"{label}: ")]
    assert lines, (label, out)
    return "\n".join(lines)


def _assert_whole(out: str, label: str, cells: list[str]) -> None:
    lines = _row_lines(out, label)
    for cell in cells:
        assert cell in lines, (label, cell, lines)


def _assert_fits(out: str, width: int) -> None:
    assert "…" not in out
    for line in out.splitlines():
        if line.startswith(("┏", "┃", "┡", "│", "├", "└")):  # a table's own lines
            assert len(line) <= width, (width, line)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(("columns", "tty", "expected"), [
    ("", False, PIPE_COLUMNS), ("", True, None), ("80", False, 80), ("80", True, 80),
    ("60", False, 60), ("0", False, PIPE_COLUMNS), ("wide", True, None),
    ("-5", False, PIPE_COLUMNS), ("٨٠", False, PIPE_COLUMNS)])
def test_the_width_is_columns_where_given_on_a_terminal_or_not(
        columns: str, tty: bool, expected: int | None) -> None:
    environ = {"COLUMNS": columns} if columns else {}
    assert console_width(_Stream(tty), environ) == expected


def test_groups_stay_together_where_they_fit() -> None:
    widths = {0: 10, 1: 10, 2: 10, 3: 10, 4: 10}

    def fits(indices: list[int]) -> bool:
        return sum(widths[i] for i in indices) <= 30

    assert split_columns([[0, 1], [2, 3], [4]], fits) == [[0, 1], [2, 3, 4]]
    assert split_columns([[0, 1, 2, 3], [4]], fits) == [[0, 1, 2], [3, 4]]
    widths[4] = 31
    assert split_columns([[0], [4]], fits) is None


_cell = st.one_of(
    st.integers(0, 10**12).map(lambda n: f"{n:,}"),
    st.floats(0, 1e7, allow_nan=False).map(lambda x: f"{x:,.1f} ms"),
    st.integers(0, 2**50).map(format_bytes))


@settings(max_examples=60, deadline=None)
@given(width=st.integers(30, 140), ncolumns=st.integers(1, 12), nrows=st.integers(1, 5),
       data=st.data())
def test_every_cell_is_whole_on_its_row_at_any_width(width: int, ncolumns: int, nrows: int,
                                                      data: st.DataObject) -> None:
    headers = [f"h{i}" for i in range(ncolumns)]
    rows = [Row((f"r{n}", *data.draw(st.lists(_cell, min_size=ncolumns, max_size=ncolumns))))
            for n in range(nrows)]
    groups = [("a", headers[:ncolumns // 2])] if ncolumns > 1 else []
    out = io.StringIO()
    print_table(Console(file=out, width=width, no_color=True), [Column("name", "left")] +
                [Column(h) for h in headers], rows, title="t", caption="c", groups=groups)
    text = out.getvalue()
    _assert_fits(text, width)
    for row in rows:
        _assert_whole(text, row.cells[0], list(row.cells[1:]))


# -- the commands, through their JSON ------------------------------------------------


def _both(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, width: int,
          *argv: str) -> tuple[str, object]:
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    code, data, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return out, json.loads(data)


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


@pytest.fixture(scope="module")
def saved_compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict]]:
    """A comparison where none does not fit (a failed row, the oracle's own run),
    saved once: `vmem report` renders it at each width."""
    path = str(tmp_path_factory.mktemp("compare") / "session.json")
    data = io.StringIO()
    with contextlib.redirect_stdout(data):
        assert main(["compare", "vgg16", "--batch", "256", "--device", "sim:titan-x",
                     "--steps", "2", "--policies", "none,vdnn-all,vdnn-conv", "--json",
                     "--layers", "--save-session", path]) == 0
    return path, json.loads(data.getvalue())


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_shows_every_figure_whole(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, width: int,
                                          saved_compare: tuple[str, list[dict]]) -> None:
    path, rows = saved_compare
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = run_cli(capsys, "report", path, "--layers")
    assert code == 0, err
    _assert_fits(out, width)
    assert [row["policy"] for row in rows] == ["none", "vdnn-all", "vdnn-conv", "none"]
    for row in rows:
        label = "oracle" if row["oracular"] else row["policy"]
        if row["error"]:
            _assert_whole(out, label, ["does not fit"])
            continue
        kinds = [format_bytes(v) for v in row["peak_by_kind"].values() if v]
        _assert_whole(out, label, [
            format_bytes(row["peak_bytes"]), format_bytes(row["average_bytes"]),
            format_bytes(row["offloaded_bytes"]), format_bytes(row["prefetched_bytes"]),
            format_bytes(row["recomputed_bytes"]), _ms(row["step_ms"]),
            f"{row['slowdown']:.3f}×", _ms(row["stall_ms"]), *kinds])
        # --layers: every trial's layers, whole (the oracle's own run shows none)
        for layer in [] if row["oracular"] else row["layers"]:
            _assert_whole(out, layer["name"], [
                f"{layer['forward_ms']:,.2f} ms", f"{layer['backward_ms']:,.2f} ms",
                format_bytes(layer["peak_bytes"]), format_bytes(layer["after_forward_bytes"])])


@pytest.mark.parametrize("width", WIDTHS)
def test_run_shows_every_figure_whole(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out, row = _both(capsys, monkeypatch, width, "run", "vgg16", "--batch", "64", "--device",
                     "sim:titan-x", "--steps", "3", "--policy", "vdnn-conv")
    _assert_fits(out, width)
    assert isinstance(row, dict)
    for step, ms in enumerate(row["steps_ms"], 1):
        _assert_whole(out, f"{step} (warm-up)" if step == 1 else str(step), [f"{ms:,.1f}"])
    for kind, nbytes in row["peak_by_kind"].items():
        if nbytes:
            _assert_whole(out, kind.replace("_", " ").replace("grads", "gradients"),
                          [format_bytes(nbytes)])
    for figure in (_ms(row["step_ms"]), f"{row['slowdown']:.3f}×",
                   format_bytes(row["peak_bytes"]), format_bytes(row["offloaded_bytes"])):
        assert figure in out


@pytest.mark.parametrize("width", WIDTHS)
def test_fit_shows_every_figure_whole(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out, report = _both(capsys, monkeypatch, width, "fit", "vgg16", "--batch", "64",
                        "--devices", "titan-x,h100-pcie5", "--policies", "none,vdnn-all")
    _assert_fits(out, width)
    assert isinstance(report, dict)
    for device in ("sim:titan-x", "sim:h100-pcie5"):
        fits = [f for f in report["fits"] if f["device"] == device and f["fits"]]
        best = min(fits, key=lambda f: f["step_ms"])
        _assert_whole(out, device, [format_bytes(best["capacity_bytes"]), best["policy"],
                                    format_bytes(best["peak_bytes"]), _ms(best["step_ms"]),
                                    f"{best['samples_per_s']:,.0f}"])


@pytest.mark.parametrize("width", WIDTHS)
def test_profiles_and_gpus_show_every_figure_whole(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   width: int) -> None:
    out, profiles = _both(capsys, monkeypatch, width, "profiles")
    _assert_fits(out, width)
    assert isinstance(profiles, list)
    for profile in profiles:
        _assert_whole(out, profile["name"], [f"{profile['parameters']:,}",
                                             f"{profile['gflops_per_sample']:.3f}",
                                             f"{profile['batch']} (cpu {profile['cpu_batch']})"])
    out, gpus = _both(capsys, monkeypatch, width, "gpus")
    _assert_fits(out, width)
    assert isinstance(gpus, list)
    for gpu in gpus:
        _assert_whole(out, gpu["name"], [format_bytes(gpu["memory_bytes"]), f"{gpu['tflops']:g}",
                                         f"{gpu['d2h_gbps']:g} / {gpu['h2d_gbps']:g}"])


def test_a_width_too_narrow_for_any_column_prints_lines(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out, gpus = _both(capsys, monkeypatch, 24, "gpus")
    assert "…" not in out and isinstance(gpus, list)
    for gpu in gpus:
        _assert_whole(out, gpu["name"], [f"memory {format_bytes(gpu['memory_bytes'])}"])


@pytest.mark.parametrize("width", WIDTHS)
def test_plan_shows_every_figure_whole(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out, plan = _both(capsys, monkeypatch, width, "plan", "gpt2-tiny", "--policy", "vdnn-all",
                      "--device", "sim:titan-x", "--batch", "2")
    _assert_fits(out, width)
    assert isinstance(plan, dict)
    for entry in plan["layers"]:
        _assert_whole(out, entry["layer"], [
            entry["algorithm"], format_bytes(entry["workspace_bytes"]),
            "yes" if entry["offload_input"] else "-"])


@pytest.mark.parametrize("width", WIDTHS)
def test_a_plans_moves_show_whole(width: int) -> None:
    from vmem.plan import Move
    from vmem.planning import plan_for
    from vmem.profile import load_profile
    from vmem.profiler.render_plan import print_plan

    plan, _ = plan_for(load_profile("gpt2-tiny"), "vdnn-all", "sim:titan-x", 2, None)
    names = [entry.layer for entry in plan.layers]
    moves = tuple(Move(names[i], names[i + 1], names[-i - 2]) for i in range(3))
    out = io.StringIO()
    print_plan(Console(file=out, width=width, no_color=True), replace(plan, moves=moves))
    text = out.getvalue()
    _assert_fits(text, width)
    for move in moves:
        _assert_whole(text, move.tensor, [move.release_after, move.prefetch_before])
