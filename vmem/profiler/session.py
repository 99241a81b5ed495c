"""A session: what one `vmem run` or `vmem compare` measured (the trials'
results and every step's events) and under what (command, profile, batch,
device and its facts, policies, allocation, memory limit, vmem version, date).
It round-trips through JSON, so `vmem report FILE` renders it again without
rerunning anything."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
from dataclasses import asdict, dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from vmem.errors import VmemError
from vmem.profiler.events import StepRecord
from vmem.profiler.output import write_atomic

FORMAT = "vmem-session"
VERSION = 1
COMMANDS = ("run", "compare")  # the commands that save sessions


class SessionError(VmemError):
    """A file that is not a vmem session: names the file and what is wrong."""


@dataclass(frozen=True)
class TrialResult:
    """One policy's trial, summarized (what `vmem run --json` prints)."""

    profile: str
    batch: int
    device: str
    policy: str
    memory_limit_bytes: int | None
    steps: int
    allocation: str = "liveness"
    optimizer: str = "sgd"
    peak_bytes: int | None = None
    average_bytes: float | None = None
    peak_by_kind: dict[str, int] | None = None  # device bytes by kind at the peak
    average_by_kind: dict[str, float] | None = None  # time-averaged, by kind
    step_ms: float | None = None
    steps_ms: tuple[float, ...] = ()
    host_ms: float | None = None  # median host time to issue a step (StepRecord.host_ms)
    losses: tuple[float | None, ...] = ()  # None where no loss is computed (sim) or finite
    offloaded_bytes: int | None = None
    prefetched_bytes: int | None = None
    stall_ms: float | None = None
    pinned_bytes: int | None = None
    slowdown: float | None = None
    oracle: str | None = None  # how the oracular step time was obtained
    pool_reserved_bytes: int | None = None
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
    batch: int | None
    device: str  # the backend's name ("cpu", "cuda:0", "sim:titan-x")
    policies: tuple[str, ...]
    allocation: str
    memory_limit_bytes: int | None
    steps: int
    device_facts: dict[str, Any]
    vmem_version: str
    created: str  # ISO 8601, UTC
    argv: tuple[str, ...] = ()
    optimizer: str = "sgd"


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
            session = _build(cls, data, "")
        except _Mismatch as exc:
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
            if len(result.losses) != len(result.steps_ms):
                raise SessionError(f"{source}: not a valid vmem session: '{where}.result' has "
                                   f"{len(result.losses)} losses for {len(result.steps_ms)} "
                                   "step times; a step has one of each")
        return session


def load_session(path: str | os.PathLike[str]) -> Session:
    """Read a session file; a SessionError names the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SessionError(f"{path}: cannot read the session: {reason}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path}: not a vmem session: not JSON ({exc.msg} at line "
                           f"{exc.lineno}, column {exc.colno})") from None
    return Session.from_json(data, str(path))


# -- decoding with checks ------------------------------------------------------


class _Mismatch(Exception):
    pass


def finite_json(value: Any) -> Any:
    """JSON has no NaN or infinity: such a float is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise _Mismatch(f"'{where or '.'}' should be an object")
    hints = get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        path = f"{where}.{field.name}".lstrip(".")
        if field.name in data:
            kwargs[field.name] = _decode(data[field.name], hints[field.name], path)
        elif (field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING):
            raise _Mismatch(f"missing '{path}'")
    return cls(**kwargs)


def _decode(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(value, option, where)
            except _Mismatch:
                continue
        raise _Mismatch(f"'{where}' has an unexpected value {_short(value)}")
    if origin is tuple:
        args = get_args(hint)
        if not isinstance(value, list):
            raise _Mismatch(f"'{where}' should be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Mismatch(f"'{where}' should have {len(args)} items")
        return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in
                     enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(f"'{where}' should be an object")
        _, item = get_args(hint)
        return {k: _decode(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}
    if hint in ok and ok[hint](value):
        return value
    raise _Mismatch(f"'{where}' should be {getattr(hint, '__name__', hint)}, "
                    f"got {_short(value)}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
