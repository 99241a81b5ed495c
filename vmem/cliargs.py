"""Argument types and the parser class every vmem command shares: a bad value
is one line naming the flag and what it accepts, and exit code 2."""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn

EXIT_USAGE = 2
# Counts (batch, steps) past this overflow the int64 arithmetic of array shapes
# and byte counts long before they could run.
MAX_COUNT = 2**31 - 1


def one_line(message: str) -> str:
    """`message` with what would break or garble its line (a newline, a tab, any
    control or separator character a user typed into a value) written as an
    escape (\\n, \\x1e), so an error stays one line."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


# Numbers are read in ASCII digits only: Python's int() and float() would take
# "４" (full-width) or "٤" (Arabic-Indic) for 4, which a user rarely means.


# int() also takes "1_0" for 10: a typo more often than a number meant
_INTEGER = re.compile(r"\s*[-+]?[0-9]+\s*", re.ASCII)


def _int_or(text: str, fallback: int) -> int:
    """The integer `text` spells in ASCII digits, else `fallback` (a value the
    caller refuses)."""
    return int(text) if _INTEGER.fullmatch(text) else fallback


def positive_int(text: str) -> int:
    value = _int_or(text, 0)
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be a positive integer up to {MAX_COUNT} in "
                                         f"ASCII digits, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    value = _int_or(text, -1)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 in ASCII digits, got "
                                         f"'{text}'")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text) if text.isascii() else 0.0
    except ValueError:
        value = 0.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number in ASCII digits, "
                                         f"got '{text}'")
    return value


def thread_count(text: str) -> int:
    from vmem.kernels.threads import MAX_THREADS

    value = _int_or(text, 0)
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_THREADS}, got "
                                         f"'{text}'")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=thread_count, help="threads the cpu backend's NumPy "
                        "kernels split their work over, with BLAS on one thread each; results "
                        "are the same for every count (default: $VMEM_THREADS, else the cores "
                        "available)")
