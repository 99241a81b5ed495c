"""`vmem compare` runs its trials one after another or in turn (the default on
the cpu). In turn: a step of each trial a round, each round starting one trial
further on; the same figures as one after another but for time; and, on a fake
clock with a burst of load from elsewhere, two trials of the same work come out
equal where one after another makes one of them look slower. Whether a slowdown
is within the noise is decided from the steps' ranges (fake step times)."""

from __future__ import annotations

import io
import json
import statistics

import pytest
from cli_helpers import run_cli
from rich.console import Console

from vmem.comparison import ORACLE, run_trials
from vmem.errors import OutOfDeviceMemory
from vmem.profile import load_profile
from vmem.profiler.noise import within_noise
from vmem.profiler.render import render
from vmem.profiler.session import Session, SessionMeta, Trial, TrialResult
from vmem.trial import TrialSpec


class _Progress:
    def __init__(self) -> None:
        self.steps = 0

    def describe(self, text: str) -> None:
        pass

    def step(self) -> None:
        self.steps += 1

    def skip(self, steps: int) -> None:
        self.steps += steps


class _Clock:
    """A fake machine: each step takes `step_ms`, `slow` times as long while a
    burst of load from elsewhere lasts (steps numbered from 0 across all trials)."""

    def __init__(self, step_ms: float, burst: range, slow: float) -> None:
        self.step_ms, self.burst, self.slow = step_ms, burst, slow
        self.taken: list[str] = []

    def step(self, key: str) -> float:
        n = len(self.taken)
        self.taken.append(key)
        return self.step_ms * (self.slow if n in self.burst else 1.0)


class _FakeRun:
    """A trial whose steps take the fake clock's time; `fail_at` raises there."""

    def __init__(self, spec: TrialSpec, clock: _Clock, fail_at: int | None = None) -> None:
        self.spec, self.clock, self.fail_at = spec, clock, fail_at
        self.records: list[float] = []
        self.closed = False

    @property
    def key(self) -> str:
        return ORACLE if self.spec.oracular else self.spec.policy

    def __enter__(self) -> _FakeRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True

    @property
    def done(self) -> bool:
        return len(self.records) >= self.spec.steps

    def step(self) -> None:
        if self.fail_at == len(self.records):
            raise OutOfDeviceMemory(requested=1, in_use=0, capacity=0, what="fake")
        self.records.append(self.clock.step(self.key))

    def result(self) -> TrialResult:
        timed = self.records[1:]
        return TrialResult("fake", 1, "cpu", self.spec.policy, self.spec.memory_limit,
                           len(self.records), step_ms=statistics.median(timed),
                           steps_ms=tuple(self.records))


def _base(steps: int, limit: int | None = None) -> TrialSpec:
    return TrialSpec(load_profile("digits").network, 4, steps, "cpu", "none",
                     memory_limit=limit)


def test_in_turn_each_round_starts_one_trial_further_on() -> None:
    clock = _Clock(10.0, range(0), 1.0)
    runs: list[_FakeRun] = []

    def opened(spec: TrialSpec) -> _FakeRun:
        runs.append(_FakeRun(spec, clock))
        return runs[-1]

    progress = _Progress()
    ran = run_trials(_base(3), ["none", "vdnn-all", "budget"], progress, True, opened)
    assert clock.taken == ["none", "vdnn-all", "budget", "vdnn-all", "budget", "none",
                           "budget", "none", "vdnn-all"]
    assert progress.steps == 3 * 4  # none's steps count for the oracle's too
    assert all(run.closed for run in runs)
    assert ran.oracle is not None and ran.oracle.result.policy == "none"
    clock.taken.clear()
    run_trials(_base(2, limit=2**30), ["vdnn-all", "budget"], _Progress(), True, opened)
    assert clock.taken == [ORACLE, "vdnn-all", "budget", "vdnn-all", "budget", ORACLE]


def test_a_trial_that_fails_leaves_the_rounds_and_says_why() -> None:
    clock = _Clock(10.0, range(0), 1.0)
    runs: list[_FakeRun] = []

    def opened(spec: TrialSpec) -> _FakeRun:
        runs.append(_FakeRun(spec, clock, fail_at=1 if spec.policy == "vdnn-all" else None))
        return runs[-1]

    progress = _Progress()
    ran = run_trials(_base(3), ["none", "vdnn-all", "budget"], progress, True, opened)
    assert isinstance(ran.outcomes["vdnn-all"], OutOfDeviceMemory)
    assert clock.taken.count("vdnn-all") == 1 and clock.taken.count("budget") == 3
    assert progress.steps == 3 * 4 and all(run.closed for run in runs)


