"""A plan: how the child trains, as plain data.

The supervisor and the strategies only ever build and compare plans; only the child turns one into
torch objects. A plan is JSON-serialisable so it can be stored on the attempt row and in
`runs/<id>/plans/attempt-<n>.json`.

The effective batch (micro-batch x accumulation x world size) is the user's and never changes across
plans. With several processes (torchrun) micro-batch and accumulation are per process.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from tamer.schema import validate

AutocastDtype = Literal["fp16", "bf16"]
WeightsDtype = Literal["fp32", "bf16"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]
Quantization = Literal["int8", "nf4"]
ComputeDtype = Literal["bf16", "fp16"]
Parallel = Literal["ddp", "fsdp"]

LOSS_CHUNK_TOKENS = 1024
"""Positions per slice of a chunked loss (`chunked_loss`): the trainer computes the LM head and cross-entropy this many
positions at a time, and the planner sizes the logits by it."""
PAGED_MIN_ELEMENTS = 100_000
"""bitsandbytes pages the optimizer moments of tensors at least this large (Optimizer8bit.get_state_buffer); smaller
ones stay in normal device memory. The child repages by it after a resume, the planner counts managed memory by it."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the ladder needs to know about where the child will train (gathered without CUDA in the
    supervisor's own process)."""

    kind: Literal["cpu", "cuda"] = "cpu"
    name: str = "cpu"
    total_memory: int | None = None
    compute_capability: tuple[int, int] | None = None
    bf16: bool = True
    fp16: bool = False
    bitsandbytes: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceFacts:
        """Facts from their to_dict() (JSON) form, strictly: an unknown key or a wrong value is a ConfigError."""
        data = dict(data)
        if data.get("compute_capability") is not None:
            data["compute_capability"] = tuple(data["compute_capability"])
        return validate(cls, data, "device.")


