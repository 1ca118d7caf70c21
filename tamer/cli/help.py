"""`tamer --help` and every command's `--help`: summaries whole, and words broken only at spaces.

click cuts each command's summary (the first sentence of its help) in the command list to one line,
ending it with `...`, and its text wrapper breaks words at hyphens (`--node-` / `rank 1`). The app's
group class, WholeHelpGroup, lists every summary whole (wrapped at spaces) and has the group's help and
each command's written by HelpFormatter, which wraps at spaces only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from typer.core import TyperGroup

# Holds a hyphen in place while click wraps a text: its wrapper breaks after `-`, never after this.
HELD_HYPHEN = "\u2011"
# typer's own click (recent typer versions carry a copy of click inside): its Context and HelpFormatter.
ClickContext = TyperGroup.context_class
ClickHelpFormatter = ClickContext.formatter_class


class HelpFormatter(ClickHelpFormatter):
    """click's help formatter, breaking lines at spaces only (never after a hyphen inside a word)."""

    def _holding_hyphens(self, write: Callable[[], None]) -> None:
        start = len(self.buffer)
        write()
        self.buffer[start:] = [text.replace(HELD_HYPHEN, "-") for text in self.buffer[start:]]

    def write_text(self, text: str) -> None:
        self._holding_hyphens(lambda: super(HelpFormatter, self).write_text(text.replace("-", HELD_HYPHEN)))

    def write_dl(self, rows: Sequence[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        held = [(term, text.replace("-", HELD_HYPHEN)) for term, text in rows]
        self._holding_hyphens(lambda: super(HelpFormatter, self).write_dl(held, col_max, col_spacing))


class HelpContext(ClickContext):
    formatter_class = HelpFormatter


class WholeHelpGroup(TyperGroup):
    """The `tamer` group: its command list shows each summary whole, and help is written by HelpFormatter."""

    context_class = HelpContext

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in self.commands.values():
            command.context_class = HelpContext

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=sys.maxsize)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
