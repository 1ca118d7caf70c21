"""The real supervisor loop end to end with a fake child (tests/fake/child.py, no torch): each attempt is a
real process that lasts well under a second, so restarts, escalation, hangs and stops are checked in
the database exactly as `tamer run` leaves them."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tamer.config import build_config
from tamer.daemon.supervisor import Supervisor, create_run
from tamer.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_STOPPED_TERM
from tamer.state.db import Database
from tamer.state.home import Home

FAKE_CHILD = [str(Path(__file__).resolve().parents[1] / "fake" / "child.py")]


def supervise(tmp_path: Path, script: dict, sets: dict | None = None, during=None) -> tuple[int, str, Database]:
    """Run a CPU run whose attempts do what `script` says (see tests/fake/child.py) to its end:
    (exit code, run id, its database). `during(home, run_id)` runs in a thread meanwhile."""
    home = Home.resolve(tmp_path)
    options = {
        "restart_backoff": 0.0,
        "eval.squad_samples": 0,
        "export.enabled": False,
        "device": "cpu",
        **(sets or {}),
    }
    run_id = create_run(home, build_config("tiny", None, options, []))
    (home.run_dir(run_id) / "fake-child.json").write_text(json.dumps(script))
    thread = threading.Thread(target=during, args=(home, run_id), daemon=True) if during else None
    if thread:
        thread.start()
    code = Supervisor(home, run_id, child_program=FAKE_CHILD).supervise()
    if thread:
        thread.join(timeout=10)
    return code, run_id, Database(home.db_path)


def outcomes(db: Database, run_id: str) -> list[str]:
    return [attempt["outcome"] for attempt in db.attempts(run_id)]


def details(db: Database, run_id: str, kind: str) -> list[dict]:
    return [json.loads(event["detail_json"] or "{}") for event in db.events(run_id) if event["kind"] == kind]


def test_a_crash_restarts_the_same_plan_and_the_run_finishes(tmp_path):
    """A crash, then a clean attempt: a counted restart of the same plan, the run `done`, exit 0."""
    code, run_id, db = supervise(
        tmp_path, {"1": {"steps": [1, 2], "end": "crash"}, "default": {"steps": [3, 4], "end": "done"}}
    )
    assert code == EXIT_OK and outcomes(db, run_id) == ["crash", "done"]
    (restart,) = details(db, run_id, "restart")
    assert restart["cause"] == "crash" and restart["counted"] and restart["wait_seconds"] == 0.0
    attempts = db.attempts(run_id)
    assert (
        attempts[0]["plan_json"] == attempts[1]["plan_json"]
        and attempts[1]["reason"] == "restart without escalation: crash"
    )
    assert db.run(run_id)["status"] == "done" and db.run(run_id)["steps_done"] == 4


def test_crash_loop_fails_the_run(tmp_path):
    """The same crash at the same step, no progress: `failed` after crash_loop_limit attempts, exit 1."""
    code, run_id, db = supervise(tmp_path, {"default": {"steps": [1, 2], "end": "crash"}}, {"crash_loop_limit": 3})
    assert code == EXIT_FAILED and outcomes(db, run_id) == ["crash"] * 3
    run = db.run(run_id)
    assert run["status"] == "failed" and run["failure_reason"].startswith(
        "crash loop: crash at step 2 3 times in a row"
    )


def test_outside_kills_restart_on_their_own_backoff_past_every_crash_limit(tmp_path):
    """Three SIGKILLs tamer did not send (more than max_restarts=1 and crash_loop_limit=2 allow for crashes)
    wait kill_backoff doubling to its cap, and the run finishes."""
    code, run_id, db = supervise(
        tmp_path,
        {"default": {"end": "kill"}, "4": {"steps": [1], "end": "done"}},
        {"max_restarts": 1, "crash_loop_limit": 2, "kill_backoff": 0.05, "kill_backoff_max": 0.1},
    )
    assert code == EXIT_OK and outcomes(db, run_id) == ["outside_kill"] * 3 + ["done"]
    restarts = details(db, run_id, "restart")
    assert [(r["cause"], r["counted"], r["wait_seconds"]) for r in restarts] == [
        ("outside kill", False, 0.05),
        ("outside kill", False, 0.1),
        ("outside kill", False, 0.1),
    ]
    assert db.attempts(run_id)[2]["reason"].endswith("after waiting 0.1 s")


def test_oom_escalates_then_the_exhausted_ladder_fails_with_the_peak(tmp_path):
    """A training OOM climbs the only rung at once; the next OOM has nothing left: `failed`, naming what was tried and the peak."""
    code, run_id, db = supervise(
        tmp_path,
        {"default": {"steps": [1], "end": "oom", "phase": "backward"}},
        {"ladder.order": ["gradient_checkpointing"]},
    )
    assert code == EXIT_FAILED and outcomes(db, run_id) == ["cuda_oom", "cuda_oom"]
    (escalation,) = details(db, run_id, "escalate")
    assert escalation["applied"] == ["gradient_checkpointing"] and escalation["new_plan"]["gradient_checkpointing"]
    assert details(db, run_id, "restart")[0]["cause"] == "escalation"
    reason = db.run(run_id)["failure_reason"]
    assert (
        reason.startswith("out of memory and nothing left to try")
        and "already applied: gradient_checkpointing" in reason
    )
    assert "highest host memory (RSS)" in reason


def test_eval_oom_halves_only_the_eval_batch(tmp_path):
    """An OOM during evaluation restarts with half the eval batch and the training plan unchanged."""
    code, run_id, db = supervise(
        tmp_path, {"1": {"steps": [1], "end": "oom", "phase": "eval"}, "default": {"end": "done"}}
    )
    assert code == EXIT_OK and outcomes(db, run_id) == ["cuda_oom", "done"]
    first, second = (json.loads(attempt["plan_json"]) for attempt in db.attempts(run_id))
    assert second == {**first, "eval_batch_size": first["eval_batch_size"] // 2}


def test_a_silent_child_is_killed_as_hung_and_restarted(tmp_path):
    """No heartbeat past the load deadline: the supervisor SIGKILLs it (outcome `hang`, counted, same plan)."""
    code, run_id, db = supervise(
        tmp_path, {"1": {"end": "hang"}, "default": {"end": "done"}}, {"watchdog.load_timeout": 0.5}
    )
    assert code == EXIT_OK and outcomes(db, run_id) == ["hang", "done"]
    assert db.attempts(run_id)[0]["signal"] == signal.SIGKILL
    assert details(db, run_id, "hang")[0]["phase"] == "load" and details(db, run_id, "restart")[0]["counted"]


def test_a_config_error_fails_at_once_with_its_exit_code(tmp_path):
    """A failure a restart cannot fix ends the run `failed` with the child's exit code, never restarted."""
    code, run_id, db = supervise(tmp_path, {"default": {"end": "config_error"}})
    assert code == EXIT_CONFIG and outcomes(db, run_id) == ["config_error"]
    assert db.run(run_id)["failure_reason"] == "fake bad config"


