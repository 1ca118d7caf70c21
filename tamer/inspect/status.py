"""`tamer status`: where one run stands now: state, step, loss, speed, last event and time to go.

Speed and ETA come from the last RECENT_STEPS steps of the newest attempt, by wall clock between step
rows, so checkpoints and evaluations in that window count too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tamer.errors import StateError
from tamer.state import queries
from tamer.state.db import Database
from tamer.state.lock import lock_holder

RECENT_STEPS = 10


def newest_run_id(db: Database) -> str:
    run_id = queries.newest_run_id(db)
    if run_id is None:
        raise StateError(f"no runs in {db.path} yet; start one with `tamer run squad` or `tamer submit squad`")
    return run_id


def supervised(run: dict[str, Any]) -> bool | None:
    """Whether a live supervisor holds the run's lock: None unless the database says it is running. A supervisor
    killed with -9 (or lost with its machine) leaves the run `running` in the database with nobody behind it."""
    if run["status"] != "running":
        return None
    return lock_holder(Path(run["run_dir"]) / "lock") is not None


def unsupervised_note(run: dict[str, Any]) -> str:
    return (
        f"nobody supervises run {run['id']}: its supervisor (pid {run['supervisor_pid'] or '?'}) is gone, killed or "
        f"lost with its machine; `tamer resume {run['id']}` continues it from its last checkpoint"
    )


def run_status(db: Database, run_id: str | None = None) -> dict[str, Any]:
    """The state of `run_id` (default: the running run, else the newest) as plain data."""
    run = db.run(run_id or newest_run_id(db))
    alive = supervised(run)
    recent = queries.latest_attempt_steps(db, run["id"], RECENT_STEPS)
    seconds_per_step = _seconds_per_step(recent)
    speeds = [row["tokens_per_s"] for row in recent if row["tokens_per_s"]]
    step, total = run["steps_done"] or 0, run["total_steps"]
    eta = max(total - step, 0) * seconds_per_step if alive and total and seconds_per_step else None
    event = queries.last_event(db, run["id"])
    attempt = queries.last_attempt_number(db, run["id"])
    return {
        "id": run["id"],
        "status": run["status"],
        "step": step,
        "total_steps": total,
        "loss": run["final_loss"],
        "validation_loss": run["final_eval_loss"],
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "seconds_per_step": seconds_per_step,
        **token_use(recent),
        "eta_seconds": eta,
        "eta_at": time.time() + eta if eta is not None else None,
        "attempt": attempt,
        "queue_position": queries.queue_position(db, run["id"]) if run["status"] == "queued" else None,
        "supervisor_pid": run["supervisor_pid"] if alive else None,
        "supervised": alive,
        "note": unsupervised_note(run) if alive is False else None,
        "created_at": run["created_at"],
        "started_at": run["started_at"],
        "ended_at": run["ended_at"],
        "failure_reason": run["failure_reason"],
        "last_event": event,
    }


def token_use(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Useful (non-pad) tokens per second of step time, and the share of computed tokens that were
    padding, over step rows with `useful_tokens`, `computed_tokens` and `step_time` (None without counts)."""
    counted = [row for row in rows if row["useful_tokens"] is not None and row["computed_tokens"]]
    seconds = sum(row["step_time"] or 0.0 for row in counted)
    useful = sum(row["useful_tokens"] for row in counted)
    computed = sum(row["computed_tokens"] for row in counted)
    return {
        "useful_tokens_per_s": useful / seconds if seconds else None,
        "padding_fraction": 1 - useful / computed if computed else None,
    }


def _seconds_per_step(recent: list[dict[str, Any]]) -> float | None:
    """Wall clock per step between the oldest and newest of `recent`; None on an attempt's first step alone, whose
    time is mostly warm-up (compiling the layers: 78 s against 0.1 s a step seen with LoRA) and no pace."""
    if len(recent) >= 2 and recent[-1]["step"] > recent[0]["step"]:
        return (recent[-1]["wall_time"] - recent[0]["wall_time"]) / (recent[-1]["step"] - recent[0]["step"])
    return None
