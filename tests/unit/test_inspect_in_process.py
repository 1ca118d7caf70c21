"""An OOM the child recovered from itself (an `in_process_split` event) is a failure and a recovery in
the record: history, timeline, plot, report and `tamer show` all count it, and the settled plan is the
split one its last steps ran with.

The run: one attempt at micro-batch 8 x 1; step 3 hits a CUDA OOM in backward after 2 s of work, the
child halves the micro-batch and retries step 3 (done at 4 x 2), then step 4 finishes the run.
"""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from tamer.cli import app
from tamer.inspect.history import failures, timeline
from tamer.state.db import Database

START = time.time() - 3600
RUN_ID = "squad-20260101-000000-beef"
PLAN = {"micro_batch_size": 8, "grad_accumulation": 1, "eval_batch_size": 8, "env": {}, "gradient_checkpointing": False,
        "autocast_dtype": None, "weights_dtype": "fp32", "quantization": None, "lora": False, "optimizer": "adamw",
        "chunked_loss": False, "world_size": 1, "parallel": "ddp", "rungs": []}
OOM = ("CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 15.00 GiB of which 1.02 GiB is free.")


def _event(db: Database, at: float, kind: str, message: str, **detail) -> None:
    with db.write() as tables:
        tables["events"].insert({"run_id": RUN_ID, "attempt": 1, "time": START + at, "kind": kind, "message": message,
                                 "detail_json": json.dumps(detail) if detail else None})


def _step(db: Database, step: int, at: float, step_time: float, micro_batch_size: int) -> None:
    db.insert_step({"run_id": RUN_ID, "attempt": 1, "step": step, "samples_consumed": 8 * step, "loss": 10.0 - step / 10,
                    "lr": 1e-3, "grad_norm": 1.0, "tokens": 100, "tokens_per_s": 100.0, "step_time": step_time,
                    "micro_batch_size": micro_batch_size, "grad_accumulation": 8 // micro_batch_size, "mem_allocated": None,
                    "mem_reserved": None, "mem_peak": None, "device_used": None, "host_rss": 500 * 1024**2,
                    "wall_time": START + at, "sample_ids": "[]"})


@pytest.fixture
def home(tmp_path):
    database = Database(tmp_path / "tamer.db")
    database.insert_run({"id": RUN_ID, "recipe": "squad", "preset": "tiny", "status": "running", "config_json": "{}",
                         "run_dir": str(tmp_path / "runs" / RUN_ID), "created_at": START, "started_at": START, "total_steps": 4,
                         "steps_done": 0, "samples_consumed": 0, "device_json": json.dumps({"kind": "cuda"})})
    database.insert_attempt({"run_id": RUN_ID, "attempt": 1, "plan_json": json.dumps(PLAN), "rungs_applied": "[]",
                             "plan_summary": "micro-batch 8 x 1, fp32 weights, adamw", "reason": "first plan",
                             "started_at": START, "resumed_from_step": 0})
    _event(database, 1, "start", "attempt 1 training")
    _step(database, 1, 10, 1.0, 8)
    _step(database, 2, 11, 1.0, 8)
    # Step 3 starts at 11, fails at 13, is split at 13.5 and done at 16 (its step_time counts all 5 s).
    _event(database, 13.5, "in_process_split", "CUDA OOM in backward at micro-batch 8: micro-batch halved to 4",
           step=3, phase="backward", old_micro_batch=8, new_micro_batch=4, failed_at=START + 13, error=OOM)
    _step(database, 3, 16, 5.0, 4)
    _step(database, 4, 18, 2.0, 4)
    database.update_attempt(RUN_ID, 1, ended_at=START + 20, outcome="done", last_step=4)
    database.update_run(RUN_ID, status="done", ended_at=START + 20, steps_done=4)
    database.close()
    return tmp_path


def test_in_process_split_is_a_failure_row(home):
    """history lists the in-process OOM with its phase, step, sizes, the split it did and the work thrown away."""
    (row,) = failures(Database(home / "tamer.db", create=False), RUN_ID)
    assert row["in_process"] is True
    assert (row["outcome"], row["phase"], row["step"], row["micro_batch_size"]) == ("cuda_oom", "backward", 3, 8)
    assert row["tried_to_allocate"] == round(1.96 * 1024**3)
    assert row["recovery"] == "split in process" and row["rungs_applied"] == ["split_micro_batch"]
    assert row["next_plan"].startswith("micro-batch 4 x 2")
    assert row["steps_lost"] == 0
    assert row["time_lost_seconds"] == pytest.approx(2.5)  # step 3 began at 11, the retry at 13.5


def test_in_process_split_filters_like_a_cuda_oom(home):
    """--kind cuda_oom keeps the in-process OOM and --kind host_oom drops it."""
    db = Database(home / "tamer.db", create=False)
    assert len(failures(db, kinds=["cuda_oom"])) == 1
    assert failures(db, kinds=["host_oom"]) == []


def test_timeline_counts_it_and_settles_on_the_split_plan(home):
    """The timeline counts one failure recovered in process, moves its thrown-away work from training to
    lost, and names the plan the last steps ran with as settled."""
    story = timeline(Database(home / "tamer.db", create=False), RUN_ID)
    totals = story["totals"]
    assert (totals["failures"], totals["recovered_in_process"]) == (1, 1)
    assert totals["training_seconds"] == pytest.approx(9.0 - 2.5)
    assert totals["lost_seconds"] == pytest.approx(2.5)
    assert story["settled_plan"]["summary"].startswith("micro-batch 4 x 2")
    assert story["settled_plan"]["rungs"] == ["split_micro_batch"]
    assert story["attempts"][0]["plan_at_end"].startswith("micro-batch 4 x 2")
    assert story["attempts"][0]["splits_in_process"] == [{"step": 3, "phase": "backward", "micro_batch_size": 4, "grad_accumulation": 2}]


def test_plot_and_report_mark_it(home):
    """The plot has an OOM marker at step 3 saying it was recovered in process; the report lists it."""
    from tamer.inspect.plot import plot_data
    from tamer.inspect.report import render

    db = Database(home / "tamer.db", create=False)
    markers = plot_data(db, RUN_ID)["markers"]
    assert any(m["step"] == 3 and m["kind"] == "cuda_oom" and "recovered in process" in m["label"] for m in markers)
    page = render(db, RUN_ID, 600, 400)
    assert "split in process" in page and "No failures" not in page


def test_show_and_history_commands_count_it(home):
    """`tamer show` counts the failure and shows the split plan as settled; `tamer history` has its row."""
    runner = CliRunner()
    shown = runner.invoke(app, ["show", RUN_ID, "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert "1 failures (1 recovered in process)" in shown.output
    assert "settled plan (attempt 1): micro-batch 4 x 2" in shown.output
    listed = runner.invoke(app, ["history", "--home", str(home)])
    assert listed.exit_code == 0, listed.output
    assert "+split_micro_batch in process" in listed.output and "1 failure (1 recovered in process)" in listed.output
