"""Recovery history, timelines, plot data and the HTML report, on a run written row by row with known times.

The run: attempt 1 crashes at step 4 (checkpoint at 2, step 3 lost), attempt 2 restarts with the same
plan, redoes step 3, reaches 4, checkpoints, and dies of a CUDA OOM at step 5 (a memory snapshot is
taken); the ladder applies split_micro_batch and attempt 3 finishes at step 6.
"""

from __future__ import annotations

import html
import json
import time

import pytest

from tamer.errors import ConfigError
from tamer.inspect.history import failures, parse_kinds, parse_since, timeline
from tamer.state.db import Database

START = time.time() - 3 * 86400  # three days ago, so --since 2d excludes the run and 4d includes it
RUN_ID = "squad-20260101-000000-abcd"
GiB = 1024**3
SCRIPT = "<script>alert('x')</script>"


def _event(db: Database, attempt: int | None, at: float, kind: str, message: str, **detail) -> None:
    with db.write() as tables:
        tables["events"].insert(
            {
                "run_id": RUN_ID,
                "attempt": attempt,
                "time": START + at,
                "kind": kind,
                "message": message,
                "detail_json": json.dumps(detail) if detail else None,
            }
        )


def _attempt(
    db: Database,
    number: int,
    started: float,
    ended: float,
    outcome: str,
    *,
    rungs: list[str],
    reason: str,
    micro_batch_size: int,
    phase: str | None = None,
    step: int | None = None,
    message: str = "",
    sizes=None,
) -> None:
    plan = {"micro_batch_size": micro_batch_size, "grad_accumulation": 8 // micro_batch_size, "rungs": rungs}
    db.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": number,
            "plan_json": json.dumps(plan),
            "plan_summary": f"micro-batch {micro_batch_size}",
            "rungs_applied": json.dumps(rungs[-1:] if number > 1 and rungs else []),
            "reason": reason,
            "started_at": START + started,
            "resumed_from_step": 0,
        }
    )
    _event(db, number, started + 1, "start", f"attempt {number} training")
    db.update_attempt(
        RUN_ID,
        number,
        ended_at=START + ended,
        outcome=outcome,
        phase=phase,
        micro_batch_size=micro_batch_size,
        message=message,
        detail_json=json.dumps({"step": step, "sizes": sizes or {}, "peak_host_rss": 512 * 1024**2}),
    )


def _step(db: Database, attempt: int, step: int, at: float) -> None:
    db.insert_step(
        {
            "run_id": RUN_ID,
            "attempt": attempt,
            "step": step,
            "samples_consumed": 8 * step,
            "loss": 10.0 - step / 10,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens": 100,
            "tokens_per_s": 100.0,
            "step_time": 1.0,
            "micro_batch_size": 8,
            "grad_accumulation": 1,
            "mem_allocated": None,
            "mem_reserved": None,
            "mem_peak": None,
            "device_used": None,
            "host_rss": 500 * 1024**2 + step,
            "wall_time": START + at,
            "sample_ids": "[]",
        }
    )


