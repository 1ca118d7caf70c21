"""What the helpers around the training loop are given: the attempt (`Attempt`: who, where, under which plan,
how far) and the objects being trained (`Training`). The trainer (tamer/engine/trainer.py) owns both and
hands them to resuming (tamer/engine/resume.py), checkpoints (tamer/engine/checkpointing.py) and the
in-training evaluation (Recipe.score): none of them sees the Trainer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tamer.config import RunConfig
from tamer.plan import Plan


@dataclass
class TrainState:
    """How far the attempt is: optimizer steps done, samples consumed, the step of the newest checkpoint."""

    step: int = 0
    samples_consumed: int = 0
    checkpoint_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    """One attempt of a run as the helpers read it. `plan` is the plan in force: the trainer replaces it when it
    halves the micro-batch in process; `state` moves with every step; `total_steps` is set once the data is read."""

    run_dir: Path
    run_id: str
    number: int
    config: RunConfig
    plan: Plan
    device: torch.device
    group: Any  # tamer.engine.distributed.Group
    report: Any  # tamer.engine.reporting.Reporter: events, heartbeats, step rows
    faults: Any  # tamer.engine.faults.FaultPlan: injected failures
    state: TrainState = field(default_factory=TrainState)
    total_steps: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """The plan's autocast on this device (a no-op without one)."""
        if self.plan.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(
            self.device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[self.plan.autocast_dtype]
        )


@dataclass
class Training:
    """The objects a checkpoint saves and a resume restores."""

    model: Any  # the (peft) model whose weights are saved
    wrapped: Any  # what trains it: the loss module, under DDP or FSDP on several processes
    optimizer: Any
    scheduler: Any
    scaler: Any | None  # fp16's grad scaler, or None
    order: Any  # the data order (SampleOrder): the epoch of a sample position
    base: str  # where the base weights came from (a LoRA checkpoint names it)
