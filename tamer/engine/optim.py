"""Optimizers and the LR schedule for a plan."""

from __future__ import annotations

import math
from typing import Any

import torch

from tamer.config import RunConfig
from tamer.engine import adamw8bit
from tamer.plan import PAGED_MIN_ELEMENTS, Plan


def build_optimizer(plan: Plan, parameters: list[torch.nn.Parameter], config: RunConfig) -> torch.optim.Optimizer:
    """AdamW in the flavour the plan names (torch fp32 states, or bitsandbytes 8-bit / paged 8-bit; on CUDA
    with Triton the 8-bit flavours are stepped by tamer's kernel, same state, see tamer.engine.adamw8bit), at the
    plan's peak learning rate (`lora.learning_rate` for LoRA adapters, else `learning_rate`)."""
    kwargs: dict[str, Any] = {"lr": config.learning_rate_for(plan), "weight_decay": config.weight_decay}
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(parameters, **kwargs)
    if plan.optimizer not in ("adamw_8bit", "paged_adamw_8bit"):
        raise ValueError(f"unknown optimizer {plan.optimizer}")
    paged = plan.optimizer == "paged_adamw_8bit"
    sharded = plan.world_size > 1 and plan.parallel == "fsdp"  # DTensor parameters: bitsandbytes' own path
    if (
        config.optimizer_kernel == "auto"
        and not sharded
        and parameters
        and adamw8bit.unavailable(parameters[0].device) is None
    ):
        return adamw8bit.triton_adamw8bit(paged)(parameters, **kwargs)
    import bitsandbytes as bnb

    return (bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit)(parameters, **kwargs)


def clip_gradients(
    optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter], max_norm: float
) -> torch.Tensor:
    """Clip the gradients to `max_norm` (as torch.nn.utils.clip_grad_norm_) and return their total norm.

    With tamer's Triton 8-bit step the clipping factor is handed to the optimizer as a device tensor
    and applied inside its kernel: the same arithmetic as clip_grad_norm_ (coefficient
    max_norm / (norm + 1e-6), at most 1) without a pass that rewrites every gradient."""
    if not getattr(optimizer, "triton_step", False) or not hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, foreach=True)
    optimizer.grad_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    return norm


def repage_state(optimizer: torch.optim.Optimizer) -> int:
    """After load_state_dict: put a bitsandbytes paged optimizer's moments back in paged (managed) memory.

    torch.save keeps a tensor's Python attributes, so moments saved from a paged optimizer load as
    ordinary device tensors still marked `is_paged`; bitsandbytes then prefetches them as managed memory
    and its CUDA check ends the process ("Error invalid argument ... pythonInterface.cpp", seen with
    0.50.2 on an H100). Large moments are copied into fresh paged buffers (as the optimizer would have
    made them); the mark is dropped from everything else. Returns how many tensors were re-paged."""
    paged_optimizer = bool(getattr(optimizer, "is_paged", False))
    repaged = 0
    for state in optimizer.state.values():
        for key, value in list(state.items()):
            if not isinstance(value, torch.Tensor):
                continue
            if (
                paged_optimizer
                and key in ("state1", "state2")
                and value.is_cuda
                and value.numel() >= PAGED_MIN_ELEMENTS
            ):
                from bitsandbytes import functional

                buffer = functional.get_paged(*value.shape, dtype=value.dtype, device=value.device)
                buffer.copy_(value)
                optimizer.page_mng.paged_tensors.append(buffer)
                state[key] = buffer
                repaged += 1
            elif getattr(value, "is_paged", False):
                value.is_paged = False
    return repaged


def warmup_steps(config: RunConfig, total_steps: int) -> int:
    return math.ceil(config.warmup_ratio * total_steps)


def cosine_with_warmup(step: int, total_steps: int, warmup: int) -> float:
    """LR multiplier after `step` optimizer steps: linear warmup, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_with_warmup(step, total_steps, warmup))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any], peak_lr: float) -> None:
    """Load a scheduler state and set each group's LR for the restored step (a fresh optimizer after a
    type change starts at the schedule's current LR, not its first). The schedule's position comes from the
    checkpoint, its peak from this plan (`peak_lr`): a move from a full fine-tune to LoRA continues the same
    warmup and cosine at the LoRA rate; under the same plan the two are equal, so resume stays exact."""
    scheduler.load_state_dict(state)
    scheduler.base_lrs = [peak_lr] * len(scheduler.optimizer.param_groups)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = peak_lr
    for group, base_lr, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, (fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas)
    ):
        group["lr"] = base_lr * factor
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
