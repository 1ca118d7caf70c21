"""The causal-LM loss, summed over supervised tokens only.

The model's decoder runs on the whole sequence, but the LM head and cross-entropy run only at
positions whose next token is supervised (answer + EOS for SQuAD): the [tokens x vocab] logits of the
prompt are never needed, so they are never built. The result is a *sum*; the trainer divides by the
number of supervised tokens of the whole optimizer step, so the gradient does not depend on how the
step is cut into micro-batches.

`chunk_size` (the `chunked_loss` rung) goes further: the head + cross-entropy run over slices of
that many positions, each recomputed in backward, so at most one slice of fp32 logits exists at a
time. Exact up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The LlamaForCausalLM inside a peft wrapper, or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supervised_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at positions that predict a supervised token, and those tokens. Packed rows
    (tamer/engine/batching.py) pass `position_ids` restarted per sample and no attention mask."""
    causal_lm = _causal_lm(model)
    hidden = causal_lm.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return hidden[:, :-1][mask], targets[mask]


def _head_cross_entropy_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int | None = None
) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies in fp32, number of supervised tokens) for one micro-batch."""
    hidden, targets = supervised_hidden(
        model, batch["input_ids"], batch.get("attention_mask"), batch["labels"], batch.get("position_ids")
    )
    head = _causal_lm(model).get_output_embeddings()
    count = int(targets.numel())
    if count == 0:
        return hidden.sum() * 0.0, 0
    if chunk_size is None or count <= chunk_size:
        return _head_cross_entropy_sum(head, hidden, targets), count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        piece = slice(start, start + chunk_size)
        total = total + checkpoint(_head_cross_entropy_sum, head, hidden[piece], targets[piece], use_reentrant=False)
    return total, count


class SupervisedLoss(torch.nn.Module):
    """The model with `loss_sum` as its forward, so a DDP/FSDP wrapper sees (and hooks) the whole
    computation: forward(input_ids, attention_mask, labels, position_ids) -> summed loss."""

    def __init__(self, model: torch.nn.Module, chunk_size: int | None) -> None:
        super().__init__()
        self.inner = model
        self.chunk_size = chunk_size

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "position_ids": position_ids,
        }
        summed, _ = loss_sum(self.inner, batch, self.chunk_size)
        return summed


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of the causal LM inside `module` (FSDP shards one unit per block)."""
    inner = module.inner if isinstance(module, SupervisedLoss) else module
    return list(_causal_lm(inner).model.layers)
