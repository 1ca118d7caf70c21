"""What "fits the terminal" means, checked on a command's output (tests/unit/test_cli_output.py,
tests/integration/test_output_widths.py): no line wider than the width (but a single word longer than
the width, a path, on a line of its own), no `…`, and every header word whole."""

from __future__ import annotations

import re

from rich.cells import cell_len

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """The text without terminal styles and carriage returns (a pty writes \\r\\n)."""
    return ANSI.sub("", text).replace("\r", "")


def _tokens(line: str) -> dict[int, str]:
    """The words of a line by the column each starts at."""
    return {match.start(): match.group() for match in re.finditer(r"\S+", line)}


def problems(text: str, width: int, headers: tuple[str, ...] = ()) -> list[str]:
    """Every way `text` fails to fit `width` columns; `headers` are the headers of the tables it prints,
    each of whose words must appear whole (in a header row or as `header:` in a detail line) and never
    split across two header lines."""
    text = plain(text)
    lines = text.splitlines()
    found = []
    for line in lines:
        if cell_len(line) > width and len(line.split()) > 1:
            found.append(f"wider than {width} columns ({cell_len(line)}): {line!r}")
    if "…" in text:
        found.append("a value cut with …")
    words = {word.rstrip(":") for header in headers for word in header.split()}
    for word in sorted(words):
        if not re.search(rf"(?<!\S){re.escape(word)}:?(?!\S)", text):
            found.append(f"header word {word!r} is not printed whole")
    for upper, lower in zip(lines, lines[1:]):
        below = _tokens(lower)
        for column, token in _tokens(upper).items():
            if column in below and token + below[column] in words:
                found.append(
                    f"header {token + below[column]!r} broken inside a word: {token!r} above {below[column]!r}"
                )
    return found


# The headers of the tables each command prints (on a CPU run: no GPU memory columns in `steps`).
HEADERS = {
    "runs": ("id", "recipe", "status", "steps", "started", "duration", "final loss", "EM", "F1"),
    "show": ("attempt", "seconds", "steps", "outcome", "phase", "plan", "why this plan", "time", "event", "message"),
    "strategies": ("#", "rung", "exact", "new process", "requires", "saves / costs"),
    "history": (
        "failed at",
        "attempt",
        "outcome",
        "phase",
        "step",
        "then",
        "time lost",
        "steps lost",
        "micro-batch",
        "tried to allocate",
        "peak",
    ),
    "steps": (
        "attempt",
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "step_time",
        "batch",
        "samples_consumed",
        "host_rss",
    ),
    "events": ("time", "attempt", "event", "message"),
    "plan": ("#", "peak GiB", "peak in", "fits", "speed", "model", "plan"),
    "queue": ("position", "id", "status", "steps", "submitted"),
    "compare": ("run", "status", "EM", "F1", "val loss", "final loss", "steps", "tokens", "wall time", "plan"),
    "sql": (),
    "doctor": (),
    "status": (),
}