@pytest.mark.parametrize("in_turn", [False, True])
def test_a_burst_of_load_falls_on_both_trials_only_in_turn(in_turn: bool) -> None:
    """Two trials of the same work, the oracle's and none's under a limit, and a
    burst over steps 2 to 5 of the eight: one after another, it lands on two of the
    oracle's three timed steps and one of none's (none looks 3x faster); in turn,
    on two of each (equal medians)."""
    clock = _Clock(10.0, range(2, 6), 3.0)
    ran = run_trials(_base(4, limit=2**30), ["none"], _Progress(), in_turn,
                     lambda spec: _FakeRun(spec, clock))
    mine = ran.outcomes["none"]
    assert ran.oracle is not None and not isinstance(mine, Exception)
    ratio = mine[0].step_ms / ran.oracle.result.step_ms
    assert ratio == (1.0 if in_turn else 1 / 3)


def _result(policy: str, steps_ms: tuple[float, ...], slowdown: float | None
            ) -> TrialResult:
    return TrialResult("fake", 4, "cpu", policy, None, len(steps_ms), peak_bytes=1024,
                       average_bytes=512.0, step_ms=statistics.median(steps_ms[1:]),
                       steps_ms=steps_ms, offloaded_bytes=0, prefetched_bytes=0,
                       recomputed_bytes=0, stall_ms=0.0, slowdown=slowdown)


def test_within_the_noise_where_the_ranges_overlap() -> None:
    oracle = _result("none", (50.0, 10.0, 11.0, 12.0), 1.0)
    overlapping = _result("vdnn-all", (50.0, 9.5, 10.5, 11.5), 10.5 / 11.0)
    apart = _result("vdnn-conv", (50.0, 13.0, 14.0, 15.0), 14.0 / 11.0)
    touching = _result("budget", (50.0, 12.0, 12.5, 13.0), 12.5 / 11.0)
    assert within_noise(overlapping, oracle) and within_noise(touching, oracle)
    assert not within_noise(apart, oracle) and not within_noise(oracle, oracle)
    exact = _result("none", (5.0, 10.0, 10.0), 1.0)  # a modeled clock: no spread
    assert not within_noise(_result("x", (5.0, 10.5, 10.5), 1.05), exact)
    meta = SessionMeta("compare", "fake", 4, "cpu", ("none", "vdnn-all", "vdnn-conv"),
                       "liveness", None, 4, {"backend": "cpu"}, "0", "now")
    session = Session(meta, tuple(Trial(r) for r in (oracle, overlapping, apart)),
                      Trial(oracle))
    out = io.StringIO()
    render(session, Console(file=out, width=120, no_color=True))
    rows: dict[str, str] = {}
    for line in out.getvalue().splitlines():
        if line.startswith("│"):
            label = line.split("│")[1].strip()
            rows[label] = rows.get(label, "") + line
    assert "0.955×≈" in rows["vdnn-all"] and "9.5–11.5 ms" in rows["vdnn-all"]
    assert "1.273× " in rows["vdnn-conv"] and "≈" not in rows["vdnn-conv"]
    assert "≈: within the noise" in out.getvalue()


def test_in_turn_trains_as_one_after_another_does(capsys: pytest.CaptureFixture[str]) -> None:
    """On the cpu, in turn (the default) and --one-after-another: the same losses,
    peaks and bytes moved for every policy (only times differ); the session says
    which it was."""
    argv = ["compare", "alexnet-tiny", "--device", "cpu", "--steps", "2", "--memory-limit",
            "4MiB", "--json"]
    figures = []
    for extra in ([], ["--one-after-another"]):
        code, out, err = run_cli(capsys, *argv, *extra)
        assert code == 0, err
        figures.append([(row["policy"], row["oracular"], row["losses"], row["peak_bytes"],
                         row["offloaded_bytes"], row["prefetched_bytes"], row["error"])
                        for row in json.loads(out)])
    assert figures[0] == figures[1]
    assert [policy for policy, *_ in figures[0]] == ["none", "vdnn-all", "vdnn-conv",
                                                    "vdnn-dyn", "budget", "none"]
