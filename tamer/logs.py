"""structlog setup: JSON lines to the run folder's log, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog


class _JsonLines:
    """A structlog logger that appends each rendered JSON line to the log file."""

    def __init__(self, file: TextIO | None) -> None:
        self.file = file

    def msg(self, message: str) -> None:
        if self.file is not None:
            self.file.write(message + "\n")
            self.file.flush()

    info = warning = error = debug = exception = critical = msg


def configure_logging(log_file: Path | None, *, console: bool, process: str) -> None:
    """Log JSON lines to `log_file` (appended; supervisor and children share it) and, when `console`,
    readable lines to stderr."""
    handle = open(log_file, "a", buffering=1) if log_file is not None else None
    console_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    def to_console(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if console:
            sys.stderr.write(console_renderer(logger, method, dict(event)) + "\n")
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            lambda logger, method, event: {**event, "process": process},
            to_console,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *args: _JsonLines(handle),
        cache_logger_on_first_use=False,
    )
