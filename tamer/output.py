"""Printing for people and for pipes, shared by every `tamer` command (tamer/cli/).

Identifiers (run ids, rung names, plan text, losses) are never cut with `…`: a table cell folds onto
a second line instead when a terminal is too narrow, and run ids and rung names stay whole. When stdout is not a terminal (a file, a
pipe, journald), tables print at a fixed wide width and text lines are never hard-wrapped, so that
`grep`, `tail -f` and `journalctl` see whole lines.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

# Piped output has no terminal width to fit: wide enough that rows of every table stay one line.
PIPED_TABLE_WIDTH = 200
# Columns of free text, which wrap at spaces; every other column (ids, rung names, numbers, times)
# keeps each value on one line.
PROSE_COLUMNS = frozenset({"message", "plan", "why this plan", "saves / costs", "other processes", "model", "requires"})


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style` followed by `rest` as plain text: no part is read as rich markup, so a message
    such as `--data [x].json` or `[enforce fail ...]` prints as written."""
    return Text.assemble((label, style), rest)


def table(*headers: str, **options: Any) -> Table:
    """A rich Table that never ends a value in `…`: prose columns wrap (folding a word longer than the
    column), the others keep values whole (see print_table); headers may wrap."""
    return Table(*(Column(header, overflow="fold") for header in headers), **options)


def print_table(console: Console, rich_table: Table) -> None:
    """To a terminal, fitted to its width (with lighter borders when it is narrow); otherwise at
    PIPED_TABLE_WIDTH. A table whose whole values cannot fit prints wider, for the terminal to wrap,
    rather than crop a value."""
    for column in rich_table.columns:
        if column.header not in PROSE_COLUMNS:
            column.min_width = max((cell_len(str(cell)) for cell in column.cells), default=1)
    width = console.width if console.is_terminal else PIPED_TABLE_WIDTH
    if Measurement.get(console, console.options.update_width(10**4), rich_table).maximum > width:
        rich_table.box, rich_table.show_edge, rich_table.padding = box.SIMPLE_HEAD, False, (0, 1)
    (console if console.is_terminal else Console(width=width, markup=False)).print(rich_table, crop=False)


def unwrap_when_piped(*consoles: Console) -> None:
    """Text printed to a console that is not a terminal keeps each line whole (no wrap at 80 columns)."""
    for console in consoles:
        console.soft_wrap = not console.is_terminal
