"""Resuming an attempt inside the child: which checkpoint, the model built from it, and the optimizer,
scheduler, grad scaler, RNG streams and data cursor restored from it.

Called by the trainer at setup (tamer/engine/trainer.py, `Trainer.setup`) with the attempt and the objects it trains
(tamer/engine/attempt.py); the checkpointer
(tamer/engine/checkpointing.py) saves what `rng_state()` returns. Exact resume depends on every piece
here coming back bit for bit; tests/integration/test_core.py checks it, with a negative control that
names what not to restore (`TAMER_UNSAFE_SKIP_RESTORE=cursor,rng`).
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tamer.engine import distributed
from tamer.engine.attempt import Attempt, Training
from tamer.engine.model import build_model, materialize_random_init, pin_base
from tamer.engine.optim import repage_state, restore_scheduler
from tamer.plan import Plan
from tamer.state import checkpoints

# Test hook for the negative control of the exact-resume test: names what NOT to restore.
SKIP_RESTORE_ENV = "TAMER_UNSAFE_SKIP_RESTORE"


def skipped_restores() -> set[str]:
    """What the negative control asks not to restore (`cursor`, `rng`); empty in every real run."""
    return set(filter(None, os.environ.get(SKIP_RESTORE_ENV, "").split(",")))


def load_model(attempt: Attempt) -> tuple[Any, str, checkpoints.Checkpoint | None]:
    """(the model, where its base weights came from, the checkpoint it resumes) for the trainer's plan.

    The newest checkpoint's files are verified while the model loads from it; a damaged one makes the
    model load again from an older one."""
    resume_check = ResumeCheck(attempt)
    checkpoint = resume_check.start()
    while True:
        with distributed.main_first(attempt.group):
            base, adapter_dir = model_source(attempt, checkpoint)
        torch.manual_seed(attempt.config.seed)  # LoRA's initial adapters: the same on every rank and every attempt
        model = None
        try:
            model = build_model(attempt.config, attempt.plan, attempt.device, base, adapter_dir)
        except Exception:
            if resume_check.confirm(checkpoint) is checkpoint:
                raise  # not a damaged checkpoint's doing
        verified = resume_check.confirm(checkpoint)
        if verified is checkpoint:
            return model, base, checkpoint
        model, checkpoint = None, verified


def checkpoint_to_resume(attempt: Attempt) -> checkpoints.Checkpoint | None:
    """The newest valid checkpoint; rank 0 verifies it and every rank resumes the same one."""
    found = None
    if attempt.group.is_main:
        checkpoint, skipped = checkpoints.newest_valid(attempt.run_dir)
        for name, reason in skipped:
            attempt.report.event(
                "checkpoint_skipped",
                f"checkpoint {name} is not valid ({reason}); "
                + ("using an older one" if checkpoint else "no valid checkpoint left: training starts over"),
                checkpoint=name,
                reason=reason,
            )
        found = (str(checkpoint.path), checkpoint.manifest) if checkpoint else None
    found = distributed.broadcast(attempt.group, found)
    return checkpoints.Checkpoint(Path(found[0]), found[1]) if found else None


def model_source(attempt: Attempt, checkpoint: checkpoints.Checkpoint | None) -> tuple[str, Path | None]:
    """Where the base weights come from, and the adapters to resume, for this plan and checkpoint."""
    config, run_dir = attempt.config, attempt.run_dir
    if checkpoint is None:
        if config.init == "random":
            init_dir = run_dir / "init"
            materialize_random_init(config, init_dir)
            return str(init_dir), None
        return config.model, None
    manifest = checkpoint.manifest
    if manifest["kind"] == "full":
        weights = checkpoint.path / "model"
        if attempt.plan.lora:
            base = pin_base(weights, run_dir / "bases" / f"step-{checkpoint.step}")
            attempt.report.event(
                "lora_from_full",
                f"LoRA adapters start fresh on the weights trained so far (step {checkpoint.step})",
                base=str(base),
            )
            return str(base), None
        return str(weights), None
    base = str(run_dir / manifest["base"]) if manifest.get("base") else config.model
    return base, checkpoint.path / "adapter"


def restore(attempt: Attempt, training: Training, checkpoint: checkpoints.Checkpoint) -> None:
    """The training state of `checkpoint` into the attempt and the objects being trained: position and data cursor
    (`attempt.state`), optimizer (unless its type or the trainable parameters changed), scheduler, grad scaler and
    this rank's RNG streams."""
    manifest, state, plan = checkpoint.manifest, attempt.state, attempt.plan
    skip = skipped_restores()
    state.step = checkpoint.step
    state.checkpoint_step = checkpoint.step
    state.samples_consumed = 0 if "cursor" in skip else int(manifest["samples_consumed"])
    old_plan = Plan.from_dict(manifest["plan"])
    same_parameters = old_plan.lora == plan.lora
    if old_plan.optimizer == plan.optimizer and same_parameters:
        optimizer_state = torch.load(checkpoint.path / "optimizer.pt", map_location=attempt.device, weights_only=False)
        distributed.load_optimizer_state(training.wrapped, training.optimizer, plan, optimizer_state)
        repage_state(training.optimizer)
    else:
        why = (
            f"optimizer changed from {old_plan.optimizer} to {plan.optimizer}"
            if old_plan.optimizer != plan.optimizer
            else "the trainable parameters changed (LoRA)"
        )
        attempt.report.event(
            "optimizer_reset", f"optimizer state reset: {why}", old=old_plan.optimizer, new=plan.optimizer
        )
    restore_scheduler(
        training.scheduler,
        torch.load(checkpoint.path / "scheduler.pt", weights_only=False),
        attempt.config.learning_rate_for(plan),
    )
    change = attempt.config.learning_rate_change(old_plan, plan)
    if change:
        attempt.report.event(
            "learning_rate",
            f"{change}, from step {checkpoint.step} of the same schedule",
            old=attempt.config.learning_rate_for(old_plan),
            new=attempt.config.learning_rate_for(plan),
        )
    scaler_file = checkpoint.path / "scaler.pt"
    if training.scaler is not None and scaler_file.is_file():
        training.scaler.load_state_dict(torch.load(scaler_file, weights_only=False))
    if "rng" not in skip:
        rng = torch.load(checkpoint.path / "rng.pt", weights_only=False)
        rank = attempt.group.rank
        if "ranks" in rng:  # one state per rank; a rank the checkpoint did not have keeps the seeded one
            rng = rng["ranks"][rank] if rank < len(rng["ranks"]) else None
        if rng is not None:
            set_rng_state(rng)
    attempt.report.event(
        "resume",
        f"resumed from checkpoint step {checkpoint.step} ({state.samples_consumed} samples consumed)",
        step=checkpoint.step,
        samples_consumed=state.samples_consumed,
        checkpoint=checkpoint.path.name,
    )


