"""Files the profiler writes (sessions, traces, plots): the path is checked
before a long job starts, and a file is written whole or not at all (to a
temporary file in the same directory, then renamed over the target)."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from vmem.errors import UsageError


def check_writable(path: str | os.PathLike[str], flag: str) -> Path:
    """The path as a Path, or a UsageError naming the flag and why it cannot be
    written."""
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise UsageError(f"{flag}: cannot write '{target}': it is a directory; give a file path")
    if not parent.exists():
        raise UsageError(f"{flag}: cannot write '{target}': directory '{parent}' does not exist")
    if not parent.is_dir():
        raise UsageError(f"{flag}: cannot write '{target}': '{parent}' is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write '{target}': directory '{parent}' is not "
                         "writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{flag}: cannot write '{target}': the file is not writable")
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes | str, flag: str,
                 check: Callable[[Path], object] | None = None) -> None:
    """Write `data` to `path` whole: a reader sees the old file or the new one,
    and a failure leaves neither a partial file nor the temporary one. `check`,
    given the written temporary file, may refuse it (by raising) before it
    replaces the target."""
    target = check_writable(path, flag)
    payload = data.encode() if isinstance(data, str) else data
    temporary = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        if check is not None:
            check(temporary)
        os.replace(temporary, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise UsageError(f"{flag}: cannot write '{target}': {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
