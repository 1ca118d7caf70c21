"""What the child tells the outside while it trains: heartbeats for the supervisor's hang watchdog, and
events, step rows and validation losses in SQLite.

The trainer (tamer/engine/trainer.py) owns one `Reporter` and the checkpointer reports through it.
Every rank beats its own heartbeat file; only rank 0 writes the database (one row per step or event,
not one per rank). Memory readings are gathered from every rank, so `step()` is called on all of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import structlog
import torch

from tamer.engine import distributed, memory
from tamer.plan import Plan
from tamer.protocol import PLAN_FILE, STOP_FILE, heartbeat_name
from tamer.state import queries
from tamer.state.checkpoints import write_json_atomic
from tamer.state.db import Database

log = structlog.get_logger("tamer.child")

MEMORY_FIELDS = ("mem_allocated", "mem_reserved", "mem_peak", "device_used", "host_rss")


class Reporter:
    """One attempt's reports from one rank."""

    def __init__(
        self, db_path: Path | str, run_id: str, attempt: int, group: distributed.Group, attempt_dir: Path
    ) -> None:
        self.db_path = db_path
        self._db: Database | None = None
        self.run_id = run_id
        self.attempt = attempt
        self.group = group
        self.heartbeat_path = attempt_dir / heartbeat_name(group.rank)
        self.stop_path = attempt_dir / STOP_FILE
        self.plan_path = attempt_dir / PLAN_FILE
        self.first_step = True
        self.phase = "load"

    @property
    def db(self) -> Database:
        """The run's database, opened on first use: only rank 0 writes it, so the ranks of other machines
        (which may not see node 0's home at all) never open it."""
        if self._db is None:
            self._db = Database(self.db_path)
        return self._db

    def beat(self, phase: str) -> None:
        """Say where we are and that we are alive (the supervisor's hang watchdog reads this)."""
        self.phase = phase
        with open(self.heartbeat_path, "w") as heartbeat:
            heartbeat.write(f"{phase} {int(self.first_step)}")

    def event(self, kind: str, message: str, **detail: Any) -> None:
        """Log it; rank 0 also records it in the database (one row per event, not one per rank)."""
        log.info(kind, message=message, rank=self.group.rank, **detail)
        if self.group.is_main:
            self.db.event(self.run_id, kind, message, attempt=self.attempt, **detail)

    def stop_requested(self) -> bool:
        """Whether the supervisor asked every rank to checkpoint and stop after this step (its stop file)."""
        return self.stop_path.exists()

    def total_steps(self, total: int) -> None:
        """The run's length in optimizer steps, once the data is known."""
        if self.group.is_main:
            self.db.update_run(self.run_id, total_steps=total)

    def resumed_from(self, step: int) -> None:
        """The step this attempt starts training from (0: from the start)."""
        if self.group.is_main:
            self.db.update_attempt(self.run_id, self.attempt, resumed_from_step=step)

    def plan_changed(self, plan: Plan) -> None:
        """The child changed its own plan (an in-process micro-batch split): the supervisor resumes from this one."""
        write_json_atomic(self.plan_path, plan.to_dict())

    def memory_per_rank(self, device: torch.device) -> list[list[int | None]]:
        """Every rank's memory readings (MEMORY_FIELDS), gathered on every rank: a collective."""
        readings = memory.readings(device)
        return distributed.all_gather(self.group, [readings[name] for name in MEMORY_FIELDS], device)

    def step(
        self,
        *,
        step: int,
        samples_consumed: int,
        plan: Plan,
        loss: float,
        lr: float,
        grad_norm: float,
        tokens: float,
        computed_tokens: float,
        elapsed: float,
        sample_ids: list[int],
        per_rank: list[list[int | None]],
    ) -> None:
        """One optimizer step done: its row (rank 0), then the first step is behind us and we are between steps."""
        if self.group.is_main:
            self.db.insert_step(
                {
                    "run_id": self.run_id,
                    "attempt": self.attempt,
                    "step": step,
                    "samples_consumed": samples_consumed,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": int(tokens),
                    "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
                    "step_time": elapsed,
                    "useful_tokens": int(tokens),
                    "computed_tokens": int(computed_tokens),
                    "micro_batch_size": plan.micro_batch_size,
                    "grad_accumulation": plan.grad_accumulation,
                    "wall_time": time.time(),
                    "sample_ids": json.dumps(sample_ids),
                    **_highest(per_rank),
                    "rank_memory_json": json.dumps([dict(zip(MEMORY_FIELDS, row)) for row in per_rank])
                    if self.group.distributed
                    else None,
                }
            )
        self.first_step = False
        self.beat("between_steps")

    def evaluation(
        self, *, step: int, eval_loss: float, eval_tokens: int, eval_samples: int, eval_batch_size: int
    ) -> None:
        """A validation loss (rank 0 only calls this)."""
        self.db.insert_eval(
            {
                "run_id": self.run_id,
                "attempt": self.attempt,
                "step": step,
                "eval_loss": eval_loss,
                "eval_tokens": eval_tokens,
                "eval_samples": eval_samples,
                "eval_batch_size": eval_batch_size,
                "wall_time": time.time(),
            }
        )
        self.event("eval", f"validation loss {eval_loss:.4f} at step {step}", step=step, eval_loss=eval_loss)

    def eval_recorded(self, step: int) -> bool:
        """Whether a validation loss is already recorded for `step` (an attempt before this one ran it)."""
        return queries.eval_recorded(self.db, self.run_id, step)


def _highest(per_rank: list[list[int | None]]) -> dict[str, int | None]:
    """Each memory reading's highest value over the ranks (the rank closest to its limit decides)."""
    out: dict[str, int | None] = {}
    for i, name in enumerate(MEMORY_FIELDS):
        values = [row[i] for row in per_rank if row[i] is not None]
        out[name] = max(values) if values else None
    return out
