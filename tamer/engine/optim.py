"""Optimizers and the LR schedule for a plan."""

from __future__ import annotations

import math
from typing import Any

import torch

from tamer.config import RunConfig
from tamer.plan import Plan


def build_optimizer(plan: Plan, parameters: list[torch.nn.Parameter], config: RunConfig) -> torch.optim.Optimizer:
    """AdamW in the flavour the plan names (torch fp32 states, or bitsandbytes 8-bit / paged 8-bit)."""
    kwargs: dict[str, Any] = {"lr": config.learning_rate, "weight_decay": config.weight_decay}
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(parameters, **kwargs)
    import bitsandbytes as bnb

    if plan.optimizer == "adamw_8bit":
        return bnb.optim.AdamW8bit(parameters, **kwargs)
    if plan.optimizer == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(parameters, **kwargs)
    raise ValueError(f"unknown optimizer {plan.optimizer}")


def warmup_steps(config: RunConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)


def cosine_with_warmup(step: int, total_steps: int, warmup: int) -> float:
    """LR multiplier after `step` optimizer steps: linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total_steps, warmup))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Load a scheduler state and set each group's LR for the restored step (a fresh optimizer after a
    type change starts at the schedule's current LR, not its first)."""
    scheduler.load_state_dict(state)
    for group, base_lr, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, (fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas)
    ):
        group["lr"] = base_lr * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
