"""A home with one recorded run, shared by the inspect and CLI-output tests.

The run (`RUN_ID`): one attempt at micro-batch 8 x 1; step 3 hits a CUDA OOM in backward after 2 s of
work, the child halves the micro-batch and retries step 3 (done at 4 x 2), then step 4 finishes the run.
"""

from __future__ import annotations

import json
import time

import pytest

from tamer.state.db import Database

START = time.time() - 3600
RUN_ID = "squad-20260101-000000-beef"
PLAN = {
    "micro_batch_size": 8,
    "grad_accumulation": 1,
    "eval_batch_size": 8,
    "env": {},
    "gradient_checkpointing": False,
    "autocast_dtype": None,
    "weights_dtype": "fp32",
    "quantization": None,
    "lora": False,
    "optimizer": "adamw",
    "chunked_loss": False,
    "world_size": 1,
    "parallel": "ddp",
    "rungs": [],
}
OOM = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 15.00 GiB of which 1.02 GiB is free."
)


def _event(db: Database, at: float, kind: str, message: str, **detail) -> None:
    with db.write() as tables:
        tables["events"].insert(
            {
                "run_id": RUN_ID,
                "attempt": 1,
                "time": START + at,
                "kind": kind,
                "message": message,
                "detail_json": json.dumps(detail) if detail else None,
            }
        )


def _step(db: Database, step: int, at: float, step_time: float, micro_batch_size: int) -> None:
    db.insert_step(
        {
            "run_id": RUN_ID,
            "attempt": 1,
            "step": step,
            "samples_consumed": 8 * step,
            "loss": 10.0 - step / 10,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens": 100,
            "tokens_per_s": 100.0,
            "step_time": step_time,
            "micro_batch_size": micro_batch_size,
            "grad_accumulation": 8 // micro_batch_size,
            "mem_allocated": None,
            "mem_reserved": None,
            "mem_peak": None,
            "device_used": None,
            "host_rss": 500 * 1024**2,
            "wall_time": START + at,
            "sample_ids": "[]",
        }
    )


@pytest.fixture
def recorded_home(tmp_path):
    """The home folder holding RUN_ID's database."""
    database = Database(tmp_path / "tamer.db")
    database.insert_run(
        {
            "id": RUN_ID,
            "recipe": "squad",
            "preset": "tiny",
            "status": "running",
            "config_json": "{}",
            "run_dir": str(tmp_path / "runs" / RUN_ID),
            "created_at": START,
            "started_at": START,
            "total_steps": 4,
            "steps_done": 0,
            "samples_consumed": 0,
            "device_json": json.dumps({"kind": "cuda"}),
        }
    )
    database.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": 1,
            "plan_json": json.dumps(PLAN),
            "rungs_applied": "[]",
            "plan_summary": "micro-batch 8 x 1, fp32 weights, adamw",
            "reason": "first plan",
            "started_at": START,
            "resumed_from_step": 0,
        }
    )
    _event(database, 1, "start", "attempt 1 training")
    _step(database, 1, 10, 1.0, 8)
    _step(database, 2, 11, 1.0, 8)
    # Step 3 starts at 11, fails at 13, is split at 13.5 and done at 16 (its step_time counts all 5 s).
    _event(
        database,
        13.5,
        "in_process_split",
        "CUDA OOM in backward at micro-batch 8: micro-batch halved to 4",
        step=3,
        phase="backward",
        old_micro_batch=8,
        new_micro_batch=4,
        failed_at=START + 13,
        error=OOM,
    )
    _step(database, 3, 16, 5.0, 4)
    _step(database, 4, 18, 2.0, 4)
    _event(
        database,
        18.5,
        "checkpoint",
        f"checkpoint step 4 saved in 0.12 s at {tmp_path}/runs/{RUN_ID}/checkpoints/step-4",
        step=4,
        path=f"{tmp_path}/runs/{RUN_ID}/checkpoints/step-4",
        seconds=0.12,
    )
    database.update_attempt(RUN_ID, 1, ended_at=START + 20, outcome="done", last_step=4)
    database.update_run(RUN_ID, status="done", ended_at=START + 20, steps_done=4)
    database.close()
    return tmp_path
