"""JSON data decoded into frozen dataclasses and checked against their type
hints, with ranges: the one checker of the files vmem reads back (sessions,
calibrations). A hint may carry its bounds, `Annotated[int, Range(0, MAX)]`, or
`NonEmpty()`; floats are always finite; `Literal` lists the accepted values.
A value that does not fit raises SchemaError naming where it is
('trials[0].result.peak_bytes') and what is accepted."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints


class SchemaError(Exception):
    """A value that does not fit its field: the message names the field."""


@dataclass(frozen=True)
class Range:
    """Bounds of a number (both included, but `low` where `low_open`)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def words(self) -> str:
        """"positive", ">= 0", "from 1 to 10", "<= 5"."""
        if self.low_open and self.low == 0 and self.high is None:
            return "positive"
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is None:
            return low or ""
        if low and not self.low_open:
            return f"from {_num(self.low)} to {_num(self.high)}"
        return f"{low} and <= {_num(self.high)}" if low else f"<= {_num(self.high)}"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class NonEmpty:
    """A string or list that holds something."""


MAX_BYTES = 2**63 - 1  # what the int64 byte counts of arrays and the arena can hold
MAX_MS = 1e15  # about 30,000 years: a time past it is no measurement
Bytes = Annotated[int, Range(0, MAX_BYTES)]
ByteAverage = Annotated[float, Range(0, MAX_BYTES)]
Count = Annotated[int, Range(0, MAX_BYTES)]
PositiveCount = Annotated[int, Range(1, MAX_BYTES)]
Millis = Annotated[float, Range(0, MAX_MS)]
Positive = Annotated[float, Range(0, low_open=True)]
Name = Annotated[str, NonEmpty()]


def build(cls: type, data: Any, where: str = "") -> Any:
    """`data` (a JSON object) as an instance of the dataclass `cls`; keys the
    class does not know are left out, fields with defaults may be missing."""
    if not isinstance(data, dict):
        raise SchemaError(f"'{where or '.'}' must be an object, got {_short(data)}")
    kwargs = {}
    for field, hint in _fields(cls):
        path = f"{where}.{field.name}".lstrip(".")
        if field.name in data:
            kwargs[field.name] = decode(hint, data[field.name], path)
        elif (field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING):
            raise SchemaError(f"missing '{path}'")
    return cls(**kwargs)


@functools.cache
def _fields(cls: type) -> tuple[tuple[dataclasses.Field[Any], Any], ...]:
    hints = get_type_hints(cls, include_extras=True)
    return tuple((f, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def decode(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against `hint` (tuples come from lists)."""
    base, checks = _unannotated(hint)
    origin = get_origin(base)
    if base is Any:
        return value
    if origin in (Union, types.UnionType):
        return _decode_union(hint, base, value, where)
    if origin is tuple or origin is dict:
        decoded = _decode_container(base, origin, value, where)
    elif dataclasses.is_dataclass(base):
        return build(base, value, where)
    elif origin is Literal:
        if value not in get_args(base) or isinstance(value, bool):
            raise SchemaError(f"'{where}' must be {describe(hint)}, got {_short(value)}")
        return value
    else:
        decoded = _decode_scalar(base, value, where, hint)
    for check in checks:
        ok = (check.admits(decoded) if isinstance(check, Range)
              else not isinstance(check, NonEmpty) or len(decoded) > 0)
        if not ok:
            raise SchemaError(f"'{where}' must be {describe(hint)}, got {_short(value)}")
    return decoded


def _unannotated(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    if get_origin(hint) is Annotated:
        base, *checks = get_args(hint)
        return base, tuple(checks)
    return hint, ()


def _decode_union(hint: Any, base: Any, value: Any, where: str) -> Any:
    options = [o for o in get_args(base) if o is not type(None)]
    if value is None:
        if type(None) in get_args(base):
            return None
        raise SchemaError(f"'{where}' must be {describe(hint)}, got null")
    # the option of the value's JSON kind: its own error, not the union's, says what is wrong
    matching = [o for o in options if _kind(o) == _json_kind(value)]
    if len(matching) == 1:
        return decode(matching[0], value, where)
    for option in matching:
        try:
            return decode(option, value, where)
        except SchemaError:
            continue
    raise SchemaError(f"'{where}' must be {describe(hint)}, got {_short(value)}")


def _decode_container(base: Any, origin: Any, value: Any, where: str) -> Any:
    args = get_args(base)
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"'{where}' must be an object, got {_short(value)}")
        return {k: decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if not isinstance(value, list):
        raise SchemaError(f"'{where}' must be a list, got {_short(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise SchemaError(f"'{where}' must be a list of {len(args)} items, got {_short(value)}")
    return tuple(decode(a, v, f"{where}[{i}]") for i, (v, a) in
                 enumerate(zip(value, args, strict=True)))


def _decode_scalar(base: Any, value: Any, where: str, hint: Any) -> Any:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if base is int and number and isinstance(value, int):
        return value
    if base is float and number and math.isfinite(value):
        return value
    if (base is str and isinstance(value, str)) or (base is bool and isinstance(value, bool)):
        return value
    raise SchemaError(f"'{where}' must be {describe(hint)}, got {_short(value)}")


def _kind(hint: Any) -> str:
    base, _ = _unannotated(hint)
    origin = get_origin(base)
    if origin is dict or dataclasses.is_dataclass(base):
        return "object"
    if origin is tuple:
        return "list"
    if origin is Literal:
        return _json_kind(get_args(base)[0])
    return {int: "number", float: "number", str: "string", bool: "bool"}.get(base, "any")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "list", str: "string"}.get(type(value), "other")


def describe(hint: Any) -> str:
    """What a hint accepts, in words ("an integer from 0 to 9.22337e+18")."""
    base, checks = _unannotated(hint)
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        words = [describe(o) for o in get_args(base) if o is not type(None)]
        null = " or null" if type(None) in get_args(base) else ""
        return " or ".join(words) + null
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in get_args(base))
    ranges = [c.words() for c in checks if isinstance(c, Range)]
    nonempty = any(isinstance(c, NonEmpty) for c in checks)
    if base in (int, float):
        noun = "integer" if base is int else "finite number"
        if ranges == ["positive"]:
            return f"a positive {noun}"
        return ("an " if base is int else "a ") + noun + "".join(f" {r}" for r in ranges)
    if base is str:
        return "a non-empty string" if nonempty else "a string"
    if origin is tuple or origin is dict:
        noun = "list" if origin is tuple else "object"
        return f"a non-empty {noun}" if nonempty else f"a {noun}"
    return getattr(base, "__name__", str(base))


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
