"""Helpers that run the real `tamer` command in subprocesses and read what it left behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# The result child (EM/F1 + export after a run, ~5 s of start-up per run here) is left out of runs whose
# test is not about it; tests/integration/test_result.py and test_core.py's baseline keep it.
NO_RESULT = ["--set", "eval.squad_samples=0", "--set", "export.enabled=false"]
# One torch thread per child: on a 2-core machine under load (another test, a second pytest worker) two
# OpenMP threads spin against each other and a tiny step takes 5-10x longer (measured: 4.4 s vs 0.54 s).
ONE_THREAD = ["--set", "torch_threads=1"]
TINY = ["--preset", "tiny", *NO_RESULT, *ONE_THREAD]


def env(**extra: str) -> dict[str, str]:
    # COLUMNS/LINES: pytest-xdist's workers set COLUMNS=80, which would make piped output fit 80 columns; a test
    # that wants a width passes it
    out = {k: v for k, v in os.environ.items() if not k.startswith("TAMER_") and k not in ("COLUMNS", "LINES")}
    out.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)
    return out


def tamer(
    *args: str, home: Path, timeout: float = 600, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `tamer ARGS --home HOME` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "tamer", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**(extra_env or {})),
    )


def start(*args: str, home: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `tamer ARGS --home HOME` in the background; returns the process and the run id it printed first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tamer", *args, "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(**(extra_env or {})),
    )
    run_id = process.stdout.readline().strip()
    assert run_id, process.stderr.read()
    return process, run_id


def query(home: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(home / "tamer.db", timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_for(home: Path, sql: str, params: tuple, predicate, timeout: float = 120) -> list[tuple]:
    """Poll the database until `predicate(rows)` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (home / "tamer.db").exists():
            try:
                rows = query(home, sql, params)
                if predicate(rows):
                    return rows
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting on {sql} {params}")


def child_pid(home: Path, run_id: str, attempt: int) -> int:
    rows = wait_for(
        home, "SELECT pid FROM attempts WHERE run_id = ? AND attempt = ?", (run_id, attempt), lambda r: r and r[0][0]
    )
    return rows[0][0]


def kill_child_at_step(home: Path, run_id: str, attempt: int, step: int) -> int:
    """SIGKILL the child of `attempt` once it has logged `step`; returns the step it had reached."""
    pid = child_pid(home, run_id, attempt)
    wait_for(
        home,
        "SELECT max(step) FROM steps WHERE run_id = ? AND attempt = ?",
        (run_id, attempt),
        lambda r: (r[0][0] or 0) >= step,
    )
    os.kill(pid, signal.SIGKILL)
    return query(home, "SELECT max(step) FROM steps WHERE run_id = ? AND attempt = ?", (run_id, attempt))[0][0]


def run_id_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout.strip().splitlines()[0]


def final_weights(home: Path, run_id: str) -> dict:
    """Every tensor of the newest checkpoint's trainable weights (full model or LoRA adapter)."""
    run_dir = home / "runs" / run_id / "checkpoints"
    newest = max(run_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    files = sorted(newest.rglob("*.safetensors"))
    assert files, f"no weights in {newest}"
    weights = {}
    for file in files:
        weights.update({f"{file.parent.name}/{k}": v for k, v in load_file(file).items()})
    return weights


def final_steps(home: Path, run_id: str, column: str) -> list:
    """`column` of each optimizer step as finally trained (a step redone after a restart replaces the lost one)."""
    rows = query(
        home,
        f"""SELECT s.{column} FROM steps s JOIN (SELECT step, max(attempt) a FROM steps WHERE run_id = ?
                           GROUP BY step) l ON s.step = l.step AND s.attempt = l.a WHERE s.run_id = ? ORDER BY s.step""",
        (run_id, run_id),
    )
    return [value for (value,) in rows]


def sample_ids(home: Path, run_id: str) -> list[list[int]]:
    """The samples of each optimizer step as finally trained."""
    return [json.loads(ids) for ids in final_steps(home, run_id, "sample_ids")]


def attempts(home: Path, run_id: str) -> list[dict]:
    conn = sqlite3.connect(home / "tamer.db", timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY attempt", (run_id,))]
    finally:
        conn.close()


def events(home: Path, run_id: str) -> list[tuple[str, str]]:
    return query(home, "SELECT kind, message FROM events WHERE run_id = ? ORDER BY id", (run_id,))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