@dataclass(frozen=True)
class Plan:
    """Everything about how a run trains that a strategy may change."""

    micro_batch_size: int
    grad_accumulation: int
    eval_batch_size: int
    env: dict[str, str] = field(default_factory=dict)
    gradient_checkpointing: bool = False
    checkpoint_layers: int | None = None
    """With gradient_checkpointing: checkpoint only the first this many decoder layers (None = all); the
    others keep their activations (more memory, no recomputation). Exact either way."""
    checkpoint_layers_by_tokens: tuple[tuple[int, int], ...] = ()
    """With gradient_checkpointing, per micro-batch size in computed tokens: ((up to tokens, layers), ...) in
    ascending order; a micro-batch of at most `tokens` computed tokens checkpoints only the first `layers`
    decoder layers, a larger one `checkpoint_layers` (the planner's choice for the longest micro-batch).
    Packed rows and length buckets vary in size, and a short one fits with fewer layers recomputed."""
    autocast_dtype: AutocastDtype | None = None
    weights_dtype: WeightsDtype = "fp32"
    quantization: Quantization | None = None
    """Frozen base weights stored quantized by bitsandbytes (under LoRA): `int8` (LLM.int8) or `nf4` (4-bit NormalFloat
    with double quantization, as QLoRA); None: the weights in `weights_dtype`."""
    compute_dtype: ComputeDtype | None = None
    """With an `nf4` base: the dtype bitsandbytes dequantizes the 4-bit weights to for each matmul (bf16 where the card
    has it, fp16 on a T4 or V100); None otherwise."""
    lora: bool = False
    optimizer: Optimizer = "adamw"
    chunked_loss: bool = False
    world_size: int = 1
    """Processes training together (torchrun), each on its own share of every optimizer step."""
    parallel: Parallel = "ddp"
    """With world_size > 1: `ddp` (every process holds the whole model; gradients all-reduced) or `fsdp`
    (parameters, gradients and optimizer states sharded across the processes)."""
    rungs: tuple[str, ...] = ()
    in_process_split_down_to: int | None = None
    """Set by the ladder for the child (tamer/strategies/ladder.py, `for_child`): after a CUDA OOM in
    forward or backward the child may halve its micro-batch in process, down to this size, and retry the
    step (tamer/strategies/split_micro_batch.py, `split_in_process`); None: the OOM ends the child."""

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accumulation * self.world_size

    def checkpointed_for(self, tokens: int, num_layers: int) -> int:
        """Decoder layers checkpointed for a micro-batch of `tokens` computed tokens (0 without checkpointing)."""
        if not self.gradient_checkpointing:
            return 0
        for limit, layers in self.checkpoint_layers_by_tokens:
            if tokens <= limit:
                return min(layers, num_layers)
        return num_layers if self.checkpoint_layers is None else min(self.checkpoint_layers, num_layers)

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)

    def with_rung(self, name: str, **changes: Any) -> Plan:
        """This plan with `changes` applied and `name` appended to the rungs applied. The checkpointing table
        by size goes: the planner derived it for this plan's memory, which a rung changes (a micro-batch
        split kept with it would give the halved rows fewer checkpointed layers and spend what it freed)."""
        changes.setdefault("checkpoint_layers_by_tokens", ())
        return dataclasses.replace(self, rungs=self.rungs + (name,), **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rungs"] = list(self.rungs)
        data["checkpoint_layers_by_tokens"] = [list(entry) for entry in self.checkpoint_layers_by_tokens]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], prefix: str = "plan.") -> Plan:
        """A plan from its JSON form, strictly: an unknown key or a wrong value is a one-line ConfigError."""
        data = dict(data)
        if isinstance(data.get("rungs"), list):
            data["rungs"] = tuple(data["rungs"])
        by_tokens = data.get("checkpoint_layers_by_tokens")
        if isinstance(by_tokens, list):
            data["checkpoint_layers_by_tokens"] = tuple(
                tuple(entry) if isinstance(entry, list) else entry for entry in by_tokens
            )
        return validate(cls, data, prefix)

    def describe_by_size(self, short: bool = False) -> str:
        """The checkpointing table by size in words: short, `fewer for rows up to 4,032 tokens, none up to 2,112` (what
        the one-line description carries); else every entry, `0 layers up to 2,112 tokens, 1 up to 2,304, ...`."""
        table = self.checkpoint_layers_by_tokens
        if not table:
            return ""
        if short:
            none = [limit for limit, layers in table if layers == 0]
            return f"fewer for rows up to {table[-1][0]:,} tokens" + (f", none up to {none[-1]:,}" if none else "")
        first_limit, first_layers = table[0]
        rest = "".join(f", {layers} up to {limit:,}" for limit, layers in table[1:])
        return f"{first_layers} layers up to {first_limit:,} tokens{rest}"

    def describe(self) -> str:
        """One line a person can read: `mb 4 x 2, fp32 weights, bf16 autocast, checkpointing, ...`."""
        parts = [f"micro-batch {self.micro_batch_size} x {self.grad_accumulation}"]
        if self.world_size > 1:
            parts = [
                f"{self.world_size} processes ({self.parallel.upper()}) x micro-batch {self.micro_batch_size} x {self.grad_accumulation}"
            ]
        if self.quantization:
            parts.append(
                f"{self.quantization} base" + (f" ({self.compute_dtype} compute)" if self.compute_dtype else "")
            )
        parts.append(f"{self.weights_dtype} weights")
        if self.autocast_dtype:
            parts.append(f"{self.autocast_dtype} autocast")
        if self.lora:
            parts.append("LoRA")
        if self.gradient_checkpointing:
            parts.append(
                "checkpointing" if self.checkpoint_layers is None else f"checkpointing {self.checkpoint_layers} layers"
            )
            if self.checkpoint_layers_by_tokens:
                parts[-1] += f" ({self.describe_by_size(short=True)})"
        parts.append(self.optimizer)
        if self.chunked_loss:
            parts.append("chunked loss")
        if self.env.get("PYTORCH_CUDA_ALLOC_CONF"):
            parts.append("expandable segments")
        return ", ".join(parts)