@pytest.fixture
def db(tmp_path):
    database = Database(tmp_path / "tamer.db")
    database.insert_run(
        {
            "id": RUN_ID,
            "recipe": "squad",
            "preset": "tiny",
            "status": "running",
            "config_json": "{}",
            "run_dir": str(tmp_path),
            "created_at": START,
            "started_at": START,
            "total_steps": 6,
            "steps_done": 0,
            "samples_consumed": 0,
            "device_json": json.dumps({"kind": "cpu"}),
        }
    )
    _attempt(
        database,
        1,
        0,
        15,
        "crash",
        rungs=[],
        reason="first plan",
        micro_batch_size=8,
        phase="forward",
        step=4,
        message=f"RuntimeError: injected crash {SCRIPT}",
    )
    for step, at in ((1, 10), (2, 11), (3, 12)):
        _step(database, 1, step, at)
    _attempt(
        database,
        2,
        20,
        35,
        "cuda_oom",
        rungs=[],
        reason="restart after crash",
        micro_batch_size=8,
        phase="backward",
        step=5,
        message="OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB",
        sizes={"tried_to_allocate": GiB},
    )
    _event(database, 2, 22, "resume", "resumed from checkpoint step 2", step=2)
    _step(database, 2, 3, 30)
    _step(database, 2, 4, 31)
    _event(
        database, 2, 34, "memory_snapshot", "allocator history dumped", path="/runs/x/attempts/2/memory-snapshot.pickle"
    )
    _event(
        database, 2, 35.5, "escalate", "cuda_oom in backward: applied split_micro_batch", applied=["split_micro_batch"]
    )
    _attempt(
        database, 3, 36, 50, "done", rungs=["split_micro_batch"], reason="applied split_micro_batch", micro_batch_size=4
    )
    _event(database, 3, 40, "resume", "resumed from checkpoint step 4", step=4)
    _step(database, 3, 5, 45)
    _step(database, 3, 6, 46)
    database.update_run(RUN_ID, status="done", ended_at=START + 50)
    database.insert_eval(
        {
            "run_id": RUN_ID,
            "attempt": 3,
            "step": 6,
            "eval_loss": 9.25,
            "eval_tokens": 10,
            "eval_samples": 4,
            "eval_batch_size": 4,
            "wall_time": START + 48,
        }
    )
    yield database
    database.close()


def test_failures_report_outcome_recovery_and_cost(db):
    """Each failed attempt becomes one row with its phase, step, sizes, the action taken, and its lost time and steps."""
    crash, oom = failures(db, RUN_ID)
    assert (crash["attempt"], crash["outcome"], crash["phase"], crash["step"]) == (1, "crash", "forward", 4)
    assert crash["recovery"] == "restarted with the same plan" and crash["rungs_applied"] == []
    assert crash["steps_lost"] == 1  # step 3 was computed after checkpoint 2 and redone by attempt 2
    assert crash["time_lost_seconds"] == pytest.approx(16.0)  # failed at 15, got past step 3 at 31
    assert crash["next_resumed_from_step"] == 2
    assert (oom["attempt"], oom["outcome"], oom["tried_to_allocate"]) == (2, "cuda_oom", GiB)
    assert oom["recovery"] == "escalated" and oom["rungs_applied"] == ["split_micro_batch"]
    assert oom["steps_lost"] == 0  # checkpoint 4 kept everything attempt 2 did
    assert oom["time_lost_seconds"] == pytest.approx(10.0)  # failed at 35, step 5 done at 45
    assert oom["memory_snapshot"] == "/runs/x/attempts/2/memory-snapshot.pickle"
    assert crash["memory_snapshot"] is None


def test_time_lost_stops_at_the_next_failure(db):
    """A failure whose recovery is cut short by another failure counts time only up to that failure."""
    db.update_attempt(RUN_ID, 2, ended_at=START + 25)  # attempt 2 now fails before it gets past step 3
    crash = failures(db, RUN_ID)[0]
    assert crash["time_lost_seconds"] == pytest.approx(10.0)
    assert crash["recovered_at"] is None


def test_filters_by_kind_and_age(db):
    """--kind keeps only the named outcomes (done included when asked) and --since drops older failures."""
    assert [row["outcome"] for row in failures(db, kinds=["cuda_oom"])] == ["cuda_oom"]
    assert [row["attempt"] for row in failures(db, kinds=["done"])] == [3]
    assert failures(db, since_seconds=parse_since("2d")) == []
    assert len(failures(db, since_seconds=parse_since("4d"))) == 2


def test_failure_of_a_running_run_is_pending(db):
    """The last attempt of a run still running, failed with no successor yet, shows recovery pending."""
    db.update_attempt(RUN_ID, 3, outcome="host_oom", ended_at=START + 47)
    db.update_run(RUN_ID, status="running", ended_at=None)
    last = failures(db, RUN_ID)[-1]
    assert last["recovery"] == "pending"
    assert last["time_lost_seconds"] > 3 * 86400 - 60  # still losing time, measured up to now


