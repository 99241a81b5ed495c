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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from vmem.files import MAX_DEPTH, nesting


class SchemaError(Exception):
    """A value that does not fit its field: the message names the field by its
    path from the top ('trials[0].result.peak_bytes')."""

    def __init__(self, problem: str, *, missing: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.missing = problem, missing
        self.path: list[str | int] = []

    def inside(self, key: str | int) -> SchemaError:
        self.path.insert(0, key)
        return self

    def __str__(self) -> str:
        where = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in self.path)
        where = where.lstrip(".") or "."
        return f"missing '{where}'" if self.missing else f"'{where}' {self.problem}"


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


def build(cls: type, data: Any) -> Any:
    """`data` (a JSON object) as an instance of the dataclass `cls`; keys the
    class does not know are left out, fields with defaults may be missing."""
    return _decoder(cls)(data)


def decode(hint: Any, value: Any) -> Any:
    """`value` checked against `hint` (tuples come from lists)."""
    return _decoder(hint)(value)


Decoder = Callable[[Any], Any]


@functools.cache
def _decoder(hint: Any) -> Decoder:
    """A function that decodes and checks one value of `hint`, made once per hint
    (a session holds a million values of a few dozen hints). A failure raises
    SchemaError; each container on the way out adds its key to the error's path."""
    base, checks = _unannotated(hint)
    origin = get_origin(base)
    if base is Any:
        return _bounded
    if origin in (Union, types.UnionType):
        decoder = _union_decoder(hint, base)
    elif dataclasses.is_dataclass(base):
        decoder = _dataclass_decoder(base)
    elif origin is dict:
        decoder = _dict_decoder(hint, _decoder(get_args(base)[1]))
    elif origin is tuple:
        decoder = _tuple_decoder(hint, base)
    elif origin is Literal:
        accepted = get_args(base)

        def decoder(value: Any) -> Any:
            if isinstance(value, bool) or value not in accepted:
                raise _mismatch(hint, value)
            return value
    else:
        decoder = _scalar_decoder(hint, base)
    return _checked(hint, decoder, checks) if checks else decoder


def _unannotated(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    if get_origin(hint) is Annotated:
        base, *checks = get_args(hint)
        return base, tuple(checks)
    return hint, ()


def _bounded(value: Any) -> Any:
    """Free-form data (device facts), as it is, but never nested deeper than the
    renderers and JSON writers can follow."""
    if isinstance(value, dict | list) and nesting(value) > MAX_DEPTH:
        raise SchemaError(f"is nested too deeply (at most {MAX_DEPTH} levels of lists and "
                          "objects are read)")
    return value


def _checked(hint: Any, decoder: Decoder, checks: tuple[Any, ...]) -> Decoder:
    ranges = [c for c in checks if isinstance(c, Range)]
    nonempty = any(isinstance(c, NonEmpty) for c in checks)
    if len(ranges) == 1 and not nonempty:  # the common case, kept short: a million calls
        admits = ranges[0].admits

        def in_range(value: Any) -> Any:
            decoded = decoder(value)
            if not admits(decoded):
                raise _mismatch(hint, value)
            return decoded
        return in_range

    def checked(value: Any) -> Any:
        decoded = decoder(value)
        if (nonempty and not decoded) or not all(r.admits(decoded) for r in ranges):
            raise _mismatch(hint, value)
        return decoded
    return checked


def _scalar_decoder(hint: Any, base: Any) -> Decoder:
    # type(...) is, not isinstance: JSON's true is no integer here
    if base is int:
        def decode_int(value: Any) -> Any:
            if type(value) is not int:
                raise _mismatch(hint, value)
            return value
        return decode_int
    if base is float:
        def decode_float(value: Any) -> Any:
            if type(value) not in (int, float) or not math.isfinite(value):
                raise _mismatch(hint, value)
            return value
        return decode_float
    if base in (str, bool):
        def decode_plain(value: Any) -> Any:
            if type(value) is not base:
                raise _mismatch(hint, value)
            return value
        return decode_plain
    raise TypeError(f"vmem.schema cannot check values of {hint!r}")


def _dataclass_decoder(cls: type) -> Decoder:
    hints = get_type_hints(cls, include_extras=True)
    fields = [(f.name, _decoder(hints[f.name]),
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
              for f in dataclasses.fields(cls) if f.init]

    def decode_dataclass(data: Any) -> Any:
        if type(data) is not dict:
            raise SchemaError(f"must be an object, got {_short(data)}")
        kwargs = {}
        for name, decoder, required in fields:
            if name in data:
                try:
                    kwargs[name] = decoder(data[name])
                except SchemaError as exc:
                    raise exc.inside(name) from None
            elif required:
                raise SchemaError("", missing=True).inside(name)
        return cls(**kwargs)
    return decode_dataclass


def _dict_decoder(hint: Any, item: Decoder) -> Decoder:
    def decode_dict(value: Any) -> Any:
        if type(value) is not dict:
            raise _mismatch(hint, value)
        decoded = {}
        for key, v in value.items():
            try:
                decoded[key] = item(v)
            except SchemaError as exc:
                raise exc.inside(key) from None
        return decoded
    return decode_dict


def _tuple_decoder(hint: Any, base: Any) -> Decoder:
    args = get_args(base)
    repeated = len(args) == 2 and args[1] is Ellipsis
    items = [_decoder(args[0])] if repeated else [_decoder(a) for a in args]

    def decode_tuple(value: Any) -> Any:
        if type(value) is not list:
            raise _mismatch(hint, value)
        if not repeated and len(value) != len(items):
            raise SchemaError(f"must be a list of {len(items)} items, got {_short(value)}")
        decoders = items * len(value) if repeated else items
        decoded = []
        for i, (decoder, v) in enumerate(zip(decoders, value, strict=True)):
            try:
                decoded.append(decoder(v))
            except SchemaError as exc:
                raise exc.inside(i) from None
        return tuple(decoded)
    return decode_tuple


def _union_decoder(hint: Any, base: Any) -> Decoder:
    options = [o for o in get_args(base) if o is not type(None)]
    nullable = type(None) in get_args(base)
    by_kind: dict[str, list[Decoder]] = {}
    for option in options:
        by_kind.setdefault(_kind(option), []).append(_decoder(option))

    def decode_union(value: Any) -> Any:
        if value is None:
            if nullable:
                return None
            raise _mismatch(hint, value)
        matching = by_kind.get(_json_kind(value), []) + by_kind.get("any", [])
        if len(matching) == 1:  # its own error says best what is wrong
            return matching[0](value)
        for decoder in matching:
            try:
                return decoder(value)
            except SchemaError:
                continue
        raise _mismatch(hint, value)
    return decode_union


def _mismatch(hint: Any, value: Any) -> SchemaError:
    return SchemaError(f"must be {describe(hint)}, got {_short(value)}")


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
