"""How far a trial's timed steps spread, and whether its difference from the
oracular step is within that spread: on a CPU shared with other work, two
policies a few percent apart can swap places from one run to the next (offloading
"faster than the oracle"), and a report says so rather than print the ratio bare.

A difference is within the noise where the two trials' ranges of step times
(fastest to slowest timed step) overlap: then some step of the one was as fast
as some step of the other, and the medians' order is not a measured fact. A
backend that models time (`sim`) has no spread, and two equal steps are no
difference at all."""

from __future__ import annotations

from vmem.profiler.session import TrialResult

# steps closer than this (relative) are the same time: a modeled clock's rounding
SAME_TIME = 1e-9


def timed_steps(result: TrialResult) -> tuple[float, ...]:
    """The steps' times the median is taken over: all but the first, a warm-up,
    unless it is the only step."""
    return result.steps_ms[1:] or result.steps_ms


def step_range(result: TrialResult) -> tuple[float, float] | None:
    """(fastest, slowest) timed step in ms; None where no step ran."""
    steps = timed_steps(result)
    return (min(steps), max(steps)) if steps else None


def _spreads(bounds: tuple[float, float] | None) -> bool:
    return bounds is not None and bounds[1] - bounds[0] > SAME_TIME * abs(bounds[1])


def spread(results: list[TrialResult]) -> bool:
    """Whether any of these trials' timed steps differ (a measured clock, not a
    modeled one)."""
    return any(_spreads(step_range(r)) for r in results)


def within_noise(result: TrialResult, oracle: TrialResult | None) -> bool:
    """Whether `result`'s step differs from the oracle's by less than their spread
    (their ranges overlap) though the medians differ; False where either did not
    run or the oracle is `result` itself."""
    if oracle is None or result == oracle or result.step_ms is None:
        return False
    mine, theirs = step_range(result), step_range(oracle)
    if mine is None or theirs is None or result.step_ms == oracle.step_ms:
        return False
    if not (_spreads(mine) or _spreads(theirs)):
        return False  # two exact times: their difference is the whole of it
    return mine[0] <= theirs[1] and theirs[0] <= mine[1]
