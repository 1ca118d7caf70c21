"""Every command that prints a table fits the terminal, on a home with real runs: at COLUMNS 80 and 120,
on a pty and piped, no line is wider than the width (but a path longer than it, alone on its line),
nothing is cut with `…` and no header is broken inside a word (tests/output_widths.py). Also `tamer
daemon` on a terminal prints the event lines a run prints, not structlog lines.

The home (one module fixture) lies under a long folder name, so its export paths are longer than 80:
- run A (`tamer run`, card ladder): OOMs in the backward of step 6 twice and escalates
  (gradient_checkpointing, then split_micro_batch), finishes 12 steps, then scores SQuAD EM/F1 on 8
  questions and exports;
- run B (submitted, then run by `tamer daemon --exit-when-empty` on an 80-column pty): an OOM recovered
  in process, then EM/F1;
- run C: submitted and left queued.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from tests.integration.runs import ONE_THREAD, TINY, env, run_id_of, tamer
from tests.output_widths import HEADERS, plain, problems

SCORED = ["--preset", "tiny", *ONE_THREAD, "--set", "eval.squad_samples=8"]
COMMANDS = [
    ["runs"],
    ["show", "{A}"],
    ["show", "{B}"],
    ["history"],
    ["steps", "{A}"],
    ["events", "{A}"],
    ["queue"],
    ["status", "{A}"],
    ["strategies"],
    ["plan", "--preset", "tiny", "--gpu-mem", "16GiB"],
    ["plan", "--gpu-mem", "16GiB", "--all"],
    ["compare", "{A}", "{B}"],
    ["sql", "SELECT * FROM attempts"],
]
# doctor (a torch probe in a child: ~6 s a call) is checked at both widths with the probe's output faked in
# tests/unit/test_cli_output.py; its tables hold no run data.


def on_pty(args: list[str], width: int, home: Path, timeout: float = 600) -> str:
    """What `tamer ARGS --home HOME` writes to a terminal `width` columns wide (COLUMNS set too), stdout and stderr."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, width, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "tamer", *args, "--home", str(home)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env(COLUMNS=str(width), TERM="xterm-256color"),
        close_fds=True,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=timeout) == 0, b"".join(chunks).decode(errors="replace")
    return plain(b"".join(chunks).decode())


def piped(args: list[str], width: int, home: Path) -> str:
    """What `tamer ARGS --home HOME` writes to pipes with COLUMNS=width, stdout then stderr."""
    result = tamer(*args, home=home, extra_env={"COLUMNS": str(width)})
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The home with runs A, B and C (see the module docstring), their ids, and what the daemon printed."""
    root = tmp_path_factory.mktemp("widths") / "a-home-folder-with-a-name-long-enough-that-export-paths-pass-80-columns"
    first = tamer(
        "run",
        "squad",
        *SCORED,
        "--max-steps",
        "12",
        "--set",
        "checkpoint_every=4",
        "--inject",
        "oom:step=6,phase=backward,min_micro_batch=8",
        "--set",
        "ladder.mode=card",
        "--set",
        "ladder.order=[gradient_checkpointing,split_micro_batch]",
        home=root,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    second = tamer(
        "submit",
        "squad",
        *SCORED,
        "--max-steps",
        "6",
        "--set",
        "export.enabled=false",
        "--inject",
        "oom:step=4,phase=backward,min_micro_batch=8",
        home=root,
    )
    assert second.returncode == 0, second.stderr
    daemon = on_pty(["daemon", "--exit-when-empty", "--poll", "0.2"], 80, root)
    third = tamer("submit", "squad", *TINY, "--max-steps", "4", home=root)
    assert third.returncode == 0, third.stderr
    return {"root": root, "A": run_id_of(first), "B": run_id_of(second), "C": run_id_of(third), "daemon": daemon}


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("terminal", [True, False], ids=["pty", "piped"])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: "-".join(arg.strip("{}-") for arg in args[:2]))
def test_every_table_fits(home, args, terminal, width):
    """The command's output fits `width` columns: no wider line (but a lone path), no `…`, no broken header."""
    args = [arg.format(**home) for arg in args]
    text = (on_pty if terminal else piped)(args, width, home["root"])
    assert problems(text, width, HEADERS[args[0]]) == []
    if args[0] in ("runs", "queue", "history"):
        assert home["A" if args[0] != "queue" else "C"] in text


def test_show_prints_the_export_path_and_scores_whole(home):
    """At 80 columns `tamer show A` prints its export path (longer than 80) whole on a line of its own, and its EM/F1."""
    lines = on_pty(["show", home["A"]], 80, home["root"]).splitlines()
    export = home["root"] / "runs" / home["A"] / "export"
    assert len(str(export)) > 80 and str(export.resolve()) in lines
    assert any(line.startswith("SQuAD EM ") for line in lines)


def test_daemon_on_a_terminal_prints_event_lines(home):
    """`tamer daemon` on a terminal prints its own lines and its job's event lines, as `tamer run` does,
    and no structlog line; structlog's JSON lines go to HOME/daemon.jsonl."""
    lines = home["daemon"].splitlines()
    for expected in (
        "daemon_start: daemon pid",
        "daemon_job: the daemon",
        "attempt 1 start: attempt 1 training",
        "attempt 1 in_process_split: CUDA OOM in backward",
        f"job_end: run {home['B']} done at step 6/6",
        "daemon_end:",
    ):
        assert any(expected in line for line in lines), expected
    assert not any('"event"' in line or "[info" in line or "event=" in line for line in lines)
    logged = [json.loads(line) for line in (home["root"] / "daemon.jsonl").read_text().splitlines()]
    assert [entry["event"] for entry in logged] == ["daemon_start", "job_start", "job_end", "daemon_end"]
