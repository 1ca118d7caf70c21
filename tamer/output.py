"""Text for people and for pipes, shared by every `tamer` command (tamer/cli/), the HTML report and the
notifications: times, durations, numbers and one-line messages as people read them, tables that fit the
terminal and text that wraps only at spaces. The one home of such helpers.

The width to fit (`fit_width`): COLUMNS when it is set (on a terminal, or piped: the user said how wide),
else the terminal's. Piped without COLUMNS nothing is fitted to a screen: text lines stay whole for
`grep`, `tail -f` and `journalctl`, and tables are laid out PIPED_TABLE_WIDTH columns wide.

Tables (`table`, `print_table`): values (run ids, rung names, numbers, times, paths) are never cut and,
in a column, never broken, not even at a space; free-text columns (PROSE_COLUMNS) wrap at spaces;
headers wrap only at spaces. Nothing ends in `…`. When the columns cannot all fit side by side, the
table keeps the leading columns that fit and prints the others under each row as an indented
`header: value` line (the detail layout, where a long item wraps at spaces), so command code orders
its columns by importance and never special-cases a width. A single word longer than the whole width
(a long path) gets a line of its own, whole.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from tamer.units import format_size

# Piped without COLUMNS there is no width to fit: wide enough that the rows of most tables stay one line.
PIPED_TABLE_WIDTH = 200
# Columns of free text, which wrap at spaces; every other column (ids, rung names, numbers, times, sizes)
# keeps each value whole on one line.
PROSE_COLUMNS = frozenset(
    {
        "message",
        "plan",
        "why this plan",
        "why",
        "then",
        "saves / costs",
        "other processes",
        "model",
        "requires",
        "peak in",
        "error",
    }
)
# A free-text column narrower than this reads as a ribbon of words: the table drops to the detail layout first.
PROSE_MIN_WIDTH = 30
GAP = "  "  # between columns
DETAIL_INDENT = "  "  # before a row's detail line
_WORD = re.compile(r"\S+")
MESSAGE_LIMIT = 300
"""Characters of a one-line message (an attempt's outcome, a failure) before it is cut."""


# --- words and numbers ------------------------------------------------------------------------------


def when(timestamp: float | None) -> str:
    """Local date and time, `-` for None."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def seconds(value: float | None) -> str:
    """`4.2 s`, `3 min 05 s`, `2 h 03 min`; `-` for None."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def duration(start: float | None, end: float | None) -> str:
    """`H:MM:SS` from `start` to `end` (now when None); `-` without a start."""
    if not start:
        return "-"
    elapsed = int((end or time.time()) - start)
    return f"{elapsed // 3600}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}"


def number(value: float | int | None, digits: int = 4) -> str:
    """A loss or rate with `digits` decimals, `-` for None."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def loss(value: float | None) -> str:
    """A loss with four decimals, `-` for None."""
    return f"{value:.4f}" if value is not None else "-"


def peak(row: dict) -> str:
    """An attempt's peak memory: GPU reserved when torch measured it, else the host RSS."""
    if row.get("peak_reserved"):
        return f"{format_size(row['peak_reserved'])} reserved"
    if row.get("peak_host_rss"):
        return f"{format_size(row['peak_host_rss'])} RSS"
    return "-"


def one_line(text: str | None, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-empty line of `text`, cut to `limit` characters."""
    line = next((line.strip() for line in (text or "").splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- layout -----------------------------------------------------------------------------------------


def fit_width(console: Console) -> int | None:
    """The columns to fit: COLUMNS when set, else the terminal's width; None when piped without COLUMNS."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return console.size.width if console.is_terminal else None


def unwrap_when_piped(*consoles: Console) -> None:
    """What a console that is not a terminal prints itself (log-like lines: a run's last line, `tamer eval`'s
    result) keeps each line whole, COLUMNS or not; tables and `say` fit COLUMNS when it is set."""
    for console in consoles:
        console.soft_wrap = not console.is_terminal


def line_breaks(text: str, width: int, indent: int = 0) -> list[int]:
    """Where to break one line of `text` (offsets of the words that start a new line) so that no line is
    wider than `width` cells, breaking only at spaces; continuation lines are `indent` cells narrower. A
    word wider than a whole line starts a line of its own and is kept whole."""
    breaks: list[int] = []
    line_start, room = 0, width
    for match in _WORD.finditer(text):
        first_on_line = not text[line_start : match.start()].strip()
        if not first_on_line and cell_len(text[line_start : match.end()]) > room:
            breaks.append(match.start())
            line_start, room = match.start(), width - indent
    return breaks


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    """`text` as lines of at most `width` cells, broken at spaces only (see line_breaks); continuation lines
    start with `indent`; each newline in `text` starts a new line."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        bounds = [0, *line_breaks(paragraph, width, cell_len(indent)), len(paragraph)]
        for number, (start, end) in enumerate(zip(bounds, bounds[1:])):
            lines.append((indent if number else "") + paragraph[start:end].rstrip())
    return lines


def styled(label: str, style: str, rest: str = "") -> Text:
    """`label` in `style` followed by `rest` as plain text: no part is read as rich markup, so a message
    such as `--data [x].json` or `[enforce fail ...]` prints as written."""
    return Text.assemble((label, style), rest)


def say(console: Console, message: str | Text, *, indent: str = "") -> None:
    """Print a line of text fitted to the width: wrapped at spaces, words and paths whole, continuation lines
    starting with `indent`; one whole line when there is no width to fit. A str prints as written (never read
    as markup: messages carry paths and library errors); style parts with `styled`."""
    text = message if isinstance(message, Text) else Text(message)
    width = fit_width(console)
    if width is None:
        console.print(text, soft_wrap=True)
        return
    for paragraph in text.split("\n", allow_blank=True):
        for number, line in enumerate(paragraph.divide(line_breaks(paragraph.plain, width, cell_len(indent)))):
            line.rstrip()
            console.print(Text.assemble(indent, line) if number else line, soft_wrap=True)


@dataclass
class Table:
    """Rows of text cells under headers, laid out by `lay_out` to fit a width (see the module docstring)."""

    headers: tuple[str, ...]
    title: str | None = None
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def add_row(self, *cells: str) -> None:
        if len(cells) != len(self.headers):
            raise ValueError(f"a row of {len(cells)} cells for {len(self.headers)} columns")
        self.rows.append(tuple(cells))


def table(*headers: str, title: str | None = None) -> Table:
    """An empty table; add rows with `add_row`, print it with `print_table`."""
    return Table(headers=headers, title=title)


def print_table(console: Console, source: Table) -> None:
    """Print the table laid out for fit_width (PIPED_TABLE_WIDTH when piped without COLUMNS)."""
    for line in lay_out(source, fit_width(console) or PIPED_TABLE_WIDTH):
        console.print(line, soft_wrap=True)


@dataclass
class _Column:
    header: str
    prose: bool
    cells: list[str]

    @property
    def natural(self) -> int:
        """Its width with nothing wrapped."""
        return max([cell_len(self.header), *(cell_len(line) for cell in self.cells for line in cell.split("\n"))])

    @property
    def least(self) -> int:
        """The narrowest it may be: its longest header word; the longest value, or for free text the longest
        word (and PROSE_MIN_WIDTH when its text is longer than that)."""
        header_word = max((cell_len(word) for word in self.header.split()), default=1)
        if not self.prose:
            return max(header_word, *(cell_len(line) for cell in self.cells for line in cell.split("\n")), 1)
        longest_word = max((cell_len(word) for cell in self.cells for word in cell.split()), default=1)
        return max(header_word, longest_word, min(self.natural, PROSE_MIN_WIDTH))


def _span(widths: Sequence[int]) -> int:
    return sum(widths) + cell_len(GAP) * (len(widths) - 1)


def lay_out(source: Table, width: int) -> list[Text]:
    """The table's lines for `width` columns: side by side when every column fits at its least width; else
    the leading columns that fit, and under each row a detail line with the other columns as
    `header: value`, packed and wrapped at spaces. When not even the first column fits, each row is a
    block of `header: value` lines, the rows apart by a blank line."""
    columns = [
        _Column(header, header in PROSE_COLUMNS, [row[index] for row in source.rows])
        for index, header in enumerate(source.headers)
    ]
    kept = len(columns)
    while kept > 0 and _span([column.least for column in columns[:kept]]) > width:
        kept -= 1
    shown, detail = columns[:kept], columns[kept:]
    lines: list[Text] = []
    if source.title:
        lines += [Text(line, style="bold") for line in wrap(source.title, width)]
    if not shown:
        for index in range(len(source.rows)):
            lines += [Text("")] if index else []
            lines += [
                Text(line) for line in _detail_lines([(column.header, column.cells[index]) for column in detail], width)
            ]
        return lines
    widths = _widths(shown, width)
    header_cells = [wrap(column.header, size) for column, size in zip(shown, widths)]
    height = max(len(cell) for cell in header_cells)
    header_cells = [[""] * (height - len(cell)) + cell for cell in header_cells]  # bottom-aligned
    lines += [Text(_join(cells, widths), style="bold") for cells in zip(*header_cells)]
    lines.append(Text("─" * _span(widths), style="dim"))
    for index in range(len(source.rows)):
        cells = [
            wrap(column.cells[index], size) if column.prose else column.cells[index].split("\n")
            for column, size in zip(shown, widths)
        ]
        height = max(len(cell) for cell in cells)
        lines += [Text(_join(parts, widths)) for parts in zip(*(cell + [""] * (height - len(cell)) for cell in cells))]
        lines += [
            Text(line) for line in _detail_lines([(column.header, column.cells[index]) for column in detail], width)
        ]
    return lines


def _widths(columns: list[_Column], width: int) -> list[int]:
    """Each column at its least width, then what is left of `width` spent on headers that would wrap and
    on free text, one column at a time to the one furthest from its natural width."""
    widths = [column.least for column in columns]
    spare = width - _span(widths)
    for index, column in enumerate(columns):
        if not column.prose and spare > 0:
            grow = min(spare, column.natural - widths[index])
            widths[index] += grow
            spare -= grow
    prose = [index for index, column in enumerate(columns) if column.prose]
    while spare > 0 and prose:
        index = max(prose, key=lambda i: columns[i].natural - widths[i])
        if columns[index].natural <= widths[index]:
            break
        widths[index] += 1
        spare -= 1
    return widths


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return GAP.join(cell + " " * (size - cell_len(cell)) for cell, size in zip(cells, widths)).rstrip()


def _detail_lines(pairs: list[tuple[str, str]], width: int) -> list[str]:
    """`header: value` items joined by GAP on indented lines of at most `width` cells; an item too long for
    a line of its own wraps at spaces, its continuation indented further."""
    lines: list[str] = []
    line = ""
    room = width - cell_len(DETAIL_INDENT)
    for header, value in pairs:
        item = f"{header}: " + "; ".join(part.strip() for part in value.split("\n"))
        joined = f"{line}{GAP}{item}" if line else item
        if cell_len(joined) <= room:
            line = joined
            continue
        if line:
            lines.append(DETAIL_INDENT + line)
        if cell_len(item) <= room:
            line = item
        else:
            lines += [DETAIL_INDENT + part for part in wrap(item, room, indent="  ")]
            line = ""
    if line:
        lines.append(DETAIL_INDENT + line)
    return lines