def rng_state() -> dict[str, Any]:
    """This process's RNG streams (python, numpy, torch, and CUDA once initialised), as a checkpoint keeps them."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG streams `rng_state()` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeCheck:
    """The checkpoint to resume from, verified in a thread while the model loads from it (one process).

    `start()` returns the newest checkpoint whose manifest reads and starts hashing its files;
    `confirm()` waits for that and returns it, or, when it turned out damaged, the newest older one that
    verifies (the caller then builds the model again). Where the model build would keep files of the
    checkpoint (a full checkpoint pinned as a LoRA base) or several ranks resume, it verifies first."""

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt
        self.thread: threading.Thread | None = None
        self.problem: str | None = None
        self.replaced: checkpoints.Checkpoint | None = None
        self.replacement: checkpoints.Checkpoint | None = None

    def start(self) -> checkpoints.Checkpoint | None:
        attempt = self.attempt
        if attempt.group.distributed:
            return checkpoint_to_resume(attempt)
        candidate, skipped = checkpoints.newest_complete(attempt.run_dir)
        self._tell(skipped)
        if candidate is None:
            return None
        if candidate.manifest["kind"] == "full" and attempt.plan.lora:
            return self._older_valid(None)
        self.thread = threading.Thread(
            target=self._verify, args=(candidate.path,), name="checkpoint-verify", daemon=True
        )
        self.thread.start()
        return candidate

    def confirm(self, checkpoint: checkpoints.Checkpoint | None) -> checkpoints.Checkpoint | None:
        """`checkpoint` once verified, else the newest older one that verifies (asked again: the same answer)."""
        if self.thread is None or checkpoint is None:
            return self.replacement if self.replaced is checkpoint else checkpoint
        self.thread.join()
        self.thread = None
        if self.problem is None:
            return checkpoint
        self._tell([(checkpoint.path.name, self.problem)])
        self.replaced, self.replacement = checkpoint, self._older_valid(checkpoint.step)
        return self.replacement

    def _verify(self, path: Path) -> None:
        self.problem = checkpoints.verify(path)[1]

    def _older_valid(self, below: int | None) -> checkpoints.Checkpoint | None:
        found, skipped = checkpoints.newest_valid(self.attempt.run_dir, below)
        self._tell(skipped)
        return found

    def _tell(self, skipped: list[tuple[str, str]]) -> None:
        for name, reason in skipped:
            self.attempt.report.event(
                "checkpoint_skipped",
                f"checkpoint {name} is not valid ({reason}); using an older one",
                checkpoint=name,
                reason=reason,
            )
