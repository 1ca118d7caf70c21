"""The `lora` rung: freeze the base model and train low-rank adapters (peft) instead."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class Lora(Strategy):
    """LoRA: only small rank-r adapter matrices are trained; the base weights are frozen.

    Memory: saves the gradients and AdamW state of every base weight (~12 bytes per parameter in
    fp32, about three times the weights themselves). Cost: a different, lower-capacity update than
    full fine-tuning, so results differ; the model is wrapped anew, so the child restarts.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.lora:
            return "LoRA is already on"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, lora=True)


STRATEGY = Lora(
    name="lora",
    summary=(
        "saves the gradients and optimizer state of all base weights (~3x the weights in fp32); "
        "costs capacity (only low-rank adapters train, so results differ)"
    ),
    changes=("lora",),
    new_process=True,
    exact=False,
)
