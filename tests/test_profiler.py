"""The profiler: analysis of hand-built events against hand-computed figures,
sessions that round-trip and render exactly as the live run did, Chrome traces
whose spans nest per stream and whose counter peaks at the reported peak, the
memory plot, and one clear line with exit code 2 for every bad input."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli

from vmem.cli import ALLOCATIONS
from vmem.profiler import analysis
from vmem.profiler.events import MemoryEvent, Span, StepRecord
from vmem.profiler.facts import facts_lines
from vmem.profiler.output import write_atomic
from vmem.profiler.per_layer import layer_stats, layer_table, update_ms
from vmem.profiler.session import (
    Session,
    SessionError,
    SessionMeta,
    Trial,
    TrialResult,
    load_session,
)
from vmem.profiler.trace import MEMORY_COUNTER, chrome_trace

GIB = 2**30
F, B = "forward", "backward"


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


# -- analysis of a hand-built step ----------------------------------------------------


def hand_built_record() -> StepRecord:
    """Two layers a -> b; a's output (50 B, "data" here) is offloaded during b's
    forward pass and prefetched for b's backward pass, which waits 1 ms for it.

    in use: 180 on [0, 2), 170 on [2, 4), 210 on [4, 8), 190 on [8, 9), 100 on [9, 10)
    """
    def mem(t: float, op: str, n: int, kind: str, label: str, in_use: int, layer: str,
            phase: str) -> MemoryEvent:
        return MemoryEvent(t, op, n, kind, label, in_use, layer, phase)

    memory = (
        mem(0, "alloc", 50, "feature_maps", "data", 150, "a", F),
        mem(0, "alloc", 30, "workspace", "a.workspace", 180, "a", F),
        mem(2, "free", 30, "workspace", "a.workspace", 150, "a", F),
        mem(2, "alloc", 20, "feature_maps", "b", 170, "b", F),
        mem(4, "free", 50, "feature_maps", "data", 120, "b", F),  # offloaded
        mem(4, "alloc", 50, "feature_maps", "data", 170, "b", B),  # prefetched
        mem(4, "alloc", 40, "gradient_maps", "da", 210, "b", B),
        mem(8, "free", 20, "feature_maps", "b", 190, "b", B),
        mem(9, "free", 40, "gradient_maps", "da", 150, "a", B),
        mem(9, "free", 50, "feature_maps", "data", 100, "a", B),
    )
    spans = (
        Span("a", F, "compute", 0, 2),
        Span("a", F, "memory", 2.5, 3.5, "copy_d2h", 50),
        Span("b", F, "compute", 2, 4),
        Span("a", B, "memory", 4, 5, "copy_h2d", 50),
        Span("a", B, "compute", 4, 5, "wait"),
        Span("b", B, "compute", 5, 8),
        Span("a", B, "compute", 8, 9),
        Span("sgd", "update", "compute", 9, 10),
    )
    return StepRecord(0, 10.0, 100, memory, spans, 2.5, (("weights", 60), ("optimizer", 40)))


def test_analysis_of_a_hand_built_step() -> None:
    record = hand_built_record()
    assert analysis.peak_bytes(record) == 210
    # (180·2 + 170·2 + 210·4 + 190·1 + 100·1) / 10
    assert analysis.average_bytes(record) == pytest.approx(183.0)
    at_peak = analysis.bytes_by_kind_at_peak(record)
    assert {k: v for k, v in at_peak.items() if v} == {
        "weights": 60, "optimizer": 40, "feature_maps": 70, "gradient_maps": 40}
    average = analysis.average_bytes_by_kind(record)
    expected = {"weights": 60, "optimizer": 40, "workspace": 6.0,  # 30 B for 2 of 10 ms
                "feature_maps": 57.0,  # (50·2 + 70·2 + 70·4 + 50·1) / 10
                "gradient_maps": 20.0}  # 40 B for 5 of 10 ms
    assert {k: v for k, v in average.items() if v} == pytest.approx(expected)
    assert sum(average.values()) == pytest.approx(analysis.average_bytes(record))
    assert analysis.copied_bytes(record, "copy_d2h") == 50
    assert analysis.copied_bytes(record, "copy_h2d") == 50
    assert analysis.stall_ms(record) == pytest.approx(1.0)
    assert analysis.compute_ms(record) == pytest.approx(9.0)
    assert analysis.time_by_layer(record) == {("a", F): 2, ("b", F): 2, ("b", B): 3,
                                              ("a", B): 1, ("sgd", "update"): 1}
    assert update_ms(record) == pytest.approx(1.0)
    a, b = layer_stats(record)
    assert (a.name, a.forward_ms, a.backward_ms, a.stall_ms) == ("a", 2, 1, 0)
    assert (b.name, b.forward_ms, b.backward_ms, b.stall_ms) == ("b", 2, 3, 1)
    assert (a.forward_allocated_bytes, a.backward_allocated_bytes) == (80, 0)
    assert (b.forward_allocated_bytes, b.backward_allocated_bytes) == (20, 90)
    assert (a.peak_bytes, b.peak_bytes) == (190, 210)  # a's backward starts at 190
    assert (a.after_forward_bytes, b.after_forward_bytes) == (150, 120)
    assert (a.offloaded_bytes, b.offloaded_bytes) == (50, 0)


def test_a_record_without_a_split_counts_the_start_as_other() -> None:
    record = StepRecord(0, 4.0, 100, (MemoryEvent(2, "alloc", 10, "workspace", "w", 110),),
                        ())
    assert analysis.bytes_by_kind_at_peak(record)["other"] == 100
    assert analysis.average_bytes_by_kind(record)["workspace"] == pytest.approx(5.0)


def test_recorded_events_belong_to_kernels_and_add_up() -> None:
    """On a real run every allocation and free belongs to a layer's pass (or
    the update), and the by-kind figures sum to the totals."""
    from vmem.profile import load_profile
    from vmem.trial import TrialSpec, run_trial

    spec = TrialSpec(load_profile("tiny-branch").network, 4, steps=2, device="cpu",
                     policy="vdnn-all")
    result, records = run_trial(spec)
    record = records[-1]
    kernels = {(s.name, s.phase) for s in record.spans if s.kind == "kernel"}
    assert all((e.layer, e.phase) in kernels for e in record.memory)
    assert sum(result.peak_by_kind.values()) == result.peak_bytes
    assert sum(result.average_by_kind.values()) == pytest.approx(result.average_bytes)
    rows = layer_table(records)
    assert [r.name for r in rows] == [s.name for s in record.spans
                                      if s.kind == "kernel" and s.phase == F]
    assert max(r.peak_bytes for r in rows) == analysis.peak_bytes(record)
    assert sum(r.offloaded_bytes for r in rows) <= result.offloaded_bytes
    allocated = sum(e.nbytes for e in record.memory if e.op == "alloc" and e.phase != "update")
    assert allocated == sum(r.forward_allocated_bytes + r.backward_allocated_bytes for r in rows)


# -- sessions ---------------------------------------------------------------------


def hand_built_session() -> Session:
    record = hand_built_record()
    result = TrialResult("hand", 2, "cpu", "none", None, 1, peak_bytes=210,
                         average_bytes=183.0, peak_by_kind={"weights": 60},
                         average_by_kind={"weights": 60.0}, step_ms=10.0, steps_ms=(10.0,),
                         losses=(2.5,), device_facts={"backend": "cpu", "cores": 2})
    meta = SessionMeta("run", "hand", 2, "cpu", ("none",), "liveness", None, 1,
                       {"backend": "cpu", "cores": 2}, "0.1.0", "2026-01-01 00:00:00 UTC",
                       ("run", "hand"))
    return Session(meta, (Trial(result, (record,)),))


def test_session_round_trip(tmp_path: Path) -> None:
    session = hand_built_session()
    path = tmp_path / "s.json"
    session.save(path)
    assert load_session(path) == session
    # host times, which older sessions lack, come back too
    trial = session.trials[0]
    timed = replace(session, trials=(Trial(replace(trial.result, host_ms=4.0),
                                           tuple(replace(r, host_ms=4.5) for r in trial.records)),))
    timed.save(path)
    assert load_session(path) == timed
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == ("vmem-session", 1)
    # a loss that is not a number is written as null, and the file stays strict JSON
    odd = Session(session.meta, (Trial(TrialResult("x", 1, "cpu", "none", None, 1,
                                                   losses=(None,), slowdown=float("nan"))),))
    assert json.loads(odd.dumps(), parse_constant=lambda c: pytest.fail(c))["trials"][0][
        "result"]["slowdown"] is None


def _less_written(live: str, saved: Path) -> str:
    """The live run's output less its last line, which says where the session went
    (the report writes no session)."""
    tables, _, last = live.rstrip("\n").rpartition("\n")
    assert last == (f"wrote the session to {saved}: `vmem report {saved}` prints these "
                    "tables again")
    return tables + "\n"


def test_saved_sessions_render_the_table_the_live_run_printed(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    saved = tmp_path / "run.json"
    code, live, err = run_cli(capsys, "run", "alexnet-tiny", "--device", "cpu", "--steps", "2",
                              "--policy", "vdnn-conv", "--layers", "--save-session", str(saved))
    assert code == 0 and err == ""  # no progress bar where stderr is no terminal
    for fragment in ("vmem run alexnet-tiny", "policy vdnn-conv", "allocation liveness",
                     "device: cpu", "device memory by kind", "per layer", "conv1",
                     "oracular step (none, no limit)"):
        assert fragment in live, fragment
    code, again, _ = run_cli(capsys, "report", str(saved), "--layers")
    assert code == 0 and again == _less_written(live, saved)
    code, live_json, _ = run_cli(capsys, "report", str(saved), "--json")
    assert json.loads(live_json)["policy"] == "vdnn-conv"
    session = load_session(saved)
    assert Session.from_json(json.loads(session.dumps())) == session
    assert session.meta.command == "run" and session.oracle is not None
    assert len(session.trials[0].records) == 2


def test_compare_shows_the_oracle_where_none_does_not_fit(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """VGG-16 at batch 256 needs more than a Titan X's 12 GiB: `none` does not
    fit, the oracle's row shows what it needs, and the report repeats the table."""
    saved = tmp_path / "compare.json"
    code, live, _ = run_cli(capsys, "compare", "vgg16", "--batch", "256", "--device",
                            "sim:titan-x", "--steps", "1", "--policies", "none,vdnn-conv",
                            "--save-session", str(saved))
    assert code == 0
    oracle_row = next(line for line in live.splitlines() if line.startswith("│ oracle "))
    assert "GiB" in oracle_row and "1.000×" in oracle_row
    assert "oracle's: policy none with memory for everything" in live
    session = load_session(saved)
    assert session.trials[0].result.error is not None
    assert session.oracle is not None and session.oracle.result.peak_bytes > 12 * GIB
    code, again, _ = run_cli(capsys, "report", str(saved))
    assert code == 0 and again == _less_written(live, saved)


