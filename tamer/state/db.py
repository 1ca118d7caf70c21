"""The SQLite database (`$TAMER_HOME/tamer.db`): runs, attempts, steps, evals, events.

Schema and migrations through sqlite-utils. WAL, a 30 s busy timeout and short `BEGIN IMMEDIATE`
write transactions, so the CLI can read while a run writes and a SIGKILL of any process loses nothing
that was committed. Columns are described in tamer/state/columns.py (docs/reference/database.md is generated from both).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils import Migrations

from tamer.errors import StateError

MIGRATION_SET = "tamer"
BUSY_TIMEOUT_SECONDS = 30.0

migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "recipe": str,
            "preset": str,
            "status": str,  # queued, running, done, failed, stopped
            "config_json": str,
            "config_hash": str,
            "run_dir": str,
            "created_at": float,
            "started_at": float,
            "ended_at": float,
            "total_steps": int,
            "steps_done": int,
            "samples_consumed": int,
            "final_loss": float,
            "final_eval_loss": float,
            "best_eval_loss": float,
            "failure_reason": str,
            "gpu_mem_cap": int,
            "host_mem_cap": int,
            "device_json": str,
            "supervisor_pid": int,
            "exit_code": int,
        },
        pk="id",
    )
    db["attempts"].create(
        {
            "run_id": str,
            "attempt": int,
            "plan_json": str,
            "plan_summary": str,
            "rungs_applied": str,  # JSON list: rungs this attempt added over the previous plan
            "reason": str,  # why this plan (first plan, or the escalation that led here)
            "pid": int,
            "started_at": float,
            "first_step_at": float,
            "ended_at": float,
            "resumed_from_step": int,
            "last_step": int,
            "exit_code": int,
            "signal": int,
            "outcome": str,
            "phase": str,
            "micro_batch_size": int,
            "message": str,
            "detail_json": str,
            "peak_allocated": int,
            "peak_reserved": int,
        },
        pk=("run_id", "attempt"),
    )
    db["steps"].create(
        {
            "run_id": str,
            "attempt": int,
            "step": int,
            "samples_consumed": int,
            "loss": float,
            "lr": float,
            "grad_norm": float,
            "tokens": int,
            "tokens_per_s": float,
            "step_time": float,
            "micro_batch_size": int,
            "grad_accumulation": int,
            "mem_allocated": int,
            "mem_reserved": int,
            "mem_peak": int,
            "device_used": int,
            "host_rss": int,
            "wall_time": float,
            "sample_ids": str,  # JSON list of example indices, in the order they were trained
        },
        pk=("run_id", "attempt", "step"),
    )
    db["evals"].create(
        {
            "run_id": str,
            "attempt": int,
            "step": int,
            "eval_loss": float,
            "eval_tokens": int,
            "eval_samples": int,
            "eval_batch_size": int,
            "wall_time": float,
        },
        pk=("run_id", "attempt", "step"),
    )
    db["events"].create(
        {"id": int, "run_id": str, "attempt": int, "time": float, "kind": str, "message": str, "detail_json": str},
        pk="id",
    )
    db["steps"].create_index(["run_id", "step"])
    db["events"].create_index(["run_id", "time"])


@migrations()
def m002_queue(db: sqlite_utils.Database) -> None:
    """The daemon's queue: one row per `tamer submit` (tamer/daemon/queue.py). A run in it is the
    daemon's to start, or to resume when its supervisor died; runs.status gains `cancelled` (taken
    off the queue before it started)."""
    db["queue"].create(
        {
            "run_id": str,
            "submitted_at": float,
            "claimed_at": float,  # when a daemon began starting it; cleared if that daemon died first
            "daemon_pid": int,  # the daemon that started (or last resumed) it
        },
        pk="run_id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["queue"].create_index(["submitted_at"])


@migrations()
def m003_distributed(db: sqlite_utils.Database) -> None:
    """Multi-GPU runs (torchrun): each attempt's number of processes, and every rank's memory per step
    (the step's mem_* columns hold the highest value over the ranks)."""
    db["attempts"].add_column("world_size", int)
    db["steps"].add_column("rank_memory_json", str)  # JSON list, one {mem_allocated, ..., host_rss} per rank


@migrations()
def m004_squad_scores(db: sqlite_utils.Database) -> None:
    """SQuAD scores by generation (tamer eval, and after each completed run): one row per metric
    (exact_match, f1) of one evaluation pass of one checkpoint."""
    db["squad_scores"].create(
        {
            "id": int,
            "run_id": str,
            "step": int,
            "attempt": int,  # the run's last attempt when the checkpoint was evaluated
            "plan": str,  # the checkpoint's plan summary (what the weights were trained under)
            "metric": str,  # exact_match or f1, in [0, 1]
            "value": float,
            "questions": int,
            "seconds": float,  # the whole pass: decoding and scoring
            "data": str,  # which questions: `held-out` (the run's validation slice) or a file
            "wall_time": float,
        },
        pk="id",
    )
    db["squad_scores"].create_index(["run_id", "step"])


@migrations()
def m005_token_counts(db: sqlite_utils.Database) -> None:
    """Tokens per step that matter for speed: useful (the samples' own tokens, as `tokens`) and computed
    (rows x row length: padding or a packed row's tail included); null on rows written before."""
    db["steps"].add_column("useful_tokens", int)
    db["steps"].add_column("computed_tokens", int)


@migrations()
def m006_forwarded(db: sqlite_utils.Database) -> None:
    """What the supervisor has forwarded out of the database (tamer/daemon/mirror.py), one row per run and sink
    (a tracker such as `tensorboard`, or `notify`): the last event id, step, evaluation step and SQuAD score id
    sent, and the tracker's own run id (W&B, MLflow), so a resumed run continues the same tracker run without
    drawing a point twice."""
    db["forwarded"].create(
        {
            "run_id": str,
            "sink": str,
            "event_id": int,
            "step": int,
            "eval_step": int,
            "score_id": int,
            "external_id": str,  # the tracker's run id
            "updated_at": float,
        },
        pk=("run_id", "sink"),
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    return conn


def connect_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to the database at `path`. On a read-only file system (a finished night on a
    mounted disk) SQLite cannot create the WAL's shared-memory file, so it opens the file as immutable: nothing
    can write it there anyway."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(
            f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        if os.access(path.parent, os.W_OK):
            raise
        conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    return conn


class Database:
    """The tamer database at `path` (created and migrated on first open; `read_only`: opened for reading alone,
    which works in a home this user may not write)."""

    def __init__(self, path: str | Path, *, create: bool = True, read_only: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise StateError(f"no tamer database at {self.path}; start a run first (tamer run squad) or pass --home")
        if read_only:
            try:
                self.conn = connect_reader(self.path)
                self.db = sqlite_utils.Database(self.conn)
                tables = set(self.db.table_names())
                if "_sqlite_migrations" not in tables:
                    raise StateError(
                        f"{self.path} is an SQLite database but not a tamer one (tables: {', '.join(sorted(tables)) or 'none'}); "
                        "point --home or TAMER_HOME elsewhere"
                    )
                if migrations.pending(self.db):
                    raise StateError(
                        f"{self.path} is from an older tamer: open it once with a writable home to upgrade it "
                        "(any command that writes, such as `tamer run`), then it can be read here"
                    )
            except sqlite3.DatabaseError as error:
                raise StateError(
                    f"{self.path} is not a usable tamer database ({error}); point --home elsewhere"
                ) from None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = _connect(self.path)
            self.db = sqlite_utils.Database(self.conn)
            self._check_and_migrate()
        except sqlite3.DatabaseError as error:
            raise StateError(
                f"{self.path} is not a usable tamer database ({error}); move it aside or point --home elsewhere"
            ) from None

    def _check_and_migrate(self) -> None:
        tables = set(self.db.table_names())
        if tables and "_sqlite_migrations" not in tables:
            raise StateError(
                f"{self.path} is an SQLite database but not a tamer one (tables: {', '.join(sorted(tables))}); "
                "point --home or TAMER_HOME elsewhere"
            )
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if migrations.pending(self.db):
            # Inside BEGIN IMMEDIATE, sqlite-utils runs each migration in a savepoint: two processes
            # opening a new database at once cannot both migrate it.
            with self.write():
                migrations.apply(self.db)

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One short write transaction (BEGIN IMMEDIATE: takes the write lock up front, waits up to 30 s)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- writes ---------------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["runs"].insert(row)

    def update_run(self, run_id: str, **values: Any) -> None:
        with self.write() as db:
            db["runs"].update(run_id, values)

    def insert_attempt(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["attempts"].insert(row)

    def update_attempt(self, run_id: str, attempt: int, **values: Any) -> None:
        with self.write() as db:
            db["attempts"].update((run_id, attempt), values)

    def insert_step(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["steps"].insert(row, replace=True)
            db["runs"].update(
                row["run_id"],
                {"steps_done": row["step"], "samples_consumed": row["samples_consumed"], "final_loss": row["loss"]},
            )
            if row["attempt"] is not None:
                db.execute(
                    "UPDATE attempts SET last_step = ?, first_step_at = coalesce(first_step_at, ?) WHERE run_id = ? AND attempt = ?",
                    [row["step"], row["wall_time"], row["run_id"], row["attempt"]],
                )

    def insert_eval(self, row: dict[str, Any]) -> None:
        with self.write() as db:
            db["evals"].insert(row, replace=True)
            best = db.execute("SELECT min(eval_loss) FROM evals WHERE run_id = ?", [row["run_id"]]).fetchone()[0]
            db["runs"].update(row["run_id"], {"final_eval_loss": row["eval_loss"], "best_eval_loss": best})

    def insert_squad_scores(self, rows: list[dict[str, Any]]) -> None:
        with self.write() as db:
            db["squad_scores"].insert_all(rows)

    def event(self, run_id: str, kind: str, message: str, attempt: int | None = None, **detail: Any) -> None:
        with self.write() as db:
            db["events"].insert(
                {
                    "run_id": run_id,
                    "attempt": attempt,
                    "time": time.time(),
                    "kind": kind,
                    "message": message,
                    "detail_json": json.dumps(detail, default=str) if detail else None,
                }
            )

    # --- reads ----------------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any]:
        """The run whose id is `run_id` or starts with it (unique prefix)."""
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            rows = list(
                self.db.query("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at", [run_id.replace("%", "") + "%"])
            )
        if not rows:
            raise StateError(f"no run '{run_id}' in {self.path}; `tamer runs` lists them")
        if len(rows) > 1:
            raise StateError(
                f"'{run_id}' matches {len(rows)} runs ({', '.join(r['id'] for r in rows[:4])}...); give more of the id"
            )
        return rows[0]

    def runs(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM runs ORDER BY created_at"))

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM attempts WHERE run_id = ? ORDER BY attempt", [run_id]))

    def next_attempt_number(self, run_id: str) -> int:
        row = self.conn.execute("SELECT max(attempt) FROM attempts WHERE run_id = ?", [run_id]).fetchone()
        return (row[0] or 0) + 1

    def steps(self, run_id: str, attempt: int | None = None) -> list[dict[str, Any]]:
        if attempt is None:
            return list(self.db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY step, attempt", [run_id]))
        return list(
            self.db.query("SELECT * FROM steps WHERE run_id = ? AND attempt = ? ORDER BY step", [run_id, attempt])
        )

    def effective_steps(self, run_id: str) -> list[dict[str, Any]]:
        """One row per optimizer step: the one from the latest attempt (a step redone after a restart
        replaces the lost one)."""
        return list(
            self.db.query(
                """SELECT s.* FROM steps s JOIN (SELECT step, max(attempt) AS attempt FROM steps WHERE run_id = ?
                   GROUP BY step) latest ON s.step = latest.step AND s.attempt = latest.attempt
                   WHERE s.run_id = ? ORDER BY s.step""",
                [run_id, run_id],
            )
        )

    def evals(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM evals WHERE run_id = ? ORDER BY step, attempt", [run_id]))

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM events WHERE run_id = ? ORDER BY id", [run_id]))

    def squad_scores(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM squad_scores WHERE run_id = ? ORDER BY id", [run_id]))
