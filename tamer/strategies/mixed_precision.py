"""The `mixed_precision` rung: run forward and backward under bf16 (or fp16) autocast."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class MixedPrecision(Strategy):
    """Autocast to bf16 where the device supports it, else fp16; weights stay fp32 (master weights).

    Memory: saves about half of activation memory (16-bit activations instead of fp32). Cost:
    results are no longer bit-exact with fp32 training; fp16 also needs loss scaling (a GradScaler)
    and can overflow, which is why bf16 is preferred.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.autocast_dtype is not None:
            return f"autocast is already {plan.autocast_dtype}"
        if plan.weights_dtype == "bf16":
            return "weights are already pure bf16"
        if not (facts.bf16 or facts.fp16):
            return "device supports neither bf16 nor fp16 autocast"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, autocast_dtype="bf16" if facts.bf16 else "fp16")


STRATEGY = MixedPrecision(
    name="mixed_precision",
    summary=(
        "saves ~half of activation memory (bf16/fp16 activations, fp32 master weights); "
        "costs exactness (16-bit rounding; fp16 needs loss scaling)"
    ),
    changes=("autocast_dtype",),
    new_process=False,
    exact=False,
)
