"""Reading the files vmem loads (profiles, GPU files, sessions, calibrations):
bounded in size, and parsed so that what Python's parsers cannot take (an
integer of more digits than Python converts, nesting deep enough to exhaust its
stack) is one line naming the file, like any other malformed file."""

from __future__ import annotations

import json
import os
import stat
import sys
import tomllib
from collections.abc import Callable
from typing import Any

from vmem.errors import UsageError, VmemError

MAX_FILE_BYTES = 256 * 2**20  # larger than any file vmem writes for a real network
MAX_DEPTH = 64  # levels of nested lists and objects; vmem's own files use at most 8
_CHUNK = 2**20

ErrorType = Callable[[str], VmemError]


def read_text(path: str | os.PathLike[str], where: str, error: ErrorType = UsageError,
              limit: int | None = None) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped); a file larger
    than `limit` (MAX_FILE_BYTES) is refused without reading it whole: a regular
    file by its size, anything else (/dev/zero, a pipe) after `limit` + 1 bytes."""
    limit = MAX_FILE_BYTES if limit is None else limit

    def refuse(reason: str) -> VmemError:
        return error(f"{where}: {reason}")

    too_large = (f"larger than {limit // 2**20} MiB, the most vmem reads"
                 if limit >= 2**20 else f"larger than {limit:,} bytes, the most vmem reads")
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise refuse("cannot read it (it is a directory)")
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise refuse(f"the file is {too_large}")
            chunks, size = [], 0
            while size <= limit:
                chunk = file.read(min(_CHUNK, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except IsADirectoryError:
        raise refuse("cannot read it (it is a directory)") from None
    except OSError as exc:
        raise refuse(f"cannot read it ({exc.strerror or exc})") from None
    if size > limit:
        raise refuse(f"the file is {too_large}")
    try:
        return b"".join(chunks).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise refuse(f"not a text file (byte {exc.start} is not UTF-8)") from None


def parse_json(text: str, where: str, error: ErrorType = UsageError) -> Any:
    """JSON text as Python data; json.JSONDecodeError passes through for the
    caller to word. Depth is not checked here but where it matters, in
    free-form values (vmem.schema): the checked fields of a file cannot nest."""
    return _parsed(json.loads, text, where, error)


def parse_toml(text: str, where: str, error: ErrorType = UsageError) -> dict[str, Any]:
    """TOML text as a dict, nested at most MAX_DEPTH levels;
    tomllib.TOMLDecodeError passes through for the caller to word (with its
    line)."""
    data = _parsed(tomllib.loads, text, where, error)
    if nesting(data) > MAX_DEPTH:
        raise error(_too_deep(where))
    return data


def _too_deep(where: str) -> str:
    return f"{where}: nested too deeply (at most {MAX_DEPTH} levels of lists and tables are read)"


def _parsed(parse: Callable[[str], Any], text: str, where: str, error: ErrorType) -> Any:
    try:
        return parse(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError):
        raise
    except RecursionError:
        raise error(_too_deep(where)) from None
    except ValueError as exc:  # int('9' * 5000): past Python's limit on integer digits
        if "digits" not in str(exc):
            raise error(f"{where}: cannot read a value ({exc})") from None
        raise error(f"{where}: a number has more than {sys.get_int_max_str_digits()} digits, "
                    "more than Python reads; numbers in vmem's files have a few dozen at "
                    "most") from None


def nesting(data: Any) -> int:
    """Levels of nested lists and dicts, counted up to MAX_DEPTH + 1 (without
    recursion: the data may be deep)."""
    deepest, stack = 0, [(data, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list | tuple):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((v, level) for v in value if isinstance(v, list | dict))
    return deepest
