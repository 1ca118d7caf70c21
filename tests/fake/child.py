"""`python tests/fake/child.py RUN_DIR ATTEMPT`: a child that imports no torch, for the supervisor's loop tests.

It does what `RUN_DIR/fake-child.json` says for its attempt (key: the attempt number, else "default"):
`steps` optimizer steps recorded the way the real child records them (attempts.last_step and
first_step_at, runs.steps_done), then `end`: done, crash, oom (a CUDA OOM in `phase`), config_error,
kill (SIGKILL itself, as an operator would), hang (sleep, heartbeat silent) or wait (until SIGTERM,
then stop as the real child does at a step boundary; a crash after 20 s without one). Run by `Supervisor(..., child_program=...)`.
"""

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 15.00 GiB of which 1.02 GiB is free."
)


def main() -> int:
    run_dir, attempt = Path(sys.argv[1]), int(sys.argv[2])
    script = json.loads((run_dir / "fake-child.json").read_text())
    todo = script.get(str(attempt), script["default"])
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    db_path = json.loads((run_dir / "run.json").read_text())["db_path"]
    report_path = run_dir / "attempts" / str(attempt) / "exit.json"
    step = 0
    conn = sqlite3.connect(db_path, timeout=30)
    for step in todo.get("steps", []):
        with conn:
            conn.execute(
                "UPDATE attempts SET last_step = ?, first_step_at = coalesce(first_step_at, ?) WHERE run_id = ? AND attempt = ?",
                [step, time.time() - todo.get("trained_seconds", 0), run_id, attempt],
            )
            conn.execute("UPDATE runs SET steps_done = ? WHERE id = ?", [step, run_id])
    conn.close()
    end = todo["end"]
    report = {"step": step or None, "phase": todo.get("phase", "forward"), "micro_batch_size": 8}
    if end == "done":
        report_path.write_text(json.dumps({"status": "done", "step": step}))
        return 0
    if end in ("crash", "oom"):
        exc_type, message = ("RuntimeError", "fake crash") if end == "crash" else ("OutOfMemoryError", CUDA_OOM)
        report_path.write_text(json.dumps({**report, "status": "exception", "exc_type": exc_type, "message": message}))
        return 10
    if end == "config_error":
        report_path.write_text(
            json.dumps({"status": "error", "error_kind": "config_error", "message": "fake bad config", "exit_code": 2})
        )
        return 2
    if end == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if end == "wait":
        stopped = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
        deadline = time.time() + 20  # never outlive a test that failed to signal
        while not stopped and time.time() < deadline:
            time.sleep(0.01)
        if not stopped:
            report_path.write_text(
                json.dumps({**report, "status": "exception", "exc_type": "TimeoutError", "message": "no SIGTERM came"})
            )
            return 10
        report_path.write_text(json.dumps({"status": "stopped", "signal": signal.SIGTERM, "step": step}))
        return 128 + signal.SIGTERM
    time.sleep(3600)  # hang
    return 1


if __name__ == "__main__":
    sys.exit(main())
