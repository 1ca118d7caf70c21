"""Unattended operation: the queue, the daemon (real processes), status, stop and cancel.

Runs are tiny and short: 4 steps on a 39-question SQuAD file, a checkpoint every 2 steps. Where a test
must catch a run in the middle, an injected stall holds one step's forward for a few seconds. The
short commands (submit, queue, cancel, stop, status) run in-process through typer's CliRunner; the
daemon, `tamer run` and every supervisor and child are real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamer.cli import app
from tamer.daemon.queue import lock_holder
from tamer.recipes.squad import BUNDLED_DATA
from tests.integration.runs import TINY, attempts, env, events, pid_alive, query, start, tamer, wait_for

runner = CliRunner()


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> list[str]:
    """Options for a run of a few seconds of training: a small data file, short sequences, batch 2."""
    document = json.loads(Path(BUNDLED_DATA).read_text())
    article = document["data"][0]
    small = {
        "version": document.get("version"),
        "data": [{"title": article["title"], "paragraphs": article["paragraphs"][:8]}],
    }
    path = tmp_path_factory.mktemp("data") / "squad-small.json"
    path.write_text(json.dumps(small))
    return [
        *TINY,
        "--data",
        str(path),
        "--max-steps",
        "4",
        "--set",
        "checkpoint_every=2",
        "--set",
        "max_seq_len=128",
        "--set",
        "eval_samples=8",
        "--set",
        "effective_batch_size=2",
        "--set",
        "micro_batch_size=2",
    ]


def invoke(home: Path, *args: str):
    return runner.invoke(app, [*args, "--home", str(home)])


def submit(home: Path, fast: list[str], *extra: str) -> str:
    result = invoke(home, "submit", "squad", *fast, *extra)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[0]


def start_daemon(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tamer", "daemon", *args, "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def run_row(home: Path, run_id: str) -> dict:
    columns = ("status", "started_at", "ended_at", "steps_done", "supervisor_pid")
    return dict(zip(columns, query(home, f"SELECT {', '.join(columns)} FROM runs WHERE id = ?", (run_id,))[0]))


def wait_dead(*pids: int, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while any(pid_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)


def test_daemon_runs_the_queue_in_order_and_never_starts_a_cancelled_run(tmp_path, fast):
    """`tamer daemon --exit-when-empty` runs the submitted jobs one after another, oldest first, and skips
    one cancelled while queued; cancelling a finished run exits 2."""
    first, cancelled, last = (submit(tmp_path, fast) for _ in range(3))
    result = invoke(tmp_path, "cancel", cancelled)
    assert result.exit_code == 0 and "cancelled" in result.stdout, result.output
    listing = json.loads(invoke(tmp_path, "queue", "--json").stdout)
    assert [(row["position"], row["id"], row["status"]) for row in listing] == [
        (1, first, "queued"),
        (2, last, "queued"),
    ]

    daemon = tamer("daemon", "--exit-when-empty", home=tmp_path, timeout=300)
    assert daemon.returncode == 0, daemon.stderr
    one, two, never = run_row(tmp_path, first), run_row(tmp_path, last), run_row(tmp_path, cancelled)
    assert (one["status"], two["status"], never["status"]) == ("done", "done", "cancelled")
    assert two["started_at"] >= one["ended_at"]  # one job at a time, in submission order
    assert never["started_at"] is None and attempts(tmp_path, cancelled) == []

    for finished in (first, cancelled):
        refused = invoke(tmp_path, "cancel", finished)
        assert refused.exit_code == 2 and "already" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_kill_9_of_the_daemon_takes_its_job_down_and_the_next_daemon_resumes_it(tmp_path, fast):
    """kill -9 of the daemon leaves no process of its job alive; a new daemon resumes that job from its
    checkpoint (a `lost` attempt, then `done`) before starting the one still queued."""
    first = submit(
        tmp_path, fast, "--inject", "stall:step=4,phase=forward,seconds=60,attempt=1"
    )  # holds attempt 1 at step 3
    second = submit(tmp_path, fast)
    daemon = start_daemon(tmp_path, "--poll", "0.2")
    try:
        wait_for(
            tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (first,), lambda rows: (rows[0][0] or 0) >= 3
        )
        # the step-2 checkpoint is written in the background: on a loaded machine it may commit after step 3
        committed = tmp_path / "runs" / first / "checkpoints" / "step-2" / "manifest.json"
        deadline = time.time() + 60
        while not committed.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert committed.exists(), "the step-2 checkpoint never committed"
        supervisor = run_row(tmp_path, first)["supervisor_pid"]
        child = attempts(tmp_path, first)[0]["pid"]
        assert pid_alive(supervisor) and pid_alive(child)
    finally:
        daemon.kill()
        daemon.wait(timeout=30)
    wait_dead(supervisor, child)
    assert not pid_alive(supervisor), "the job's supervisor outlived the daemon"
    assert not pid_alive(child), "the job's child outlived the daemon"
    assert (run_row(tmp_path, first)["status"], run_row(tmp_path, second)["status"]) == ("running", "queued")
    orphan = invoke(tmp_path, "stop", first)
    assert orphan.exit_code == 5 and "no supervisor" in orphan.stderr, orphan.output

    restarted = tamer("daemon", "--exit-when-empty", home=tmp_path, timeout=300)
    assert restarted.returncode == 0, restarted.stderr
    rows = attempts(tmp_path, first)
    assert [row["outcome"] for row in rows] == ["lost", "done"]
    assert rows[0]["last_step"] == 3 and rows[1]["resumed_from_step"] == 2
    assert query(tmp_path, "SELECT DISTINCT step FROM steps WHERE run_id = ? ORDER BY step", (first,)) == [
        (1,),
        (2,),
        (3,),
        (4,),
    ]
    assert any(kind == "daemon_job" and "resumed" in message for kind, message in events(tmp_path, first))
    one, two = run_row(tmp_path, first), run_row(tmp_path, second)
    assert (one["status"], two["status"]) == ("done", "done")
    assert two["started_at"] >= one["ended_at"]


def test_status_then_stop_of_a_running_run(tmp_path, fast):
    """While `tamer run` trains, `status --json` shows it running with its step and an ETA; `tamer stop`
    then ends it `stopped` (exit 143) with no process left and a checkpoint at the step it stopped."""
    process, run_id = start("run", "squad", *fast, "--inject", "stall:step=3,phase=forward,seconds=5", home=tmp_path)
    try:
        wait_for(
            tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 2
        )
        child = attempts(tmp_path, run_id)[0]["pid"]
        facts = json.loads(invoke(tmp_path, "status", run_id, "--json").stdout)
        assert (facts["id"], facts["status"], facts["step"], facts["total_steps"]) == (run_id, "running", 2, 4)
        assert facts["eta_seconds"] > 0 and facts["seconds_per_step"] > 0 and facts["last_event"]["kind"]
        result = invoke(tmp_path, "stop", run_id)
        assert result.exit_code == 0 and "stopped" in result.stdout, result.output
    except BaseException:
        process.kill()
        raise
    assert process.wait(timeout=60) == 143
    wait_dead(child)
    assert not pid_alive(child)
    row = run_row(tmp_path, run_id)
    assert row["status"] == "stopped" and row["steps_done"] < 4
    checkpoints = sorted(
        (tmp_path / "runs" / run_id / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])
    )
    manifest = json.loads((checkpoints[-1] / "manifest.json").read_text())
    assert manifest["step"] == row["steps_done"]


def test_second_daemon_is_refused_and_sigterm_stops_the_job_at_a_checkpoint(tmp_path, fast):
    """While a detached daemon runs a job, another `tamer daemon` (detached or not) exits 6 with one line;
    SIGTERM to the daemon then stops the job at a checkpoint (`stopped`) and no process is left."""
    run_id = submit(tmp_path, fast, "--inject", "stall:step=3,phase=forward,seconds=4")
    started = tamer("daemon", "--detach", "--poll", "0.2", home=tmp_path, timeout=120)
    assert started.returncode == 0, started.stderr
    pid = int(started.stdout.strip())
    try:
        assert lock_holder(tmp_path / "daemon.lock") == pid
        for extra in ((), ("--detach",)):
            refused = tamer("daemon", "--exit-when-empty", *extra, home=tmp_path, timeout=120)
            assert refused.returncode == 6, refused.stderr
            assert f"pid {pid}" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        wait_for(
            tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 2
        )
        supervisor, child = run_row(tmp_path, run_id)["supervisor_pid"], attempts(tmp_path, run_id)[0]["pid"]
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_dead(pid, timeout=60)
    assert not pid_alive(pid)
    wait_dead(supervisor, child)
    assert not pid_alive(supervisor) and not pid_alive(child)
    row = run_row(tmp_path, run_id)
    assert row["status"] == "stopped" and row["steps_done"] < 4
    assert any(
        kind == "checkpoint" and f"step {row['steps_done']} " in message for kind, message in events(tmp_path, run_id)
    )
    assert "daemon_end" in (tmp_path / "daemon.log").read_text()


def test_systemd_unit_restarts_only_what_a_restart_can_fix(tmp_path):
    """`--print-systemd-unit` prints a unit that runs this home's daemon, restarts it on failure but not
    after config, data, model, state or lock errors, and gives a checkpoint time to finish."""
    result = invoke(tmp_path, "daemon", "--print-systemd-unit")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"ExecStart={sys.executable} -m tamer daemon --home {tmp_path.resolve()}" in lines
    assert f"Environment=TAMER_HOME={tmp_path.resolve()}" in lines
    for line in (
        "Restart=on-failure",
        "RestartPreventExitStatus=2 3 4 5 6",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=600",
    ):
        assert line in lines