# -- traces and plots ------------------------------------------------------------------


def assert_spans_nest(events: list[dict]) -> None:
    """Per (pid, tid) track, complete events are disjoint or nested."""
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in events:
        if event["ph"] == "X":
            assert event["dur"] >= 0
            tracks[(event["pid"], event["tid"])].append((event["ts"],
                                                         event["ts"] + event["dur"]))
    eps = 1e-3  # µs, rounding
    for spans in tracks.values():
        stack: list[float] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
            while stack and stack[-1] <= start + eps:
                stack.pop()
            assert not stack or end <= stack[-1] + eps, (start, end, stack[-1])
            stack.append(end)


def counter_peaks(events: list[dict]) -> dict[int, int]:
    peaks: dict[int, int] = defaultdict(int)
    for event in events:
        if event["ph"] == "C" and event["name"] == MEMORY_COUNTER:
            peaks[event["pid"]] = max(peaks[event["pid"]], event["args"]["in use"])
    return dict(peaks)


def test_trace_of_a_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "run.trace.json"
    code, out, _ = run_cli(capsys, "run", "tiny-branch", "--device", "cpu", "--steps", "2",
                           "--batch", "4", "--policy", "vdnn-all", "--json", "--layers",
                           "--trace", str(trace))
    assert code == 0
    result = json.loads(out)
    assert [row["name"] for row in result["layers"]][:2] == ["conv1", "relu1"]
    events = json.loads(trace.read_text())["traceEvents"]
    assert_spans_nest(events)
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {1: "vdnn-all", 2: "oracle (none, no limit)"}
    assert counter_peaks(events)[1] == result["peak_bytes"]
    names = {(e["tid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert names == {(1, "compute stream"), (2, "memory stream")}
    spans = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
    assert {e["tid"] for e in spans} == {1, 2}  # vdnn-all copies on the memory stream
    copied = sum(e["args"].get("bytes", 0) for e in spans
                 if e["cat"] == "copy_d2h" and e["args"]["step"] == 2)
    assert copied == result["offloaded_bytes"] > 0
    step_two = [e["ts"] for e in spans if e["args"]["step"] == 2]
    assert min(step_two) >= max(e["ts"] + e["dur"] for e in spans if e["args"]["step"] == 1)


def test_trace_and_plot_of_a_comparison(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    trace, plot = tmp_path / "c.json", tmp_path / "c.png"
    code, out, _ = run_cli(capsys, "compare", "alexnet", "--device", "sim:titan-x",
                           "--steps", "2", "--json", "--trace", str(trace), "--plot", str(plot))
    assert code == 0
    rows = json.loads(out)
    events = json.loads(trace.read_text())["traceEvents"]
    assert_spans_nest(events)
    processes = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    peaks = counter_peaks(events)
    for row in rows:
        pid = next(p for p, name in processes.items() if name == row["policy"])
        assert peaks[pid] == row["peak_bytes"]
    assert "oracle (none, no limit)" in processes.values()
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(os.listdir(tmp_path)) == ["c.json", "c.png"]  # no temporary file left


def test_trace_of_a_hand_built_session_nests_and_peaks() -> None:
    session = hand_built_session()
    events = chrome_trace(session)["traceEvents"]
    assert_spans_nest(events)
    assert counter_peaks(events) == {1: 210}


# -- options and device facts ---------------------------------------------------------


def test_allocation_mode(capsys: pytest.CaptureFixture[str]) -> None:
    from vmem.executor import ALLOCATIONS as EXECUTOR_ALLOCATIONS

    assert ALLOCATIONS == EXECUTOR_ALLOCATIONS
    peaks = {}
    for mode in ALLOCATIONS:
        code, out, _ = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1",
                               "--allocation", mode, "--json")
        assert code == 0
        peaks[mode] = json.loads(out)["peak_bytes"]
        assert json.loads(out)["allocation"] == mode
    assert peaks["network-wide"] > peaks["liveness"]
    code, out, _ = run_cli(capsys, "plan", "digits", "--device", "cpu", "--policy", "none",
                           "--allocation", "network-wide", "--json")
    assert code == 0 and json.loads(out)["peak_bytes"] == peaks["network-wide"]
    code, out, _ = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1",
                           "--allocation", "network-wide")
    assert code == 0 and "allocation network-wide" in out
    code, _, err = run_cli(capsys, "run", "digits", "--allocation", "torch")
    assert_one_line_error(code, err, "--allocation", "liveness", "network-wide")


def test_device_facts_lines() -> None:
    cuda = {"backend": "cuda:0", "device": "NVIDIA H100 80GB HBM3", "nvml_driver": "550.54",
            "total_memory_bytes": 80 * GIB, "memory_used_bytes": 3 * GIB,
            "pcie_generation": 5, "pcie_width": 16, "cupy": "14.0.0"}
    (line,) = facts_lines(cuda)
    for fragment in ("cuda:0", "H100", "driver 550.54", "80.00 GiB total",
                     "3.00 GiB used (NVML)", "PCIe gen5 ×16"):
        assert fragment in line
    assert "kernels" not in line
    (line,) = facts_lines({**cuda, "cuda_kernels": ["im2col", "pooling"]})
    assert line.endswith("vmem CUDA kernels: im2col, pooling")
    (line,) = facts_lines({**cuda, "cuda_kernels": []})
    assert line.endswith("vmem CUDA kernels: none")
    no_nvml = {"backend": "cuda:0", "device": "GPU", "cuda_driver": "12.4",
               "nvml": "unavailable: pynvml is not installed (pip install nvidia-ml-py)"}
    line, nvml = facts_lines(no_nvml)
    assert "driver 12.4" in line and "NVML unavailable: pynvml is not installed" in nvml
    assert facts_lines({"backend": "cpu", "cores": 2}) == ["device: cpu · 2 cores"]


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "fragments"), [
    ("{not json", ["not JSON", "line 1"]),
    ("[1, 2]", ["not a vmem session", "format"]),
    ('{"format": "something-else", "version": 1}', ["not a vmem session"]),
    ('{"format": "vmem-session", "version": 99}', ["version 99"]),
    ('{"format": "vmem-session", "version": 1, "trials": []}', ["missing 'meta'"]),
])
def test_a_file_that_is_not_a_session(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      content: str, fragments: list[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run_cli(capsys, "report", str(path))
    assert_one_line_error(code, err, "bad.json", *fragments)
    assert out == ""


def test_a_session_with_a_wrong_field(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    data = hand_built_session().to_json()
    data["trials"][0]["records"][0]["memory"][3]["in_use"] = "lots"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "report", str(path))
    assert_one_line_error(code, err, "wrong.json", "trials[0].records[0].memory[3].in_use")
    data = hand_built_session().to_json()
    data["meta"]["command"] = "calibrate"
    path.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "report", str(path))
    assert_one_line_error(code, err, "wrong.json", "meta.command", "run, compare")
    with pytest.raises(SessionError, match="cannot read"):
        load_session(tmp_path / "absent.json")


def test_unwritable_outputs_are_refused_before_the_run(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [("--trace", tmp_path / "missing" / "t.json", "does not exist"),
             ("--save-session", afile / "s.json", "not a directory"),
             ("--plot", tmp_path, "is a directory")]
    for flag, path, reason in cases:
        code, out, err = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1",
                                 flag, str(path))
        assert_one_line_error(code, err, flag, str(path), reason)
        assert out == ""
    code, _, err = run_cli(capsys, "report", str(afile), "--trace",
                           str(tmp_path / "no" / "t.json"))
    assert_one_line_error(code, err, "--trace", "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from vmem.errors import UsageError

    target = tmp_path / "out.json"
    target.write_text("old")

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(UsageError, match="--trace: cannot write .* No space left"):
        write_atomic(target, "new", "--trace")
    assert sorted(os.listdir(tmp_path)) == ["out.json"] and target.read_text() == "old"


def test_plot_without_matplotlib_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, out, err = run_cli(capsys, "run", "digits", "--device", "cpu", "--steps", "1",
                             "--plot", str(tmp_path / "m.png"))
    assert_one_line_error(code, err, "--plot", "matplotlib", "vmem-dnn[plot]")
    assert out == "" and not (tmp_path / "m.png").exists()


def test_a_session_whose_parts_do_not_agree(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    """Fields each of the right type but not of one run: refused in one line,
    not a traceback from the renderer."""
    path = tmp_path / "odd.json"
    data = hand_built_session().to_json()
    data["trials"][0]["result"]["steps_ms"] = [10.0, 11.0]  # one loss, two step times
    path.write_text(json.dumps(data))
    for extra in ([], ["--layers"], ["--json"]):
        code, out, err = run_cli(capsys, "report", str(path), *extra)
        assert_one_line_error(code, err, "odd.json", "trials[0].result", "1 losses",
                              "2 step times")
        assert out == ""
    data = hand_built_session().to_json()
    data["trials"].append(data["trials"][0])
    path.write_text(json.dumps(data))
    code, _, err = run_cli(capsys, "report", str(path))
    assert_one_line_error(code, err, "odd.json", "a run holds one trial", "has 2")


def test_the_network_inputs_offload_is_in_the_layer_table(
        capsys: pytest.CaptureFixture[str]) -> None:
    """tiny-branch under vdnn-dyn at 100 KiB offloads the inputs of its
    convolutions: data (4 x 3 x 8 x 8 floats = 3072 B), relu1 and cat (4 x 8 x 8
    x 8 floats = 8192 B each). No layer's row holds data's, so it is named apart,
    and the rows with it add up to the step's offloaded bytes."""
    argv = ["run", "tiny-branch", "--device", "sim:titan-x", "--memory-limit", "100KiB",
            "--policy", "vdnn-dyn", "--steps", "2", "--layers"]
    code, out, _ = run_cli(capsys, *argv, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["offloaded_outside_layers"] == {"data": 3072}
    by_layer = {row["name"]: row["offloaded_bytes"] for row in result["layers"]
                if row["offloaded_bytes"]}
    assert by_layer == {"relu1": 8192, "cat": 8192}
    assert result["offloaded_bytes"] == 3072 + 8192 + 8192
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "offloaded besides the layers' outputs: data 3.00 KiB" in " ".join(
        out.split())


def test_host_time_leaves_out_the_hosts_waits_for_the_device(monkeypatch) -> None:
    """host_ms: from the step's start to its last issued work, less the time inside
    `waiting()` (on a fake clock, so the figure is exact)."""
    from vmem.backends.sim import SimBackend
    from vmem.profiler import recorder as recorder_module

    clock = iter([0.0, 1.0, 4.0, 10.0])  # start; waiting from 1 to 4; issued at 10
    monkeypatch.setattr(recorder_module.time, "perf_counter", lambda: next(clock))
    recorder = recorder_module.StepRecorder(SimBackend(None))
    with recorder.waiting():
        pass
    recorder.issued()
    assert recorder.finish(0, None).host_ms == pytest.approx(7000.0)


def test_recomputed_bytes_are_the_recomputed_maps_hand_counted() -> None:
    """What the backward pass computed again: the recomputed maps' bytes from their
    shapes and what their layers save (dropout's masks), under none and under
    vdnn-all (where pool1's input comes back from the host for its recomputation:
    that prefetch is not counted as recomputed)."""
    from networks import recomputing
    from test_budget import train_plan
    from test_recompute import base_plans

    from vmem.layers.base import numel
    from vmem.plan import recomputed_tensors
    from vmem.profile import load_profile
    from vmem.profiler.analysis import copied_bytes, recomputed_bytes

    network = load_profile("vgg16-tiny").network
    shapes = network.shapes(4)
    for base in base_plans(network):
        assert recomputed_bytes(train_plan(network, base, steps=1)[2]) == 0
        plan = recomputing(network, base)
        chosen = recomputed_tensors(network, plan, 4)
        record = train_plan(network, plan, steps=1)[2]
        nodes = [network.nodes[network.index[name]] for name in chosen]
        saved = sum(node.layer.saved_bytes(network.in_shapes(node, shapes), 4) for node in nodes)
        assert saved > 0  # drop6's and drop7's masks
        assert recomputed_bytes(record) == sum(numel(shapes[n]) * 4 for n in chosen) + saved
        if base.policy == "vdnn-all":
            assert copied_bytes(record, "copy_h2d") > 0
