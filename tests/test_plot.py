"""The memory plot: device bytes by kind from the recorded events (exact: the kinds
sum to the arena's own total at every sample, on sim and cpu, and the stack tops
out at the reported peak), one panel per policy on shared axes, PNG or SVG by the
suffix, and any other suffix refused in one line before the job runs."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

from vmem.profiler.analysis import KINDS
from vmem.profiler.events import MemoryEvent, Span, StepRecord
from vmem.profiler.session import Session, load_session
from vmem.profiler.timeline import kind_series, peak_record, phase_starts

F, B, U = "forward", "backward", "update"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


# -- the series, by hand ---------------------------------------------------------------


def test_kind_series_of_a_hand_built_step() -> None:
    """weights 100 and optimizer 40 at the start; then a feature map (50), its
    workspace (30, freed), a gradient map (20), the feature map freed."""
    def mem(t: float, op: str, n: int, kind: str, in_use: int) -> MemoryEvent:
        return MemoryEvent(t, op, n, kind, kind, in_use)

    record = StepRecord(
        step=0, duration_ms=10.0, start_in_use=140,
        memory=(mem(0, "alloc", 50, "feature_maps", 190), mem(0, "alloc", 30, "workspace", 220),
                mem(2, "free", 30, "workspace", 190), mem(4, "alloc", 20, "gradient_maps", 210),
                mem(8, "free", 50, "feature_maps", 160)),
        spans=(Span("a", F, "compute", 0, 2), Span("loss", B, "compute", 2.5, 3),
               Span("a", "recompute", "compute", 3, 4), Span("a", B, "compute", 4, 8),
               Span("a", F, "memory", 8, 9, "copy_h2d", 50), Span("sgd", U, "compute", 8, 9.5)),
        start_by_kind=(("weights", 100), ("optimizer", 40)))
    series = kind_series(record)
    assert series.times_ms == (0, 0, 0, 2, 4, 8) and series.end_ms == 10.0
    assert series.in_use == (140, 190, 220, 190, 210, 160)
    expected = {"weights": (100,) * 6, "optimizer": (40,) * 6,
                "feature_maps": (0, 50, 50, 50, 50, 0), "workspace": (0, 0, 30, 0, 0, 0),
                "gradient_maps": (0, 0, 0, 0, 20, 20)}
    assert series.by_kind == {kind: expected.get(kind, (0,) * 6) for kind in KINDS}
    assert series.totals() == series.in_use and max(series.totals()) == 220
    assert series.present() == ("weights", "optimizer", "feature_maps", "gradient_maps",
                                "workspace")
    # the recomputed forward pass and the memory stream move neither boundary
    assert phase_starts(record) == {B: 2.5, U: 8}


def test_bytes_the_start_does_not_split_are_other() -> None:
    record = StepRecord(0, 1.0, 70, (), (), start_by_kind=(("weights", 50),))
    assert kind_series(record).by_kind["other"] == (20,)


def test_the_peak_step_is_the_latest_of_the_highest() -> None:
    def step(n: int, peak: int) -> StepRecord:
        return StepRecord(n, 1.0, 10, (MemoryEvent(0.5, "alloc", peak - 10, "workspace", "w",
                                                   peak),), ())
    records = (step(0, 90), step(1, 50), step(2, 90), step(3, 60))
    assert peak_record(records) is records[2] and peak_record(()) is None


# -- the series of real runs: exact against the arena ----------------------------------


def _compare(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> tuple[
        Session, list[dict]]:
    saved = tmp_path / "s.json"
    code, out, err = run_cli(capsys, "compare", *argv, "--steps", "2", "--json",
                             "--save-session", str(saved))
    assert code == 0, err
    return load_session(saved), json.loads(out)


RUNS = {
    # full size on the sim; on the cpu a small network with BatchNorm, so the layer
    # state, saved and workspace kinds appear too
    "sim": ("alexnet", "--device", "sim:titan-x", "--policies", "none,vdnn-all,vdnn-conv"),
    "cpu": ("resnet18-tiny", "--device", "cpu", "--batch", "2", "--policies",
            "none,vdnn-all,budget"),
}


@pytest.mark.parametrize("where", sorted(RUNS))
def test_kinds_sum_to_the_recorded_total_at_every_sample(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str) -> None:
    session, rows = _compare(capsys, tmp_path, *RUNS[where])
    assert [t.result.policy for t in session.trials] == [r["policy"] for r in rows]
    for trial, row in zip(session.trials, rows, strict=True):
        assert len(trial.records) == 2
        for record in trial.records:
            series = kind_series(record)
            # the arena's total, recorded with each event, against the kinds summed from
            # each event's size, kind and op
            assert series.in_use == (record.start_in_use,
                                     *(e.in_use for e in record.memory))
            assert series.totals() == series.in_use
            assert all(v >= 0 for values in series.by_kind.values() for v in values)
            assert series.by_kind["other"] == (0,) * len(series.times_ms)
        shown = kind_series(peak_record(trial.records))
        assert max(shown.totals()) == row["peak_bytes"]
        at_peak = [dict(zip(shown.by_kind, col, strict=True))
                   for col in zip(*shown.by_kind.values(), strict=True)
                   if sum(col) == row["peak_bytes"]][0]
        assert {k: v for k, v in at_peak.items() if v} == {
            k: v for k, v in row["peak_by_kind"].items() if v}
    if where == "cpu":
        assert {"state", "saved", "workspace"} <= set(kind_series(
            session.trials[0].records[-1]).present())


# -- the figure --------------------------------------------------------------------------


def _stack_top(axes) -> float:  # noqa: ANN001 (a matplotlib Axes)
    """The highest point of the panel's filled areas, in the plot's unit."""
    return max(vertex[1] for collection in axes.collections for path in collection.get_paths()
               for vertex in path.vertices)


def test_a_panel_per_policy_on_shared_axes_topping_out_at_each_peak(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from vmem.profiler.plot import memory_figure

    session, rows = _compare(capsys, tmp_path, *RUNS["sim"])
    figure = memory_figure(session)
    assert len(figure.axes) == len(rows) == 3
    first = figure.axes[0]
    for axes, row in zip(figure.axes, rows, strict=True):
        assert axes.get_title(loc="left").startswith(row["policy"] + " ")
        assert first.get_shared_x_axes().joined(first, axes)
        assert first.get_shared_y_axes().joined(first, axes)
        assert axes.get_ylim() == first.get_ylim() and axes.get_xlim() == first.get_xlim()
        # the unit is GiB here (the peaks are above 1 GiB): the stack's top is the peak
        assert _stack_top(axes) == pytest.approx(row["peak_bytes"] / 2**30, rel=1e-12)
        kinds = [c.get_gid() for c in axes.collections]
        assert kinds == ["weights", "weight_grads", "optimizer", "feature_maps",
                         "gradient_maps", "saved", "workspace"]
    assert "GiB" in figure.get_supylabel()
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "backward pass begins (the loss)" in legend and "optimizer state" in legend
    assert "device memory 12.00 GiB (far above; not drawn)" in legend


def test_a_policy_that_cannot_train_keeps_its_panel(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from vmem.profiler.plot import memory_figure

    session, rows = _compare(capsys, tmp_path, "alexnet", "--device", "sim:titan-x",
                             "--memory-limit", "1.3GiB", "--policies", "none,vdnn-all")
    assert rows[0]["error"] and not rows[1]["error"]
    figure = memory_figure(session)
    assert len(figure.axes) == 2
    failed, trained = figure.axes
    assert not failed.collections and "none could not train" in failed.texts[0].get_text()
    assert _stack_top(trained) == pytest.approx(rows[1]["peak_bytes"] / 2**30, rel=1e-12)
    limits = [line.get_ydata()[0] for line in trained.get_lines() if line.get_color() == "red"]
    assert limits == [pytest.approx(1.3)]  # the limit, drawn: it is near the stack


def test_a_small_network_is_plotted_in_mib(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from vmem.profiler.plot import memory_figure

    session, rows = _compare(capsys, tmp_path, *RUNS["cpu"])
    figure = memory_figure(session)
    assert len(figure.axes) == 3 and "(MiB)" in figure.get_supylabel()
    for axes, row in zip(figure.axes, rows, strict=True):
        assert _stack_top(axes) == pytest.approx(row["peak_bytes"] / 2**20, rel=1e-12)


# -- the files ---------------------------------------------------------------------------


def test_png_and_svg_by_the_suffix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.image

    png, svg = tmp_path / "m.PNG", tmp_path / "m.svg"
    code, _, err = run_cli(capsys, "run", "alexnet-tiny", "--device", "sim:titan-x",
                           "--steps", "1", "--plot", str(png), "--save-session",
                           str(tmp_path / "s.json"))
    assert code == 0, err
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    height, width, _ = matplotlib.image.imread(png).shape  # decodes whole
    assert width > 800 and height > 400
    code, _, err = run_cli(capsys, "report", str(tmp_path / "s.json"), "--plot", str(svg))
    assert code == 0, err
    root = ElementTree.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "alexnet-tiny" in svg.read_text()  # text is kept as text
    from vmem.profiler.plot import memory_plot

    # no date or random ids: the same session, the same file
    assert memory_plot(load_session(tmp_path / "s.json"), "svg") == svg.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["m.PNG", "m.svg", "s.json"]


@pytest.mark.parametrize("name", ["m.pdf", "m.jpg", "m", "m.png.txt"])
def test_another_suffix_is_refused_before_the_job(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, name: str) -> None:
    code, out, err = run_cli(capsys, "compare", "alexnet", "--device", "sim:titan-x",
                             "--steps", "1", "--plot", str(tmp_path / name))
    assert_one_line_error(code, err, "--plot", name, ".png or .svg")
    assert out == "" and os.listdir(tmp_path) == []


def test_report_refuses_another_suffix(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    saved = tmp_path / "s.json"
    code, _, err = run_cli(capsys, "run", "digits", "--device", "sim:titan-x", "--steps", "1",
                           "--save-session", str(saved))
    assert code == 0, err
    code, out, err = run_cli(capsys, "report", str(saved), "--plot", str(tmp_path / "p.eps"))
    assert_one_line_error(code, err, "--plot", "'.eps'", ".png or .svg")
    assert out == "" and os.listdir(tmp_path) == ["s.json"]


def test_the_plot_on_standard_output_is_png(capsysbinary: pytest.CaptureFixture[bytes],
                                            tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from vmem.cli import main

    assert main(["run", "digits", "--device", "sim:titan-x", "--steps", "1",
                 "--plot", "-"]) == 0
    out, _ = capsysbinary.readouterr()
    assert out.startswith(PNG_SIGNATURE)

