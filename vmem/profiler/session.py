"""A session: what one `vmem run` or `vmem compare` measured (the trials'
results and every step's events) and under what (command, profile, batch,
device and its facts, policies, allocation, memory limit, vmem version, date).
It round-trips through JSON, so `vmem report FILE` renders it again without
rerunning anything."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from vmem.errors import VmemError
from vmem.files import parse_json, read_text
from vmem.profiler.events import StepRecord
from vmem.profiler.output import write_atomic
from vmem.profiler.peak import PeakContents
from vmem.schema import ByteAverage, Bytes, Count, Millis, Positive, SchemaError, build

FORMAT = "vmem-session"
VERSION = 1
COMMANDS = ("run", "compare")  # the commands that save sessions


class SessionError(VmemError):
    """A file that is not a vmem session: names the file and what is wrong."""


@dataclass(frozen=True)
class TrialResult:
    """One policy's trial, summarized (what `vmem run --json` prints)."""

    profile: str
    batch: Count  # 0 in the row of a policy that could not train without a batch given
    device: str
    policy: str
    memory_limit_bytes: Bytes | None
    steps: Count
    allocation: str = "liveness"
    optimizer: str = "sgd"
    lr: Positive | None = None  # the optimizer's learning rate (None in older sessions)
    peak_bytes: Bytes | None = None
    average_bytes: ByteAverage | None = None
    peak_by_kind: dict[str, Bytes] | None = None  # device bytes by kind at the peak
    average_by_kind: dict[str, ByteAverage] | None = None  # time-averaged, by kind
    # the instant of the peak and the tensors on the device then (None in sessions
    # saved before vmem recorded them, and where the trial did not run)
    at_peak: PeakContents | None = None
    step_ms: Millis | None = None
    steps_ms: tuple[Millis, ...] = ()
    host_ms: Millis | None = None  # median host time to issue a step (StepRecord.host_ms)
    losses: tuple[float | None, ...] = ()  # None where no loss is computed (sim) or finite
    offloaded_bytes: Bytes | None = None
    prefetched_bytes: Bytes | None = None
    # feature maps and saved state dropped after the forward pass and computed again
    recomputed_bytes: Bytes | None = None
    stall_ms: Millis | None = None
    pinned_bytes: Bytes | None = None
    slowdown: Positive | None = None
    oracle: str | None = None  # how the oracular step time was obtained
    pool_reserved_bytes: Bytes | None = None  # the array library's pool, at the end
    pool_peak_bytes: Bytes | None = None  # the pool's peak, beside the arena's (peak_bytes)
    device_facts: dict[str, Any] | None = None
    error: str | None = None  # why this policy could not train, if it could not

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps_ms"], data["losses"] = list(self.steps_ms), list(self.losses)
        return data


@dataclass(frozen=True)
class Trial:
    result: TrialResult
    records: tuple[StepRecord, ...] = ()  # every step, the warm-up first


@dataclass(frozen=True)
class SessionMeta:
    command: str  # "run" | "compare"
    profile: str
    batch: Count | None
    device: str  # the backend's name ("cpu", "cuda:0", "sim:titan-x")
    policies: tuple[str, ...]
    allocation: str
    memory_limit_bytes: Bytes | None
    steps: Count
    device_facts: dict[str, Any]
    vmem_version: str
    created: str  # ISO 8601, UTC
    argv: tuple[str, ...] = ()
    optimizer: str = "sgd"
    in_turn: bool = False  # compare: the policies' steps taken in turn (vmem.comparison)


@dataclass(frozen=True)
class Session:
    meta: SessionMeta
    trials: tuple[Trial, ...]
    # policy none with memory for everything, where it was run apart from the trials
    oracle: Trial | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **finite_json(asdict(self))}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), allow_nan=False, separators=(",", ":"))

    def save(self, path: str | os.PathLike[str], flag: str = "--save-session", *,
             stdout: bool = False) -> None:
        """Write the session whole (vmem.profiler.output); '-' is standard output
        where `stdout` accepts it."""
        write_atomic(path, self.dumps() + "\n", flag, stdout=stdout)

    @classmethod
    def from_json(cls, data: Any, source: str = "session") -> Session:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SessionError(f"{source}: not a vmem session (no \"format\": \"{FORMAT}\" "
                               "marker)")
        version = data.get("version")
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise SessionError(f"{source}: session format version {version!r}; this vmem "
                               f"reads version {VERSION}")
        try:
            session = build(cls, data)
        except SchemaError as exc:
            raise SessionError(f"{source}: not a valid vmem session: {exc}") from None
        if session.meta.command not in COMMANDS:
            raise SessionError(f"{source}: not a valid vmem session: 'meta.command' is "
                               f"{session.meta.command!r}; expected one of "
                               f"{', '.join(COMMANDS)}")
        if not session.trials:
            raise SessionError(f"{source}: not a valid vmem session: 'trials' is empty")
        if session.meta.command == "run" and len(session.trials) != 1:
            raise SessionError(f"{source}: not a valid vmem session: a run holds one trial, "
                               f"'trials' has {len(session.trials)}")
        named = [(f"trials[{i}]", t) for i, t in enumerate(session.trials)]
        for where, trial in [*named, *([("oracle", session.oracle)] if session.oracle else [])]:
            result = trial.result
            peak = result.at_peak
            if peak is not None and sum(t.nbytes for t in peak.tensors) != peak.peak_bytes:
                raise SessionError(f"{source}: not a valid vmem session: "
                                   f"'{where}.result.at_peak' has tensors of "
                                   f"{sum(t.nbytes for t in peak.tensors):,} bytes at a peak "
                                   f"of {peak.peak_bytes:,}; they sum to the peak")
            if len(result.losses) != len(result.steps_ms):
                raise SessionError(f"{source}: not a valid vmem session: '{where}.result' has "
                                   f"{len(result.losses)} losses for {len(result.steps_ms)} "
                                   "step times; a step has one of each")
        return session


def load_session(path: str | os.PathLike[str]) -> Session:
    """Read a session file (at most vmem.files.MAX_FILE_BYTES); a SessionError
    names the file and what is wrong."""
    text = read_text(path, f"{path}: cannot read the session", SessionError)
    try:
        data = parse_json(text, f"{path}: not a vmem session", SessionError)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path}: not a vmem session: not JSON ({exc.msg} at line "
                           f"{exc.lineno}, column {exc.colno})") from None
    return Session.from_json(data, str(path))


# -- decoding with checks ------------------------------------------------------


def finite_json(value: Any) -> Any:
    """JSON has no NaN or infinity: such a float is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value
