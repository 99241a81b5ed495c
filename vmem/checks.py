"""Checks of the arrays and numbers a user hands to the runtime: what they must be,
said in one line that names the argument and what is accepted."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vmem.errors import UsageError

#: dtype kinds that convert to floating point as numbers: floats, integers, booleans
REAL_KINDS = "fiub"
#: dtype kinds refused by name: complex, strings and bytes, objects, datetimes and
#: timedeltas, structured or raw records
KIND_NAMES = {"c": "complex", "U": "string", "S": "bytes", "O": "object", "M": "datetime",
              "m": "timedelta", "V": "structured"}


def real_array(value: Any, argument: str, accepted: str) -> Any:
    """`value` as an array of real numbers (NumPy for what is not an array already),
    or a UsageError naming `argument`, its dtype and what it accepts."""
    array = value
    if not hasattr(value, "dtype") or not hasattr(value, "shape"):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{argument}: cannot read {type(value).__name__} as an array "
                             f"({exc}); accepted: {accepted}") from None
    kind = getattr(array.dtype, "kind", "")
    if kind not in REAL_KINDS:
        name = KIND_NAMES.get(kind, "non-numeric")
        raise UsageError(f"{argument}: dtype {array.dtype} ({name}) is not accepted; "
                         f"accepted: {accepted}")
    return array


def count_not_finite(host: np.ndarray, dtype: np.dtype) -> int:
    """How many of a host array's values are NaN or infinite once in `dtype` (float64
    values beyond float32's range count: they become infinite)."""
    with np.errstate(all="ignore"):  # counted here, never warned about
        return host.size - int(np.count_nonzero(np.isfinite(host.astype(dtype, copy=False))))


def not_finite(count: int, dtype: np.dtype) -> str:
    """'1 value is not finite as float32 (...)', for an error message."""
    values = "1 value is" if count == 1 else f"{count:,} values are"
    return (f"{values} not finite as {np.dtype(dtype)} (NaN, infinite or beyond its range); "
            "accepted: finite numbers")


def is_finite_number(value: Any) -> bool:
    """A real, finite number: not a bool, a string or None, not NaN or infinite, and
    an integer only where a float can hold it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def finite_number(value: Any, what: str) -> float:
    """`value` as a float, or a UsageError saying that `what` must be a finite number."""
    if not is_finite_number(value):
        raise UsageError(f"{what} must be a finite number, got {value!r:.40}")
    return float(value)
