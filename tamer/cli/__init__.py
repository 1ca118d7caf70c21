"""The `tamer` command (typer): `tamer.cli:main` is the console script, `tamer.cli.app` the typer app.

The app, its shared options and its error handler live in tamer/cli/common.py; each commands_*.py
module registers its commands on that app when imported here. Nothing imports this package but the
entry points and tests, so there is no import cycle between the app and its commands.
"""

from __future__ import annotations

import sys

# Imported in the order `tamer --help` lists their commands (so not sorted).
# ruff: noqa: I001
from tamer.cli import commands_run  # noqa: F401, I001  (run, resume, runs, show, strategies)
from tamer.cli import commands_inspect  # noqa: F401  (history, steps, events, logs, sql, plot, report, doctor)
from tamer.cli import commands_plan  # noqa: F401
from tamer.cli import commands_queue  # noqa: F401  (submit, daemon, queue, cancel, status, stop)
from tamer.cli import commands_result  # noqa: F401  (export, eval, compare)
from tamer.cli import commands_notify  # noqa: F401  (notify test, sync)
from tamer import output
from tamer.cli.common import app, err_console
from tamer.errors import TamerError

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except TamerError as error:  # one raised outside a command's own handling (e.g. an unusable home)
        err_console.print(output.styled("error:", "red", f" {error}"), highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
