"""What the record says about attempts that ended without a word and runs resumed by hand: a SIGKILLed
child's phase comes from its last heartbeat, a kill before training began has no step, and a run
that gave up and was resumed shows both in `tamer show`."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from tamer.cli import app
from tamer.inspect.history import failures, timeline
from tamer.state.db import Database

START = time.time() - 600
RUN_ID = "squad-20260102-000000-dead"


def _event(db: Database, attempt: int | None, at: float, kind: str, message: str) -> None:
    db.event(RUN_ID, kind, message, attempt=attempt)
    with db.write() as tables:  # pin the time: the story depends on the order
        tables.execute("UPDATE events SET time = ? WHERE id = (SELECT max(id) FROM events)", [START + at])


def _killed_attempt(db: Database, home, number: int, started: float, heartbeat: str, began: bool) -> None:
    db.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": number,
            "plan_json": json.dumps({"micro_batch_size": 8}),
            "plan_summary": "micro-batch 8 x 1",
            "rungs_applied": "[]",
            "reason": "first plan",
            "started_at": START + started,
            "resumed_from_step": 0,
        }
    )
    folder = home / "runs" / RUN_ID / "attempts" / str(number)
    folder.mkdir(parents=True)
    (folder / "heartbeat").write_text(heartbeat)
    if began:
        _event(db, number, started + 1, "start", f"attempt {number} training")
        db.insert_step(
            {
                "run_id": RUN_ID,
                "attempt": number,
                "step": 1,
                "samples_consumed": 8,
                "loss": 10.0,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "tokens": 100,
                "tokens_per_s": 100.0,
                "step_time": 1.0,
                "micro_batch_size": 8,
                "grad_accumulation": 1,
                "wall_time": START + started + 2,
                "sample_ids": "[]",
            }
        )
    # What the supervisor records for a SIGKILL: no report, so no phase and no step.
    db.update_attempt(
        RUN_ID,
        number,
        ended_at=START + started + 5,
        outcome="crash",
        phase=None,
        signal=9,
        last_step=1 if began else None,
        message="killed by SIGKILL",
        detail_json=json.dumps({"step": None, "phase": None}),
    )


@pytest.fixture
def home(tmp_path):
    db = Database(tmp_path / "tamer.db")
    db.insert_run(
        {
            "id": RUN_ID,
            "recipe": "squad",
            "preset": "tiny",
            "status": "running",
            "config_json": json.dumps({"eval_samples": 0}),
            "run_dir": str(tmp_path / "runs" / RUN_ID),
            "created_at": START,
            "started_at": START,
            "total_steps": 4,
            "steps_done": 1,
            "samples_consumed": 8,
            "device_json": json.dumps({"kind": "cpu"}),
        }
    )
    _killed_attempt(db, tmp_path, 1, 0, "backward 0", began=True)
    _killed_attempt(db, tmp_path, 2, 10, "load 1", began=False)
    _event(db, None, 20, "failed", "crash loop: crash 3 times in a row with no progress")
    _event(db, None, 100, "resume_run", "supervisor resumed the run")
    db.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": 3,
            "plan_json": "{}",
            "plan_summary": "micro-batch 8 x 1",
            "rungs_applied": "[]",
            "reason": "resumed by `tamer resume`",
            "started_at": START + 101,
            "resumed_from_step": 0,
        }
    )
    (tmp_path / "runs" / RUN_ID / "attempts" / "3").mkdir()
    (tmp_path / "runs" / RUN_ID / "attempts" / "3" / "heartbeat").write_text("between_steps 0")
    db.update_attempt(RUN_ID, 3, ended_at=START + 199, outcome="done", phase=None, last_step=4)
    _event(db, None, 200, "finish", "run finished: 4 steps")
    db.update_run(RUN_ID, status="done", ended_at=START + 200, failure_reason=None)
    db.close()
    return tmp_path


def test_sigkill_phase_comes_from_the_heartbeat(home):
    """A child killed in backward, which wrote no report, is recorded in backward at the step it was computing."""
    killed = failures(Database(home / "tamer.db", create=False), RUN_ID)[0]
    assert (killed["phase"], killed["step"], killed["micro_batch_size"]) == ("backward", 2, 8)


def test_kill_before_training_has_no_step(home):
    """A child killed while loading has phase load and no step, not step 1."""
    loading = failures(Database(home / "tamer.db", create=False), RUN_ID)[1]
    assert (loading["phase"], loading["step"]) == ("load", None)


def test_give_up_then_resume_is_in_the_story(home):
    """The timeline keeps the give-up that a later resume followed, and `tamer show` prints it."""
    story = timeline(Database(home / "tamer.db", create=False), RUN_ID)
    assert [(earlier["status"], earlier["resumed_at"] - START) for earlier in story["resumed_after"]] == [
        ("failed", 100)
    ]
    result = CliRunner().invoke(app, ["show", RUN_ID, "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "earlier: failed at" in result.output and "crash loop" in result.output
    assert "no validation (eval_samples 0)" in result.output


def test_show_warns_about_an_invalid_newest_checkpoint(home):
    """A newest checkpoint that does not verify is named with a warning instead of silently passed over."""
    (home / "runs" / RUN_ID / "checkpoints" / "step-4").mkdir(parents=True)
    result = CliRunner().invoke(app, ["show", RUN_ID, "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert "warning: checkpoint step-4 is not valid" in result.output and "no valid checkpoint is left" in result.output


def test_a_finished_attempt_has_no_phase(home):
    """Only failures take their phase from the heartbeat: a finished attempt shows none."""
    story = timeline(Database(home / "tamer.db", create=False), RUN_ID)
    assert [attempt["phase"] for attempt in story["attempts"]] == ["backward", "load", None]
