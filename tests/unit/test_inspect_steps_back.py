"""What `tamer show`/`history`/`plot` say about outside kills and steps back, on a run written row by row:
attempt 1 is killed from outside and restarted after 10 s, attempt 2 runs out of memory under a squeeze,
attempt 3 trains the escalated plan at 50 tokens/s and is stopped to step back, attempt 4 trains at 150."""

from __future__ import annotations

import json
import time

import pytest

from tamer.inspect.history import deescalations, failures, timeline
from tamer.inspect.plot import plot_data
from tamer.state.db import Database

START = time.time() - 3600
RUN_ID = "squad-20260101-000000-beef"


def _event(db: Database, attempt: int, at: float, kind: str, message: str, **detail) -> None:
    with db.write() as tables:
        tables["events"].insert(
            {
                "run_id": RUN_ID,
                "attempt": attempt,
                "time": START + at,
                "kind": kind,
                "message": message,
                "detail_json": json.dumps(detail),
            }
        )


def _attempt(
    db: Database, number: int, started: float, ended: float, outcome: str, summary: str, last_step: int
) -> None:
    db.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": number,
            "plan_json": "{}",
            "plan_summary": summary,
            "rungs_applied": "[]",
            "reason": "",
            "started_at": START + started,
        }
    )
    db.update_attempt(RUN_ID, number, ended_at=START + ended, outcome=outcome, last_step=last_step, detail_json="{}")


def _steps(db: Database, attempt: int, steps: range, at: float, tokens_per_s: float) -> None:
    for index, step in enumerate(steps):
        db.insert_step(
            {
                "run_id": RUN_ID,
                "attempt": attempt,
                "step": step,
                "samples_consumed": 8 * step,
                "loss": 1.0,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "tokens": int(tokens_per_s),
                "tokens_per_s": tokens_per_s,
                "step_time": 1.0,
                "micro_batch_size": 8,
                "grad_accumulation": 1,
                "wall_time": START + at + index,
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
            "status": "done",
            "config_json": "{}",
            "run_dir": str(tmp_path),
            "created_at": START,
            "started_at": START,
            "ended_at": START + 200,
            "total_steps": 12,
            "steps_done": 12,
            "samples_consumed": 96,
            "device_json": json.dumps({"kind": "cpu"}),
        }
    )
    _attempt(database, 1, 0, 10, "outside_kill", "fast plan", 2)
    _steps(database, 1, range(1, 3), 5, 150.0)
    _event(
        database,
        1,
        10,
        "restart",
        "restarting in 10.0 s after outside_kill",
        wait_seconds=10.0,
        cause="outside kill",
        counted=False,
    )
    _attempt(database, 2, 20, 30, "cuda_oom", "fast plan", 2)
    _event(database, 2, 30, "escalate", "cuda_oom: a squeeze", applied=["gradient_checkpointing"])
    _attempt(database, 3, 31, 60, "stopped", "slow plan", 6)
    _steps(database, 3, range(3, 7), 40, 50.0)
    _event(
        database,
        3,
        60,
        "deescalate",
        "stepped back",
        reason="the squeeze of attempt 2 is over",
        tokens_per_s_squeezed=50.0,
    )
    _attempt(database, 4, 61, 100, "done", "fast plan", 12)
    _steps(database, 4, range(7, 13), 70, 150.0)
    yield database
    database.close()


def test_outside_kill_row_says_the_cause_and_the_wait(db):
    """The outside kill's history row names its cause and the 10 s tamer waited; the OOM's row has no same-plan wait."""
    rows = {row["attempt"]: row for row in failures(db, RUN_ID)}
    assert (rows[1]["outcome"], rows[1]["restart_cause"], rows[1]["waited_seconds"]) == (
        "outside_kill",
        "outside kill",
        10.0,
    )
    assert rows[2]["restart_cause"] is None


def test_step_back_lists_attempts_plans_and_the_measured_gain(db):
    """The step back goes from attempt 3 (slow plan, 50 tokens/s) to 4 (fast plan, 150 tokens/s): a gain of 3x."""
    (step_back,) = deescalations(db, RUN_ID)
    assert (step_back["attempt"], step_back["next_attempt"], step_back["from_plan"], step_back["to_plan"]) == (
        3,
        4,
        "slow plan",
        "fast plan",
    )
    assert (step_back["tokens_per_s_squeezed"], step_back["tokens_per_s_after"], step_back["gain"]) == (
        50.0,
        150.0,
        3.0,
    )
    assert timeline(db, RUN_ID)["deescalations"] == [step_back]


def test_plot_marks_the_step_back_where_the_stopped_attempt_ended(db):
    """The plot has a `deescalate` marker at step 6, the last step of the attempt stopped to step back."""
    markers = [marker for marker in plot_data(db, RUN_ID)["markers"] if marker["kind"] == "deescalate"]
    assert [marker["step"] for marker in markers] == [6]


@pytest.mark.parametrize("width", [80, 120])
def test_steps_back_table_fits_the_terminal(db, tmp_path, width):
    """`tamer show` and `tamer history`, with their steps-back table, fit 80 and 120 columns on a terminal."""
    from typer.testing import CliRunner

    from tamer.cli import app
    from tests.output_widths import HEADERS, problems

    steps_back = ("time", "attempts", "tokens/s squeezed", "tokens/s after", "gain", "why")
    for command in (["show", RUN_ID], ["history"]):
        result = CliRunner().invoke(
            app, ["--home", str(tmp_path), *command], env={"COLUMNS": str(width), "TTY_COMPATIBLE": "1"}
        )
        assert result.exit_code == 0, result.output
        assert "steps back (de-escalations)" in result.output
        assert problems(result.output, width, HEADERS[command[0]] + steps_back) == [], command
