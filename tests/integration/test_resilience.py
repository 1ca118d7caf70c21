"""Unattended operation, each fault injected for real: SIGTERM mid-step and mid-checkpoint, a hung
child, a crash loop, a full disk, and a SQLite writer SIGKILLed while a reader polls."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time

from tamer.state import checkpoints
from tests.integration.runs import (
    TINY,
    attempts,
    events,
    kill_child_at_step,
    pid_alive,
    query,
    run_id_of,
    start,
    tamer,
    wait_for,
)

BASE = ["run", "squad", *TINY, "--set", "restart_backoff=0", "--set", "checkpoint_every=2"]


def _newest_checkpoint_step(home, run_id) -> int:
    found, _ = checkpoints.newest_valid(home / "runs" / run_id)
    return found.step


def _assert_no_process_left(home, run_id) -> None:
    pids = [pid for (pid,) in query(home, "SELECT pid FROM attempts WHERE run_id = ?", (run_id,))]
    deadline = time.time() + 10
    while any(pid_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in pids)


def test_sigterm_mid_step_checkpoints_and_exits_143(tmp_path):
    """SIGTERM to the supervisor mid-run: the child checkpoints at the next step boundary, the run is
    `stopped`, the supervisor exits 143 and no process is left behind; resume then finishes the run."""
    process, run_id = start(*BASE, "--max-steps", "40", home=tmp_path)
    wait_for(tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda r: (r[0][0] or 0) >= 3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    _assert_no_process_left(tmp_path, run_id)
    status, steps_done = query(tmp_path, "SELECT status, steps_done FROM runs WHERE id = ?", (run_id,))[0]
    assert status == "stopped" and steps_done < 40
    assert _newest_checkpoint_step(tmp_path, run_id) == steps_done  # nothing trained is lost
    assert attempts(tmp_path, run_id)[0]["outcome"] == "stopped"


def test_sigterm_mid_checkpoint_finishes_that_checkpoint(tmp_path):
    """SIGTERM while a synchronous checkpoint is being written: the checkpoint completes and verifies, and
    the run stops right after it without writing another."""
    process, run_id = start(
        *BASE,
        "--max-steps",
        "40",
        "--set",
        "checkpoint_async=false",
        "--inject",
        "stall:phase=checkpoint,step=4,seconds=4",
        home=tmp_path,
    )
    heartbeat = tmp_path / "runs" / run_id / "attempts" / "1" / "heartbeat"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        heartbeat.exists()
        and heartbeat.read_text().startswith("checkpoint")
        and query(tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,))[0][0] == 4
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert query(tmp_path, "SELECT status, steps_done FROM runs WHERE id = ?", (run_id,)) == [("stopped", 4)]
    assert _newest_checkpoint_step(tmp_path, run_id) == 4
    assert not list((tmp_path / "runs" / run_id / "checkpoints").glob("*.tmp"))


def test_sigterm_during_a_background_write_waits_for_it_and_saves_the_last_step(tmp_path):
    """A slow disk stalls the background write of step 4: training goes on meanwhile (the loop does not
    wait for the disk); SIGTERM then waits for that write, saves the last step too, and both verify."""
    process, run_id = start(
        *BASE, "--max-steps", "40", "--inject", "stall:phase=checkpoint,step=4,seconds=8", home=tmp_path
    )
    checkpoint_dir = tmp_path / "runs" / run_id / "checkpoints"
    wait_for(tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda r: (r[0][0] or 0) >= 6)
    assert (checkpoint_dir / "step-4.tmp").is_dir() and not (
        checkpoint_dir / "step-4"
    ).exists()  # still writing, training on
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    status, steps_done = query(tmp_path, "SELECT status, steps_done FROM runs WHERE id = ?", (run_id,))[0]
    assert status == "stopped" and steps_done >= 6
    assert _newest_checkpoint_step(tmp_path, run_id) == steps_done
    assert checkpoints.verify(checkpoint_dir / "step-4")[0] is not None
    assert not list(checkpoint_dir.glob("*.tmp"))
    saved = [message for kind, message in events(tmp_path, run_id) if kind == "checkpoint"]
    assert saved[0].startswith("checkpoint step 2 saved") and saved[1].startswith("checkpoint step 4 saved")
    assert "skipped while it was writing" in saved[1]


def test_hung_child_is_killed_and_restarted_and_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A child that stops heartbeating is SIGKILLed at the deadline (outcome `hang`, no escalation); in the
    next attempt a full disk fails one checkpoint: the partial one is removed, the previous stays, training goes on."""
    result = tamer(
        *BASE,
        "--max-steps",
        "6",
        "--set",
        "watchdog.step_timeout=10",  # generous: a loaded CI machine must not look hung
        "--inject",
        "hang:step=4,phase=forward,attempt=1",
        "--inject",
        "enospc:phase=checkpoint,step=4,attempt=2",
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(tmp_path, run_id)
    assert [r["outcome"] for r in rows] == ["hang", "done"]
    assert rows[0]["signal"] == signal.SIGKILL and json.loads(rows[0]["plan_json"]) == json.loads(rows[1]["plan_json"])
    kinds = dict(events(tmp_path, run_id))
    assert "no heartbeat" in kinds["hang"] and "forward" in kinds["hang"]
    assert (
        "disk full while writing checkpoint step 4" in kinds["checkpoint_failed"]
        and "step 2 stays the newest" in kinds["checkpoint_failed"]
    )
    assert query(tmp_path, "SELECT status, steps_done FROM runs WHERE id = ?", (run_id,)) == [("done", 6)]


def test_crash_loop_at_the_same_step_fails_the_run(tmp_path):
    """A child that crashes at the same step every time, with no progress, ends `failed` after
    crash_loop_limit attempts instead of looping until max_restarts."""
    result = tamer(*BASE, "--max-steps", "6", "--set", "crash_loop_limit=3", "--inject", "crash:step=3", home=tmp_path)
    assert result.returncode == 1
    run_id = run_id_of(result)
    assert [r["outcome"] for r in attempts(tmp_path, run_id)] == ["crash"] * 3
    status, reason = query(tmp_path, "SELECT status, failure_reason FROM runs WHERE id = ?", (run_id,))[0]
    assert (
        status == "failed"
        and reason.startswith("crash loop: crash at step 3 3 times in a row")
        and "injected crash" in reason
    )


def test_sqlite_writer_sigkilled_while_a_reader_polls_loses_no_committed_row(tmp_path):
    """SIGKILL of the child (the step writer) while another process polls the database: every step row
    committed before the kill survives unchanged and the database passes integrity_check."""
    process, run_id = start(*BASE, "--max-steps", "10", home=tmp_path)
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            result = tamer("steps", run_id, "--json", home=tmp_path, timeout=60)
            if result.returncode != 0:
                errors.append(result.stderr)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        kill_child_at_step(tmp_path, run_id, 1, 5)
        committed = query(
            tmp_path,
            "SELECT step, loss, sample_ids FROM steps WHERE run_id = ? AND attempt = 1 ORDER BY step",
            (run_id,),
        )
        assert process.wait(timeout=300) == 0
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert (
        query(
            tmp_path,
            "SELECT step, loss, sample_ids FROM steps WHERE run_id = ? AND attempt = 1 ORDER BY step",
            (run_id,),
        )
        == committed
    )
    conn = sqlite3.connect(tmp_path / "tamer.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
