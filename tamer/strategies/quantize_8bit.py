"""The `quantize_8bit` rung: load the frozen base weights in int8 (bitsandbytes LLM.int8)."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class Quantize8bit(Strategy):
    """8-bit base weights: bitsandbytes stores the base model's linear weights in int8.

    Memory: saves ~75% of the base weights against fp32 (1 byte per parameter instead of 4). Cost:
    quantisation error in every forward and slower int8 matmuls; int8 weights cannot be trained, so
    LoRA adapters (a prerequisite) do the learning. The model is reloaded, so the child restarts.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.quantization is not None:
            return f"base weights are already {plan.quantization}"
        if not facts.bitsandbytes:
            return "bitsandbytes is not usable on this device"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, quantization="int8")


STRATEGY = Quantize8bit(
    name="quantize_8bit",
    summary=(
        "saves ~75% of base-weight memory (int8 instead of fp32); "
        "costs quantisation error and slower matmuls, and needs LoRA to train"
    ),
    changes=("quantization",),
    requires=("lora",),
    new_process=True,
    exact=False,
)
