"""structlog setup: JSON lines appended to a log file (a run's `log.jsonl`, the daemon's `daemon.jsonl`).

What people read on a terminal or in a pipe is written apart from this (tamer/cli/progress.py): the event
lines and the progress bar or progress lines, built from the database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

import structlog


class _JsonLines:
    """A structlog logger that appends each rendered JSON line to the log file."""

    def __init__(self, file: TextIO) -> None:
        self.file = file

    def msg(self, message: str) -> None:
        self.file.write(message + "\n")
        self.file.flush()

    info = warning = error = debug = exception = critical = msg


def configure_logging(log_file: Path, *, process: str) -> None:
    """Log JSON lines to `log_file` (appended; a run's supervisor and children share theirs)."""
    handle = open(log_file, "a", buffering=1)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            lambda logger, method, event: {**event, "process": process},
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *args: _JsonLines(handle),
        cache_logger_on_first_use=False,
    )
