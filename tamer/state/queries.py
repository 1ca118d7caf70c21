"""Named queries on the tamer database for the parts outside tamer/state: the queue, the live progress
lines, `tamer status` and `history`, the planner's calibration, de-escalation and the child.

Imported, never run. The supervisor's mirror (tamer/daemon/mirror.py) reads its cursors here too. Every statement tamer runs lives here or in tamer/state/db.py (a unit test,
tests/unit/test_sql_home.py, fails when SQL text appears elsewhere); the one exception is `tamer sql`,
which runs the user's own read-only query (tamer/inspect/query.py). Writes use `Database.write()`: one
short `BEGIN IMMEDIATE` transaction each.
"""

from __future__ import annotations

import json
from typing import Any

from tamer.state.db import Database

# --- the queue (tamer/daemon/queue.py) ------------------------------------------------------------


def enqueue(db: Database, run_id: str, submitted_at: float) -> None:
    """Append a registered run to the queue."""
    with db.write() as writer:
        writer["queue"].insert({"run_id": run_id, "submitted_at": submitted_at})


def waiting_runs(db: Database) -> list[dict[str, Any]]:
    """The queue's runs not started yet, next first, each with its submitted_at and claimed_at."""
    return list(
        db.db.query("""SELECT r.*, q.submitted_at, q.claimed_at FROM queue q JOIN runs r ON r.id = q.run_id
                               WHERE r.status = 'queued' ORDER BY q.submitted_at, r.created_at""")
    )


def queue_position(db: Database, run_id: str) -> int | None:
    """1 for the next run the daemon starts, 2 after it...; None for a run not waiting in the queue."""
    ids = [row["id"] for row in waiting_runs(db)]
    return ids.index(run_id) + 1 if run_id in ids else None


def running_runs(db: Database) -> list[dict[str, Any]]:
    """Running runs, submitted or not, oldest start first; submitted_at is the creation time of a run
    started with `tamer run`."""
    return list(
        db.db.query("""SELECT r.*, coalesce(q.submitted_at, r.created_at) AS submitted_at FROM runs r
                               LEFT JOIN queue q ON q.run_id = r.id WHERE r.status = 'running' ORDER BY r.started_at""")
    )


def cancel_unclaimed(db: Database, run_id: str, now: float) -> bool:
    """Mark a queued run `cancelled` unless a daemon has claimed it; whether it was cancelled."""
    with db.write() as writer:
        return bool(
            writer.execute(
                """UPDATE runs SET status = 'cancelled', ended_at = ?, failure_reason = 'cancelled before it started'
               WHERE id = ? AND status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM queue WHERE run_id = ? AND claimed_at IS NOT NULL)""",
                [now, run_id, run_id],
            ).rowcount
        )


def release_stale_claims(db: Database) -> None:
    """Claims on runs still `queued` (a daemon died while starting them) are dropped: they wait again."""
    with db.write() as writer:
        writer.execute("""UPDATE queue SET claimed_at = NULL WHERE claimed_at IS NOT NULL
                          AND run_id IN (SELECT id FROM runs WHERE status = 'queued')""")


def running_queued_runs(db: Database) -> list[dict[str, Any]]:
    """Submitted runs marked `running`, in submission order (the daemon resumes those whose supervisor died)."""
    return list(
        db.db.query("""SELECT r.* FROM queue q JOIN runs r ON r.id = q.run_id
                               WHERE r.status = 'running' ORDER BY q.submitted_at""")
    )


def claim_next(db: Database, now: float) -> str | None:
    """Claim the next waiting, unclaimed run for this daemon in one transaction; its id, or None."""
    with db.write() as writer:
        row = writer.execute("""SELECT q.run_id FROM queue q JOIN runs r ON r.id = q.run_id
                                WHERE r.status = 'queued' AND q.claimed_at IS NULL
                                ORDER BY q.submitted_at, r.created_at LIMIT 1""").fetchone()
        if row is not None:
            writer.execute("UPDATE queue SET claimed_at = ? WHERE run_id = ?", [now, row[0]])
    return row[0] if row else None


def set_queue_daemon(db: Database, run_id: str, pid: int) -> None:
    """Record the daemon that started (or last resumed) a queued run."""
    with db.write() as writer:
        writer.execute("UPDATE queue SET daemon_pid = ? WHERE run_id = ?", [pid, run_id])


def unclaim(db: Database, run_id: str) -> None:
    """Drop this daemon's claim on a run it did not start: the next daemon starts it."""
    with db.write() as writer:
        writer.execute("UPDATE queue SET claimed_at = NULL WHERE run_id = ?", [run_id])


