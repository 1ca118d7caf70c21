"""Expected relative training speed of a plan: a product of factors calibrated on bench/results/anchors-h100-2026-11-25.md.

    relative_speed(plan, workload, facts)  ->  1.0 for a full fine-tune with fp32 master weights
                                              under bf16 autocast, no checkpointing, >= 4,096 tokens
                                              per micro-batch

Only the ranking matters (absolute tokens/s moved 20-30% between runs of the anchors). Each factor is
the ratio of two plans the anchors measured in one run on one H100 (Llama-3.2-1B, 8 x 512 tokens):

| factor | value | from |
|---|---|---|
| gradient checkpointing | 0.78 | the forward is rerun in backward (~30% more compute on the layers); k of L layers: 1 / (1 + 0.28 k/L) |
| chunked loss, when it chunks | 1.07 | LoRA + checkpointing 13,030 -> 13,966 tok/s with the loss chunked |
| LoRA | 0.64 | LoRA on bf16 weights 13,030 vs full fine-tune 20,735 / 1.07: peft's extra small kernels and fp32 adapter casts cost more than the optimizer step saved, at 1B |
| int8 base weights | 0.52 | the seed's 8-bit + LoRA recipe 6,297 vs the same without int8 (bitsandbytes int8 matmuls) |
| NF4 base weights | 0.72 | QLoRA's published cost, 39% more time than LoRA on a 16-bit base (S. Raschka, "Practical Tips for Finetuning LLMs Using LoRA", 2023: 1.39x), a dequantization per matmul in forward and backward; measured by tamer at 1B (bench/results/base-speed-h100-2026-12-06.md): LoRA on NF4 (fp32 adapters, bf16 autocast) 4,533 vs LoRA on pure bf16 6,559 tok/s = 0.69 = 0.72 / 1.05 (the pure-bf16 factor) |
| pure bf16 weights | 1.05 | full fine-tune in pure bf16 26,989 (no checkpointing) vs 20,735 / 0.78 / 1.07 |
| fp16 autocast | 0.97 | loss scaling (GradScaler) on top of 16-bit math |
| fp32 without autocast | 0.3 | tamer's own step on an H100 (this planner's check, 2026-11-25): fp32 + checkpointing 5,635 vs bf16 autocast + checkpointing 19,583 tok/s |
| computed tokens per micro-batch (micro-batch x `computed_per_sequence`) | 4,096: 1.0, 2,048: 0.764, 1,024: 0.325 | the seed's recipe at micro-batch 8 / 4 / 2: 6,297 / 4,812 / 2,045; halves again per halving below |
| paging | 0.8 | a guess: paged optimizer state that does not fit beside the peak moves to the host every step |
| FSDP | 0.85 | a guess, per process, vs DDP: an all-gather per layer in forward and backward, mostly overlapped with compute |

With these, the anchors' plans come out in the order measured (tests/unit/test_planner.py).

Known gap: LoRA without checkpointing measured 1.25x a full fine-tune without checkpointing in
tamer's own step (34,481 vs 27,552 tok/s, no weight gradients to compute), while LoRA with
checkpointing measured 0.64-0.75x; and against today's full fine-tune, whose layers compile (`compile: auto`;
LoRA-wrapped layers stay eager), LoRA on pure bf16 measured 0.42x at 1B (6,559 vs 15,500 tok/s, every layer
checkpointed, 8 x ~214 tokens; predicted 0.67x), while at 3B and 8B the LoRA plans ran 1.9x and 4.5x the tokens/s
predicted (bench/results/reach-h100-2026-12-06.md): the LoRA factor depends on the model's width, which one factor
cannot say; a 3B row of bench/base_speed.py is what it needs. One LoRA factor is kept on purpose: the
planner should reach for LoRA to fit, not to go faster, since it changes what is trained.
"""

from __future__ import annotations

import math

from tamer.plan import DeviceFacts, Plan
from tamer.planner.estimate import Workload, chunking_applies

CHECKPOINTING = 0.78
CHUNKED_LOSS = 1.07
LORA = 0.64
INT8_BASE = 0.52
NF4_BASE = 0.72
PURE_BF16 = 1.05
FP16_AUTOCAST = 0.97
FP32_MATH = 0.3
PAGING = 0.8
FSDP = 0.85
MICRO_BATCH_TOKENS = {4096: 1.0, 2048: 0.764, 1024: 0.325}
"""Throughput by tokens per micro-batch (log-linear between the points, halving below the smallest)."""

ANCHOR_TOKENS_PER_SECOND = 24_845
"""tokens/s of the reference plan (relative speed 1.0) implied by the anchors' H100 run: 20,735 / (0.78 x 1.07)."""


def micro_batch_factor(tokens: int) -> float:
    """Throughput factor for `tokens` per micro-batch, from MICRO_BATCH_TOKENS."""
    points = sorted(MICRO_BATCH_TOKENS.items())
    smallest, largest = points[0], points[-1]
    if tokens >= largest[0]:
        return largest[1]
    if tokens <= smallest[0]:
        return smallest[1] * tokens / smallest[0]
    for (low, low_factor), (high, high_factor) in zip(points, points[1:]):
        if low <= tokens <= high:
            share = math.log2(tokens / low) / math.log2(high / low)
            return low_factor * (high_factor / low_factor) ** share
    raise AssertionError("unreachable")


def precision_factor(plan: Plan, facts: DeviceFacts) -> float:
    if plan.quantization is None and plan.weights_dtype == "bf16":
        return PURE_BF16
    if plan.autocast_dtype == "fp16":
        return FP16_AUTOCAST
    if plan.autocast_dtype == "bf16":
        return 1.0
    return FP32_MATH if facts.kind == "cuda" else 1.0


def relative_speed(
    plan: Plan, workload: Workload, facts: DeviceFacts, paging: bool = False, num_layers: int | None = None
) -> float:
    """Expected tokens/s of `plan` relative to the reference plan (see the module docstring).
    `paging`: whether paged optimizer state is predicted not to fit on the device beside the peak;
    `num_layers`: the model's decoder layers, for a plan that checkpoints only some of them."""
    speed = precision_factor(plan, facts)
    if plan.gradient_checkpointing:
        # The recomputation is per layer: checkpointing k of L layers adds k/L of its cost (with a table by
        # size, k of the typical micro-batch).
        share = (plan.checkpoint_layers / num_layers) if plan.checkpoint_layers is not None and num_layers else 1.0
        if plan.checkpoint_layers_by_tokens and num_layers:
            typical = plan.micro_batch_size * (workload.computed_per_sequence or workload.sequence_length)
            share = plan.checkpointed_for(typical, num_layers) / num_layers
        speed /= 1 + (1 / CHECKPOINTING - 1) * min(1.0, share)
    if chunking_applies(plan, workload):
        speed *= CHUNKED_LOSS
    if plan.lora:
        speed *= LORA
    if plan.quantization == "int8":
        speed *= INT8_BASE
    if plan.quantization == "nf4":
        speed *= NF4_BASE
    if paging:
        speed *= PAGING
    if plan.world_size > 1 and plan.parallel == "fsdp":
        speed *= FSDP
    per_sequence = workload.computed_per_sequence or workload.sequence_length
    return speed * micro_batch_factor(plan.micro_batch_size * per_sequence)
