"""Examples into tensors: the torch half of a recipe, run only in the child (tamer/engine/).

A recipe (tamer/recipes/) turns records into token ids and labels without torch, so that
the supervisor can check data before a run starts without importing it; `pad_batch` makes a
right-padded batch of them, and tamer/engine/batching.py builds the micro-batches of a step on it.

    batch = pad_batch(examples[:8], pad_id=tokenizer.pad_token_id)
"""

from __future__ import annotations

from typing import Any

import torch

from tamer.recipes.examples import IGNORE_INDEX, Example


def pad_batch(examples: list[Example], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
    """A batch right-padded to the longest example (or to `pad_to`): int64 `input_ids`,
    `attention_mask` (0 on padding) and `labels` (IGNORE_INDEX on padding), plus `sample_ids`, the
    examples' indexes as a list."""
    if not examples:
        raise ValueError("pad_batch: no examples")
    longest = max(len(example.input_ids) for example in examples)
    if pad_to is not None and pad_to < longest:
        raise ValueError(f"pad_batch: pad_to {pad_to} is shorter than the longest example ({longest} tokens)")
    length = longest if pad_to is None else pad_to
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.int64)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.int64)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.int64)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.int64)
        attention_mask[row, :size] = 1
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "sample_ids": [example.index for example in examples],
    }