# --- runs, attempts, events -----------------------------------------------------------------------


def newest_run_id(db: Database) -> str | None:
    """The id of the run that matters now: the running one started last, else the run created last; None in
    an empty database (a queued run waits behind a running one, so the running one is what `status` shows)."""
    row = db.conn.execute(
        "SELECT id FROM runs ORDER BY status = 'running' DESC, "
        "CASE WHEN status = 'running' THEN started_at ELSE created_at END DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def last_attempt_number(db: Database, run_id: str) -> int | None:
    """The run's highest attempt number, or None before its first attempt."""
    return db.conn.execute("SELECT max(attempt) FROM attempts WHERE run_id = ?", [run_id]).fetchone()[0]


def last_event(db: Database, run_id: str) -> dict[str, Any] | None:
    """The run's newest event (time, kind, message), or None."""
    row = db.conn.execute(
        "SELECT time, kind, message FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1", [run_id]
    ).fetchone()
    return {"time": row[0], "kind": row[1], "message": row[2]} if row else None


def events_after(db: Database, run_id: str, after_id: int) -> list[dict[str, Any]]:
    """The run's events whose id is above `after_id`, oldest first."""
    return list(db.db.query("SELECT * FROM events WHERE run_id = ? AND id > ? ORDER BY id", [run_id, after_id]))


def in_process_split_details(db: Database, run_id: str, attempt: int) -> list[dict[str, Any]]:
    """The parsed detail of each `in_process_split` event of one attempt, oldest first."""
    return [
        json.loads(detail or "{}")
        for (detail,) in db.conn.execute(
            "SELECT detail_json FROM events WHERE run_id = ? AND attempt = ? AND kind = 'in_process_split' ORDER BY id",
            [run_id, attempt],
        )
    ]


# --- steps and evals --------------------------------------------------------------------------------


def step_columns(db: Database) -> list[str]:
    """The columns of the steps table, in table order (a CSV header when there is no row)."""
    return list(db.db["steps"].columns_dict)


def recent_steps(db: Database, run_id: str, attempt: int, up_to_step: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` steps of one attempt at or below `up_to_step`, newest first, with the columns of a progress line."""
    return [
        dict(row)
        for row in db.db.query(
            "SELECT attempt, step, loss, tokens, step_time, wall_time, mem_reserved, host_rss FROM steps "
            "WHERE run_id = ? AND attempt = ? AND step <= ? ORDER BY step DESC LIMIT ?",
            [run_id, attempt, up_to_step, limit],
        )
    ]


def steps_after(db: Database, run_id: str, attempt: int, step: int) -> list[dict[str, Any]]:
    """(attempt, step) of every step row after `step` of `attempt`, in attempt and step order."""
    return list(
        db.db.query(
            "SELECT attempt, step FROM steps WHERE run_id = ? AND (attempt > ? OR (attempt = ? AND step > ?)) "
            "ORDER BY attempt, step",
            [run_id, attempt, attempt, step],
        )
    )


def latest_attempt_steps(db: Database, run_id: str, limit: int) -> list[dict[str, Any]]:
    """The last `limit` steps of the newest attempt that wrote steps, oldest first, with timing and token columns."""
    return list(
        db.db.query(
            """SELECT step, wall_time, step_time, tokens_per_s, useful_tokens, computed_tokens FROM steps WHERE run_id = ?
           AND attempt = (SELECT max(attempt) FROM steps WHERE run_id = ?) ORDER BY step DESC LIMIT ?""",
            [run_id, run_id, limit],
        )
    )[::-1]


def step_timeline(db: Database, run_id: str) -> list[dict[str, Any]]:
    """Every step row's timing and progress columns, in wall-clock order."""
    return list(
        db.db.query(
            "SELECT attempt, step, wall_time, step_time, tokens, samples_consumed FROM steps WHERE run_id = ? "
            "ORDER BY wall_time, attempt, step",
            [run_id],
        )
    )


def step_memory_peaks(db: Database, run_id: str, attempt: int) -> tuple[int | None, int | None]:
    """(highest mem_reserved, highest mem_peak) over one attempt's steps; None where none was read."""
    row = db.conn.execute(
        "SELECT max(mem_reserved), max(mem_peak) FROM steps WHERE run_id = ? AND attempt = ?", [run_id, attempt]
    ).fetchone()
    return row[0], row[1]


def highest_reserved(db: Database, run_id: str, attempts: list[int]) -> int | None:
    """The highest mem_reserved over the steps of `attempts`, or None."""
    marks = ",".join("?" * len(attempts))
    return db.conn.execute(
        f"SELECT max(mem_reserved) FROM steps WHERE run_id = ? AND attempt IN ({marks})", [run_id, *attempts]
    ).fetchone()[0]


def tokens_per_second(db: Database, run_id: str, attempts: list[int]) -> list[float]:
    """Every measured tokens_per_s of the steps of `attempts`."""
    marks = ",".join("?" * len(attempts))
    return [
        rate
        for (rate,) in db.conn.execute(
            f"SELECT tokens_per_s FROM steps WHERE run_id = ? AND attempt IN ({marks}) AND tokens_per_s IS NOT NULL",
            [run_id, *attempts],
        )
    ]


def last_step_reserved(db: Database, run_id: str, attempt: int) -> tuple[int | None] | None:
    """(mem_reserved of the attempt's last step,), or None before its first step."""
    row = db.conn.execute(
        "SELECT mem_reserved FROM steps WHERE run_id = ? AND attempt = ? ORDER BY step DESC LIMIT 1", [run_id, attempt]
    ).fetchone()
    return (row[0],) if row else None


def eval_recorded(db: Database, run_id: str, step: int) -> bool:
    """Whether a validation loss is recorded for `step` (by any attempt)."""
    return bool(db.conn.execute("SELECT 1 FROM evals WHERE run_id = ? AND step = ?", [run_id, step]).fetchone())


def best_eval(db: Database, run_id: str) -> dict[str, Any] | None:
    """The step and loss of the run's lowest validation loss, or None before its first evaluation."""
    rows = list(db.db.query("SELECT step, eval_loss FROM evals WHERE run_id = ? ORDER BY eval_loss LIMIT 1", [run_id]))
    return rows[0] if rows else None


# --- what the mirror forwarded (tamer/daemon/mirror.py) ---------------------------------------------


def forwarded(db: Database, run_id: str, sink: str) -> dict[str, Any] | None:
    """The forwarding cursor of one sink (a tracker's name, or `notify`) for a run, or None before its first save."""
    rows = list(db.db.query("SELECT * FROM forwarded WHERE run_id = ? AND sink = ?", [run_id, sink]))
    return rows[0] if rows else None


def save_forwarded(db: Database, run_id: str, sink: str, now: float, **values: Any) -> None:
    """Store (insert or update) a sink's cursor columns given in `values`."""
    with db.write() as writer:
        writer["forwarded"].upsert({"run_id": run_id, "sink": sink, "updated_at": now, **values}, pk=("run_id", "sink"))


def new_steps(db: Database, run_id: str, after_step: int) -> list[dict[str, Any]]:
    """One row per optimizer step above `after_step`, the latest attempt's where a restart redid it, in step order."""
    return list(
        db.db.query(
            """SELECT s.* FROM steps s JOIN (SELECT step, max(attempt) AS attempt FROM steps WHERE run_id = ? AND step > ?
           GROUP BY step) latest ON s.step = latest.step AND s.attempt = latest.attempt
           WHERE s.run_id = ? ORDER BY s.step""",
            [run_id, after_step, run_id],
        )
    )


def new_evals(db: Database, run_id: str, after_step: int) -> list[dict[str, Any]]:
    """One validation loss per step above `after_step` (the latest attempt's), in step order."""
    return list(
        db.db.query(
            """SELECT e.* FROM evals e JOIN (SELECT step, max(attempt) AS attempt FROM evals WHERE run_id = ? AND step > ?
           GROUP BY step) latest ON e.step = latest.step AND e.attempt = latest.attempt
           WHERE e.run_id = ? ORDER BY e.step""",
            [run_id, after_step, run_id],
        )
    )


def new_squad_scores(db: Database, run_id: str, after_id: int) -> list[dict[str, Any]]:
    """SQuAD score rows whose id is above `after_id`, oldest first."""
    return list(db.db.query("SELECT * FROM squad_scores WHERE run_id = ? AND id > ? ORDER BY id", [run_id, after_id]))


def last_event_id(db: Database, run_id: str) -> int:
    """The id of the run's newest event (0 when it has none)."""
    return db.conn.execute("SELECT coalesce(max(id), 0) FROM events WHERE run_id = ?", [run_id]).fetchone()[0]


def last_step_time(db: Database, run_id: str) -> float | None:
    """When the run's newest step row was written (its wall_time), or None before its first step."""
    return db.conn.execute("SELECT max(wall_time) FROM steps WHERE run_id = ?", [run_id]).fetchone()[0]
