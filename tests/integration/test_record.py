"""The record tells the truth when a person stops a run or its supervisor dies: a second Ctrl-C is a stop,
not a crash; a Ctrl-C is answered at once, also while the child is still starting; a run whose supervisor
was killed says so in `status` and `logs -f` instead of claiming to run."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.integration.runs import TINY, attempts, pid_alive, query, start, tamer, wait_for

LONG = ["run", "squad", *TINY, "--max-steps", "40", "--set", "checkpoint_every=2", "--set", "max_seq_len=64"]


def _read_until(stream, needle: str, timeout: float) -> tuple[str, float]:
    """Lines of `stream` until one contains `needle`: (what was read, seconds it took)."""
    started, seen = time.monotonic(), []
    while time.monotonic() - started < timeout:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return "".join(seen), time.monotonic() - started
    raise AssertionError(f"{needle!r} not printed within {timeout} s:\n{''.join(seen)}")


def test_a_second_ctrl_c_stops_at_once_and_is_recorded_as_a_stop(tmp_path):
    """First SIGINT: a line at once saying the step will be checkpointed; second SIGINT: the child is killed
    now; the attempt is `stopped` (not a crash), the run `stopped`, exit 130, and SIGINT is named, not SIGTERM."""
    home = tmp_path / "home"
    process, run_id = start(*LONG, "--inject", "stall:step=3,phase=forward,seconds=60", home=home)
    wait_for(home, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 2)
    time.sleep(0.5)  # inside the stalled step 3
    process.send_signal(signal.SIGINT)
    told, seconds = _read_until(process.stderr, "SIGINT: attempt 1 checkpoints at the end of this step", 10)
    assert seconds < 5, told
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "SIGINT again: killing attempt 1 now" in stderr
    ended = attempts(home, run_id)
    assert [a["outcome"] for a in ended] == ["stopped"] and "second stop request" in ended[0]["message"]
    assert query(home, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("stopped",)]
    history = json.loads(tamer("history", "--run", run_id, "--json", home=home).stdout)
    assert all(row["outcome"] != "crash" for row in history)
    assert "SIGTERM" not in stderr


def test_a_ctrl_c_while_the_child_is_starting_ends_the_run_within_seconds(tmp_path):
    """A SIGINT while the child loads (held there 60 s by an injected stall) is told at once and ends the run in
    seconds, not after the load: nothing of the attempt needed saving."""
    home = tmp_path / "home"
    process, run_id = start(*LONG, "--inject", "stall:phase=load,seconds=60", home=home)
    wait_for(
        home,
        "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'attempt_start'",
        (run_id,),
        lambda rows: rows[0][0] == 1,
    )
    time.sleep(2)  # the child is past its imports, in the stalled load
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    told, _ = _read_until(process.stderr, "is still starting (nothing to checkpoint yet): stopping it now", 10)
    process.communicate(timeout=30)
    assert time.monotonic() - sent < 20, "the stop waited for the stalled load"
    assert process.returncode == 130
    assert [a["outcome"] for a in attempts(home, run_id)] == ["stopped"]


def test_status_and_logs_follow_say_when_nobody_supervises_a_run(tmp_path):
    """After the supervisor is killed with -9 (its child dies with it), `status` marks the run unsupervised and
    says how to resume it, and `logs -f` ends with that line instead of waiting forever."""
    home = tmp_path / "home"
    process, run_id = start(*LONG, "--inject", "stall:step=3,phase=forward,seconds=120", home=home)
    wait_for(home, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 2)
    child = attempts(home, run_id)[0]["pid"]
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)
    status = tamer("status", run_id, home=home)
    said = " ".join(status.stdout.split())  # the note wraps to the width
    assert status.returncode == 0 and "(no supervisor)" in said and f"tamer resume {run_id}" in said
    facts = json.loads(tamer("status", run_id, "--json", home=home).stdout)
    assert facts["status"] == "running" and facts["supervised"] is False and facts["eta_seconds"] is None
    followed = tamer("logs", run_id, "-f", home=home, timeout=60)
    assert followed.returncode == 0 and f"nobody supervises run {run_id}" in followed.stdout.splitlines()[-1]


def test_status_without_an_id_shows_the_running_run_not_a_queued_one(tmp_path):
    """With one run running and a later one queued behind it, `tamer status` shows the running one."""
    home = tmp_path / "home"
    process, run_id = start(*LONG, "--inject", "stall:step=3,phase=forward,seconds=120", home=home)
    try:
        wait_for(home, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 1)
        queued = tamer("submit", "squad", *TINY, home=home)
        assert queued.returncode == 0, queued.stderr
        facts = json.loads(tamer("status", "--json", home=home).stdout)
        assert facts["id"] == run_id and facts["status"] == "running"
    finally:
        process.kill()
        process.wait(timeout=30)