def _signal_after(kind: str, attempts: int):
    """A `during` that SIGTERMs this process (the supervisor) once `attempts` attempts exist and an event of `kind` is logged."""

    def send(home: Home, run_id: str) -> None:
        deadline = time.time() + 20
        while time.time() < deadline:
            db = Database(home.db_path)
            seen = any(event["kind"] == kind for event in db.events(run_id)) and len(db.attempts(run_id)) >= attempts
            db.close()
            if seen:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    return send


@pytest.mark.skipif(sys.platform != "linux", reason="signals the test process itself")
def test_a_stop_signal_during_the_backoff_stops_without_another_attempt(tmp_path):
    """SIGTERM while waiting 30 s to restart after a crash: the wait ends at once, the run is `stopped` (exit 143), no new attempt."""
    started = time.monotonic()
    code, run_id, db = supervise(
        tmp_path,
        {"default": {"steps": [1, 2, 3], "end": "crash"}},
        {"restart_backoff": 30.0},
        during=_signal_after("restart", 1),
    )
    assert time.monotonic() - started < 15
    assert code == EXIT_STOPPED_TERM and outcomes(db, run_id) == ["crash"]
    assert db.run(run_id)["status"] == "stopped" and db.run(run_id)["failure_reason"] == "stopped by the user at step 3"


@pytest.mark.skipif(sys.platform != "linux", reason="signals the test process itself")
def test_a_stop_signal_mid_attempt_is_forwarded_and_the_run_stops(tmp_path):
    """SIGTERM to the supervisor while the child trains reaches the child, which stops: `stopped`, exit 143."""
    code, run_id, db = supervise(
        tmp_path, {"default": {"steps": [1, 2], "end": "wait"}}, during=_signal_after("attempt_start", 1)
    )
    assert code == EXIT_STOPPED_TERM and outcomes(db, run_id) == ["stopped"]
    assert db.run(run_id)["status"] == "stopped"


def test_tamer_stop_says_at_once_when_the_supervisor_dies_instead_of_stopping_the_run(tmp_path):
    """`tamer stop` sends SIGTERM to the process holding the run's lock; when that process dies without ending the
    run (here: a lock holder with SIGTERM's default action), stop says no supervisor holds the run (exit 5) at once,
    not after waiting out its timeout for a status that nobody will write."""
    import subprocess

    from tamer.daemon import queue
    from tamer.errors import StateError

    home = Home.resolve(tmp_path)
    run_id = create_run(home, build_config("tiny", None, {"device": "cpu"}, []))
    db = Database(home.db_path)
    db.update_run(run_id, status="running")
    db.close()
    lock = home.run_dir(run_id) / "lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from tamer.state.lock import PidLock; import time; held = PidLock(Path({str(lock)!r}), ''); held.acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(StateError, match=f"no supervisor holds it.*tamer resume {run_id}"):
            queue.stop(home, run_id, timeout=30)
        assert time.monotonic() - started < 10
        assert holder.wait(timeout=10) == -signal.SIGTERM
    finally:
        holder.kill()
