"""The `fsdp` rung: shard parameters, gradients and optimizer states across the processes of a
multi-GPU run (torch FSDP2, `fully_shard` per decoder layer) instead of replicating them (DDP)."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class Fsdp(Strategy):
    """FSDP: each of N processes keeps 1/N of the weights, gradients and AdamW moments, and gathers one
    decoder layer's weights at a time for its forward and backward.

    Memory: saves (N-1)/N of the model state (16 bytes per parameter for a full fine-tune with fp32
    AdamW: ~15 GiB of a 1B model on 2 GPUs), at the price of one gathered layer (plus the embeddings,
    which the root keeps gathered). Cost: an all-gather per layer in forward and backward and a
    reduce-scatter of gradients; slower than DDP where DDP fits. Full fine-tunes with torch AdamW only:
    LoRA, int8 or 4-bit weights and the bitsandbytes optimizers are not sharded by it.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.world_size < 2:
            return "one process: nothing to shard across (use --gpus N)"
        if plan.parallel == "fsdp":
            return "already sharded"
        if plan.lora or plan.quantization:
            return "LoRA / quantized plans are not sharded (their model state is small already)"
        if plan.optimizer != "adamw":
            return f"the {plan.optimizer} optimizer cannot hold sharded parameters"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, parallel="fsdp")


STRATEGY = Fsdp(
    name="fsdp",
    summary=(
        "saves (N-1)/N of weights, gradients and optimizer state on N GPUs (sharded, FSDP2); "
        "costs an all-gather per layer and a reduce-scatter per step (slower than DDP where DDP fits)"
    ),
    changes=("parallel",),
    conflicts=("lora", "quantize_8bit", "quantize_4bit", "paged_adamw_8bit"),
    new_process=True,
    exact=True,
)
