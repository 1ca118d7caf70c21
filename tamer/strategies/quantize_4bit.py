"""The `quantize_4bit` rung: load the frozen base weights in 4-bit NormalFloat (bitsandbytes NF4, as QLoRA)."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class Quantize4bit(Strategy):
    """4-bit base weights: bitsandbytes stores the base model's linear weights in NF4 with double quantization.

    Memory: the decoder layers' linear weights take ~0.52 byte per parameter (two 4-bit codes per byte, one 8-bit
    absmax per block of 64, one fp32 absmax per 256 of those) instead of 4 in fp32 or 1 in int8; embeddings, norms
    and the LM head stay unquantized. Each matmul dequantizes its weight to the compute dtype (bf16 where the card
    has it, fp16 otherwise). Cost: the largest quantisation error of the base rungs (16 levels per block against
    int8's 256 per row), a dequantisation per matmul in forward and backward; 4-bit weights cannot be trained, so
    LoRA adapters (a prerequisite) do the learning. Replaces an int8 base. The model is reloaded: the child restarts.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.quantization == "nf4":
            return "base weights are already nf4"
        if not facts.bitsandbytes:
            return "bitsandbytes is not usable on this device"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, quantization="nf4", compute_dtype="bf16" if facts.bf16 else "fp16")


STRATEGY = Quantize4bit(
    name="quantize_4bit",
    summary=(
        "saves ~87% of base-weight memory (NF4, ~0.52 byte per linear weight instead of 4); "
        "costs the most quantisation error, a dequantisation per matmul, and needs LoRA to train"
    ),
    changes=("quantization", "compute_dtype"),
    requires=("lora",),
    new_process=True,
    exact=False,
)
