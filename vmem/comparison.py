"""The trials of `vmem compare`: each policy's, and the oracle's (policy none, no
memory limit) where no policy's trial is that run, either one after another or in
turn, a step of each trial at a time.

In turn is the default on the cpu, whose clock is a shared machine's: a moment of
load from elsewhere then falls on every policy's steps alike, not on whichever
policy ran at that moment, so two policies' ratio is steadier (measured:
bench/results/interleave-2026-12-02.md). It holds every trial's runtime (weights, optimizer
state, data) at once. On a sim GPU time is modeled and exact, and on a real GPU
every trial would hold device memory at once: there, one after another."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vmem.backends import resolve_device
from vmem.errors import MemoryLimitTooSmall, OutOfDeviceMemory, VmemError
from vmem.profiler.events import StepRecord
from vmem.profiler.session import Trial, TrialResult
from vmem.trial import TrialRun, TrialSpec

ORACLE = "(oracle)"  # the oracle's key beside the policies' (no policy's name has brackets)
ORACLE_LABEL = "oracle (none, no limit)"

Outcome = tuple[TrialResult, list[StepRecord]] | VmemError
Opener = Callable[[TrialSpec], TrialRun]


@dataclass(frozen=True)
class Ran:
    """Each policy's outcome (its result and records, or why it could not train),
    and the oracle's trial (None where it could not run: a real GPU too small)."""

    outcomes: dict[str, Outcome]
    oracle: Trial | None


def in_turn_by_default(spec: TrialSpec) -> bool:
    return resolve_device(spec.device) == "cpu"


def run_trials(base: TrialSpec, policies: list[str], progress: Any, in_turn: bool,
               opened: Opener = TrialRun) -> Ran:
    """Every policy's trial and the oracle's. `progress` hears of each step (a
    StepProgress over `base.steps * (len(policies) + 1)`); `opened` opens a trial
    (a test's fake)."""
    none_is_oracle = base.memory_limit is None and "none" in policies
    # none first where it is the oracle itself, else the oracle's own trial
    keys = (["none", *(p for p in policies if p != "none")] if none_is_oracle else
            [ORACLE, *policies])
    specs = {key: _oracle_spec(base) if key == ORACLE else replace(base, policy=key)
             for key in keys}
    outcomes = (_in_turn if in_turn else _one_after_another)(specs, base, progress, opened)
    oracle = _trial(outcomes["none"] if none_is_oracle else outcomes.pop(ORACLE))
    if none_is_oracle:
        if oracle is None:  # none could not train within the device: the oracle apart
            oracle = _trial(_whole(ORACLE, _oracle_spec(base), base, progress, opened))
        else:
            progress.skip(base.steps)  # the oracle's steps were none's
    return Ran({policy: outcome for policy, outcome in outcomes.items()
                if outcome is not None}, oracle)


def _oracle_spec(base: TrialSpec) -> TrialSpec:
    return replace(base, policy="none", memory_limit=None, host_memory_limit=None,
                   oracular=True)


def _label(key: str) -> str:
    return ORACLE_LABEL if key == ORACLE else f"policy {key}"


def _kept(exc: VmemError, base: TrialSpec, key: str) -> VmemError | None:
    """A failure a row shows (returned), or one that ends the comparison (raised):
    a limit given that no policy can meet is refused, as `vmem run` refuses it; a
    policy that cannot fit the device's own memory says so in its row, and the
    oracle, with memory for everything, still runs (the vDNN paper's baseline is
    measured that way); an oracle too big for a real GPU is no oracle (None)."""
    if key == ORACLE:
        if isinstance(exc, OutOfDeviceMemory):
            return None
        raise exc
    if isinstance(exc, MemoryLimitTooSmall) and base.memory_limit is not None:
        raise exc
    return exc


def _trial(outcome: Outcome | None) -> Trial | None:
    if outcome is None or isinstance(outcome, VmemError):
        return None
    result, records = outcome
    return Trial(result, tuple(records))


def _whole(key: str, spec: TrialSpec, base: TrialSpec, progress: Any, opened: Opener
           ) -> Outcome | None:
    """One trial's steps in one go."""
    progress.describe(_label(key))
    taken = 0
    try:
        with opened(spec) as run:
            while not run.done:
                run.step()
                taken += 1
                progress.step()
            return run.result(), run.records
    except VmemError as exc:
        progress.skip(spec.steps - taken)
        return _kept(exc, base, key)


def _one_after_another(specs: dict[str, TrialSpec], base: TrialSpec, progress: Any,
                       opened: Opener) -> dict[str, Outcome | None]:
    return {key: _whole(key, spec, base, progress, opened) for key, spec in specs.items()}


def _in_turn(specs: dict[str, TrialSpec], base: TrialSpec, progress: Any, opened: Opener
             ) -> dict[str, Outcome | None]:
    """A step of each trial in turn, round after round, each round starting one
    trial further on (no trial always steps first, or always right after the same
    other); a trial that fails leaves the rounds, its row saying why."""
    outcomes: dict[str, Outcome | None] = {}
    runs: dict[str, TrialRun] = {}
    try:
        for key, spec in specs.items():
            try:
                runs[key] = opened(spec)
            except VmemError as exc:
                outcomes[key] = _kept(exc, base, key)
                progress.skip(spec.steps)
        turn = 0
        while runs:
            keys = list(runs)
            start = turn % len(keys)
            for key in keys[start:] + keys[:start]:
                run = runs[key]
                progress.describe(f"in turn: {_label(key)}")
                try:
                    run.step()
                except VmemError as exc:
                    progress.skip(run.spec.steps - len(run.records))
                    runs.pop(key).close()
                    outcomes[key] = _kept(exc, base, key)
                    continue
                progress.step()
                if run.done:
                    outcomes[key] = (run.result(), run.records)
                    runs.pop(key).close()
            turn += 1
    finally:
        for run in runs.values():
            run.close()
    return {key: outcomes[key] for key in specs}  # in the order of the specs
