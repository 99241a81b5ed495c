"""Tables whose numbers are never cut, at any width.

Rich fits a table to the console by shortening its cells ("1.2…"), which is
wrong for a report of figures. `print_table` instead measures the table and,
where it is wider than the console, prints it as several tables, each with the
key columns (the row's name) and as many of the others as fit, split between
groups of columns first (memory, time) and between columns only inside a group
too wide on its own. Where even one column does not fit beside the keys, every
row is printed as one line of "header value" pairs, which the terminal may wrap
but nothing cuts.

`console()` is the console every command prints to: as wide as the terminal,
or as `COLUMNS` says (on a terminal or not), else 120 columns where the output
is no terminal (a pipe, a log file), wider than rich's 80 so fewer tables split.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

PIPE_COLUMNS = 120  # the width where output is no terminal and COLUMNS is not set

Justify = Literal["left", "right", "center"]


@dataclass(frozen=True)
class Column:
    header: str
    justify: Justify = "right"
    wrap: bool = False  # prose that may wrap at spaces (a description); never a number
    style: str | None = None


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]  # rich markup allowed ("[red]does not fit[/red]")
    style: str | None = None
    section: bool = False  # a rule above this row


def console_width(stream: Any, environ: dict[str, str] | None = None) -> int | None:
    """The width to print at: COLUMNS where it is a positive integer, the terminal's
    own (None: rich asks the terminal) where `stream` is one, else PIPE_COLUMNS."""
    columns = (os.environ if environ is None else environ).get("COLUMNS", "").strip()
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None if stream.isatty() else PIPE_COLUMNS


def console(stderr: bool = False) -> Console:
    """The console a command prints its tables to (see the module's docstring)."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(no_color="NO_COLOR" in os.environ, width=console_width(stream),
                   stderr=stderr)


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _narrowest(cell: str, wrap: bool) -> str:
    """What a cell needs at least: all of it, or its longest word where it may wrap."""
    plain = _plain(cell)
    if not wrap:
        return plain
    return max(plain.split(), key=len, default="")


def _table(columns: Sequence[Column], rows: Sequence[Row], indices: Sequence[int],
           title: str | None, caption: str | None, options: dict[str, Any],
           measuring: bool = False) -> Table:
    table = Table(title=title, caption=caption, **options)
    for i in indices:
        column = columns[i]
        table.add_column(column.header, justify=column.justify, style=column.style,
                         no_wrap=not column.wrap)
    for n, row in enumerate(rows):
        if row.section and n:
            table.add_section()
        if measuring:
            cells = [Text(_narrowest(row.cells[i], columns[i].wrap)) for i in indices]
        else:
            cells = [row.cells[i] for i in indices]
        table.add_row(*cells, style=row.style)
    return table


def split_columns(groups: Sequence[Sequence[int]], fits: Callable[[list[int]], bool]
                  ) -> list[list[int]] | None:
    """The columns of each table a too-wide table is split into: whole groups, in
    order, as many to a table as `fits` allows; a group that does not fit on its own
    is split between its columns. None where a single column does not fit."""
    parts: list[list[int]] = []
    current: list[int] = []
    for group in groups:
        if fits(current + list(group)):
            current += group
            continue
        if current:
            parts.append(current)
            current = []
        if fits(list(group)):
            current = list(group)
            continue
        for column in group:
            if fits(current + [column]):
                current.append(column)
                continue
            if current:
                parts.append(current)
            if not fits([column]):
                return None
            current = [column]
    if current:
        parts.append(current)
    return parts


def print_table(out: Console, columns: Sequence[Column], rows: Sequence[Row | Sequence[str]],
                *, title: str | None = None, caption: str | None = None, keys: int = 1,
                groups: Sequence[tuple[str | None, Sequence[str]]] = (),
                **options: Any) -> None:
    """Print a table whose cells are never cut (see the module's docstring). The
    first `keys` columns name a row and are repeated in every part; `groups` names
    columns (by header) that belong together, titled where the table is split;
    `options` go to rich's Table (box, show_header, ...)."""
    rows = [row if isinstance(row, Row) else Row(tuple(row)) for row in rows]
    for row in rows:
        if len(row.cells) != len(columns):
            raise ValueError(f"a row of {len(row.cells)} cells in a table of "
                             f"{len(columns)} columns")
    key_indices = list(range(keys))
    headers = [column.header for column in columns]
    grouped = {headers.index(h) for _, names in groups for h in names}
    ordered: list[tuple[str | None, list[int]]] = []
    for name, names in groups:
        ordered.append((name, [headers.index(h) for h in names]))
    ordered += [(None, [i]) for i in range(keys, len(columns)) if i not in grouped]
    ordered.sort(key=lambda group: group[1][0])
    width = out.width
    wide = out.options.update_width(10**6)

    def fits(indices: list[int]) -> bool:
        table = _table(columns, rows, key_indices + sorted(indices), None, None, options,
                       measuring=True)
        return Measurement.get(out, wide, table).maximum <= width

    everything = [i for _, group in ordered for i in group]
    if fits(everything):
        out.print(_table(columns, rows, key_indices + everything, title, caption, options))
        return
    parts = split_columns([group for _, group in ordered], fits)
    if parts is None:
        _print_lines(out, columns, rows, keys, title, caption)
        return
    names = {i: name for name, group in ordered for i in group}
    for n, part in enumerate(parts):
        named = [name for name in dict.fromkeys(names[i] for i in part) if name]
        heading = title if n == 0 else (f"{title} (continued)" if title else None)
        if named:
            heading = f"{heading} · {', '.join(named)}" if heading else ", ".join(named)
        out.print(_table(columns, rows, key_indices + part, heading, None, options))
    if caption:  # below the last part, as wide as the console, not as that part
        out.print(caption, highlight=False)


def _print_lines(out: Console, columns: Sequence[Column], rows: Sequence[Row], keys: int,
                 title: str | None, caption: str | None) -> None:
    """The narrowest form: a line a row, "key: header value · header value"."""
    if title:
        out.print(title, highlight=False, soft_wrap=True)
    for row in rows:
        name = " ".join(_plain(cell) for cell in row.cells[:keys])
        pairs = " · ".join(f"{columns[i].header} {_plain(row.cells[i])}"
                           for i in range(keys, len(columns)))
        out.print(f"{name}: {pairs}" if name else pairs, highlight=False, soft_wrap=True)
    if caption:
        out.print(caption, highlight=False, soft_wrap=True)
