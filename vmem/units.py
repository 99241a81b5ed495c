"""Byte sizes: parse what users type, format what users read."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from vmem.errors import UsageError

_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
# ASCII digits only: "４GiB" (full-width) is refused, not read as 4 GiB
_SIZE = re.compile(r"^\s*([-+]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$", re.ASCII)
ACCEPTED_SIZES = ("a number in ASCII digits with a unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB "
                  "(e.g. 4GiB, 512MB)")


def parse_size(text: str | int, flag: str = "size") -> int:
    """'4GiB' -> 4294967296. A bare integer is bytes. Raises UsageError naming the flag."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise UsageError(f"{flag}: must be positive, got {text}")
        return text
    match = _SIZE.match(str(text))
    unit = match.group(3).lower() if match else ""
    if not match or (unit and unit not in _UNITS):
        raise UsageError(f"{flag}: cannot read '{text}' as a size; expected {ACCEPTED_SIZES}")
    value = float(match.group(2)) * _UNITS[unit or "b"]
    if match.group(1) == "-" or value == 0:
        raise UsageError(f"{flag}: must be positive, got '{text}'; expected {ACCEPTED_SIZES}")
    if value < 1:
        raise UsageError(f"{flag}: '{text}' is less than one byte; expected {ACCEPTED_SIZES}")
    if not math.isfinite(value):
        raise UsageError(f"{flag}: '{text}' is too large to be a size; expected "
                         f"{ACCEPTED_SIZES}")
    if unit in ("", "b") and not value.is_integer():
        raise UsageError(f"{flag}: '{text}' is not a whole number of bytes; expected "
                         f"{ACCEPTED_SIZES}")
    return int(value)


def format_bytes(nbytes: float) -> str:
    """1536 -> '1.50 KiB'; binary units, three significant figures. An integer
    too large for a float (10**400) is written exactly, in powers of ten."""
    try:
        value = float(nbytes)
    except OverflowError:
        return f"{Decimal(int(nbytes)):.3e} B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_ms(ms: float) -> str:
    """Milliseconds with three significant figures at least: 4,521.8 ms, 12.35 ms,
    0.254 ms (a fixed one decimal would show a tiny network's step as 0.3 ms)."""
    if abs(ms) >= 100:
        return f"{ms:,.1f} ms"
    return f"{ms:.2f} ms" if abs(ms) >= 1 else f"{ms:.3f} ms"
