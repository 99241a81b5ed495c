"""Files vmem writes (sessions, traces, plots, calibrations, reports).

`check_writable` refuses, before a long job starts, a path that cannot be
written, in one line naming the flag. `write_atomic` writes a file whole or not
at all: to a temporary file in the target's directory, flushed to disk, then
renamed over the target, so a reader, a full disk or a Ctrl-C sees the old
file or the new one and never a part or a temporary. Replacing keeps the
file's mode (a 0600 file stays 0600; a new one gets the umask's); a symbolic
link is written through (its target is replaced and the link kept); a FIFO or
a character device (/dev/stdout under a pipe) is written into, never replaced;
'-' is standard output where the caller accepts it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from vmem.errors import UsageError

STDOUT = "-"
NAME_MAX = 255  # bytes in one name component, where the file system does not say
PATH_MAX = 4096  # bytes in a whole path, likewise
_TOKEN_HEX = 12  # random hex digits in a temporary name
_TEMPORARY_EXTRA = len(f"..{'0' * _TOKEN_HEX}.tmp")  # what a temporary adds to the name


def _limit(directory: Path, name: str, fallback: int) -> int:
    try:
        return os.pathconf(directory, name)
    except (OSError, ValueError):
        return fallback


def _temporary_name(name: str, name_max: int) -> str:
    """A hidden name beside `name` that is never longer than the file system
    accepts: the name is cut (in bytes) to leave room for the random part."""
    stem = os.fsencode(name)[:max(name_max - _TEMPORARY_EXTRA, 1)]
    return f".{os.fsdecode(stem)}.{secrets.token_hex(_TOKEN_HEX // 2)}.tmp"


def _direct(mode: int) -> bool:
    """A file written into rather than replaced: a FIFO, a device, a socket."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def check_writable(path: str | os.PathLike[str], flag: str, *, stdout: bool = False) -> Path:
    """The file to write, or a UsageError naming the flag and why it cannot be
    written. A symbolic link gives its target; '-' gives Path('-') where
    `stdout` accepts standard output."""
    given = os.fspath(path)
    shown = os.fsdecode(given)

    def refuse(reason: str) -> UsageError:
        return UsageError(f"{flag}: cannot write '{shown}': {reason}")

    if given == STDOUT:
        if stdout:
            return Path(STDOUT)
        raise UsageError(f"{flag}: '-' (standard output) is not accepted here; give a file path")
    if not given:
        raise UsageError(f"{flag}: give a file path, not an empty one")
    if "\0" in shown:
        raise refuse("a path cannot hold a NUL character")
    for part in Path(given).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise refuse(f"the name '{part[:24]}…' is {size} bytes; a file or directory name "
                         f"holds at most {NAME_MAX} bytes")
    try:
        mode = os.stat(given).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # not there yet: its directory is checked below
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise refuse("it is a directory; give a file path")
    if mode is not None and _direct(mode):
        if not os.access(given, os.W_OK):
            raise refuse("it is not writable")
        return Path(given)
    target = Path(os.path.realpath(given))  # a link's target: the file that is replaced
    parent = target.parent
    try:
        if not parent.exists():
            raise refuse(f"directory '{Path(given).parent}' does not exist")
        if not parent.is_dir():
            raise refuse(f"'{Path(given).parent}' is not a directory")
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(f"directory '{parent}' is not writable")
    if mode is not None and not os.access(target, os.W_OK):
        raise refuse("the file is not writable")
    name_max = _limit(parent, "PC_NAME_MAX", NAME_MAX)
    size = len(os.fsencode(target.name))
    if size > name_max:
        raise refuse(f"the name is {size} bytes; this file system holds names of at most "
                     f"{name_max} bytes")
    temporary = parent / _temporary_name(target.name, name_max)
    path_max = _limit(parent, "PC_PATH_MAX", PATH_MAX)
    if len(os.fsencode(str(temporary))) >= path_max:
        raise refuse(f"the path is too long (this file system holds paths of fewer than "
                     f"{path_max} bytes, with room for a temporary name)")
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes | str, flag: str,
                 check: Callable[[Path], object] | None = None, *,
                 stdout: bool = False) -> None:
    """Write `data` to `path` whole: a reader sees the old file or the new one,
    and a failure or an interrupt leaves neither a partial file nor the
    temporary one. `check`, given the written temporary file, may refuse it (by
    raising) before it replaces the target (it is not called for standard
    output, a FIFO or a device, which are written into directly)."""
    target = check_writable(path, flag, stdout=stdout)
    payload = data.encode() if isinstance(data, str) else data
    if str(target) == STDOUT:
        _write_stdout(payload, flag)
        return
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write '{target}': {exc.strerror or exc}") from None
    if existing is not None and _direct(existing.st_mode):
        _write_into(target, payload, flag)
        return
    parent = target.parent
    temporary = parent / _temporary_name(target.name, _limit(parent, "PC_NAME_MAX", NAME_MAX))
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            if existing is not None:  # the replaced file's owner (as root) and mode
                with contextlib.suppress(OSError):
                    os.fchown(file.fileno(), existing.st_uid, existing.st_gid)
                os.fchmod(file.fileno(), stat.S_IMODE(existing.st_mode))
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
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
    _sync_directory(parent)


def _write_into(target: Path, payload: bytes, flag: str) -> None:
    try:
        with open(target, "wb") as file:
            file.write(payload)
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write '{target}': {exc.strerror or exc}") from None


def _write_stdout(payload: bytes, flag: str) -> None:
    try:
        sys.stdout.flush()
        binary = getattr(sys.stdout, "buffer", None)
        if binary is None:  # a text-only stream (an embedding program's): the text
            sys.stdout.write(payload.decode("utf-8", errors="surrogateescape"))
        else:
            binary.write(payload)
            binary.flush()
    except OSError as exc:
        raise UsageError(f"{flag}: cannot write standard output: {exc.strerror or exc}") from None


def _sync_directory(directory: Path) -> None:
    """Flush the rename to disk too (a crash after it keeps the new file)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