@pytest.mark.parametrize(
    "text, seconds", [("30m", 1800), ("12h", 43200), ("2d", 172800), ("1w", 604800), ("1.5h", 5400)]
)
def test_parse_since_accepts_units(text, seconds):
    """--since reads a number and one of the units s, m, h, d, w."""
    assert parse_since(text) == seconds


@pytest.mark.parametrize("text", ["2", "two days", "5y", ""])
def test_parse_since_rejects_other_text(text):
    """--since without a known unit is a ConfigError that shows the accepted forms."""
    with pytest.raises(ConfigError, match="30m, 12h, 2d or 1w"):
        parse_since(text)


def test_parse_kinds_rejects_unknown_outcomes():
    """--kind names outcomes; an unknown one is a ConfigError listing the known ones."""
    assert parse_kinds("cuda_oom, host_oom") == ["cuda_oom", "host_oom"]
    with pytest.raises(ConfigError, match="cuda_oom"):
        parse_kinds("oom")


def test_timeline_totals_split_wall_time(db):
    """timeline() counts each step once, splits wall time into training, lost and other, and names the settled plan."""
    story = timeline(db, RUN_ID)
    totals = story["totals"]
    assert (totals["attempts"], totals["failures"], totals["steps"], totals["steps_redone"]) == (3, 2, 6, 1)
    assert totals["tokens"] == 600
    assert totals["wall_seconds"] == pytest.approx(50.0)
    assert totals["training_seconds"] == pytest.approx(6.0)  # six first computations of one second
    assert totals["lost_seconds"] == pytest.approx(26.0)
    assert totals["other_seconds"] == pytest.approx(18.0)
    assert story["settled_plan"]["attempt"] == 3 and story["settled_plan"]["settled"] is True
    assert story["settled_plan"]["rungs"] == ["split_micro_batch"]
    assert [a["resumed_from_step"] for a in story["attempts"]] == [0, 2, 4]
    assert (story["best_eval_loss"], story["best_eval_step"]) == (9.25, 6)


def test_plot_data_marks_failures_escalations_and_restarts(db):
    """plot_data puts a marker at each failure step, each escalation and each restart's checkpoint step."""
    from tamer.inspect.plot import plot_data

    data = plot_data(db, RUN_ID)
    assert sorted((m["step"], m["kind"]) for m in data["markers"]) == [
        (2, "restart"),
        (4, "crash"),
        (4, "restart"),
        (5, "cuda_oom"),
        (5, "escalate"),
    ]
    assert "split_micro_batch" in next(m["label"] for m in data["markers"] if m["kind"] == "escalate")
    assert data["train"]["step"] == [1, 2, 3, 4, 5, 6]
    assert data["redone"]["step"] == [3]
    assert list(data["memory"]) == ["host_rss"] and data["cap"] is None
    assert data["failure_peaks"]["step"] == [4, 5] and data["failure_peaks"]["bytes"] == [512 * 1024**2] * 2
    assert "3 attempts, 2 failures" in data["title"]
    assert data["eval"] == {"step": [6], "loss": [9.25]}


def test_plot_figure_has_requested_pixels(db, tmp_path):
    """The figure saves to exactly the width and height asked for."""
    from PIL import Image

    from tamer.inspect.plot import figure, plot_data

    path = tmp_path / "run.png"
    figure(plot_data(db, RUN_ID), 640, 360).savefig(path)
    assert Image.open(path).size == (640, 360)


def test_report_escapes_text_from_the_database(db):
    """Text from the database appears escaped in the report, never as live HTML."""
    from tamer.inspect.report import render

    page = render(db, RUN_ID, 600, 400)
    assert SCRIPT not in page
    assert html.escape(SCRIPT) in page
    assert "data:image/png;base64," in page
    assert "memory-snapshot.pickle" in page and "memory_viz" in page
