"""TOML text: where tables and keys lie (1-based lines), and values written back.

tomllib reports no line numbers for the values it returns, so profile errors find
their line by scanning the text: a table starts at its header (`[a.b]` or `[[a.b]]`)
and ends at the next header of any kind. Where a document is written another way
(inline tables, dotted keys), the scan finds fewer tables than the data holds and
callers go without lines.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from typing import Any

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.*?)\s*(\]\]?)\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


@dataclass(frozen=True)
class TableLines:
    """Where one table lies in the text: 1-based lines, end exclusive."""

    start: int
    end: int
    lines: tuple[str, ...]

    def key_line(self, key: str) -> int | None:
        pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
        for offset, line in enumerate(self.lines):
            if pattern.match(line):
                return self.start + offset
        return None

    def line(self, key: str | None = None) -> int:
        """The line of `key`, else of the table's name, else of its header."""
        return ((self.key_line(key) if key else None) or self.key_line("name") or self.start)

    def scanned_name(self) -> str | None:
        for line in self.lines:
            found = re.match(r"""^\s*name\s*=\s*["']([^"']*)["']""", line)
            if found:
                return found.group(1)
        return None


def header_path(line: str) -> tuple[bool, tuple[str, ...]] | None:
    """(is an array of tables, its key path) for a header line, else None."""
    found = _HEADER.match(line)
    if not found or len(found.group(1)) != len(found.group(3)):
        return None
    try:
        nested = tomllib.loads(f"{found.group(2)} = 0")  # TOML itself reads the dotted key
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(nested, dict) and len(nested) == 1:
        key, nested = next(iter(nested.items()))
        path.append(key)
    return len(found.group(1)) == 2, tuple(path)


def tables(text: str, path: tuple[str, ...], *, array: bool) -> list[TableLines]:
    """Every table with this key path (`[[path]]` where `array`, else `[path]`), in order."""
    lines = text.splitlines()
    found = []
    for start, line in enumerate(lines):
        if _ANY_HEADER.match(line) and header_path(line) == (array, path):
            end = next((j for j in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[j])),
                       len(lines))
            found.append(TableLines(start + 1, end + 1, tuple(lines[start:end])))
    return found


def top_key_line(text: str, key: str) -> int | None:
    """The line of a key before the first table header."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if _ANY_HEADER.match(line):
            return None
        if pattern.match(line):
            return number
    return None


# ---------------------------------------------------------------- values

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(char: str) -> str:
    """One character of a TOML basic string: control characters must be escaped."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char


def format_value(value: Any) -> str:
    """A value as TOML writes it (strings, integers, floats, booleans, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form; always has '.', 'e' or both
    if isinstance(value, str):
        return '"' + "".join(_escape(c) for c in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def describe(value: Any) -> str:
    """What a value is, for an error: `a string ("5")`."""
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
    return f"{kind} ({format_value(value) if not isinstance(value, dict) else '{...}'})"
