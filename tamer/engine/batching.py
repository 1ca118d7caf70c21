"""Turning a step's samples into micro-batch tensors, by the config's `batching` mode; used by the
trainer (tamer/engine/trainer.py, `Trainer.batches`) for training and evaluation.

    micro_batches = build(examples, sample_ids, size=4, mode="packed", pad_id=0, max_seq_len=512, multiple=64)

Modes (what a micro-batch of `size` samples becomes):
- `longest`: one row per sample, padded to the longest sample of the micro-batch (shapes change every step).
- `max_len`: one row per sample, padded to max_seq_len (one shape; most padding).
- `bucket`: one row per sample, padded to the longest rounded up to a multiple of `multiple` (at most
  max_seq_len): a handful of shapes.
- `packed`: the samples concatenated into one row, rounded up to a multiple of `multiple`; position ids
  restart at 0 for every sample (and for the padding tail), and no attention mask is passed, so
  transformers builds a block-diagonal causal mask from the position ids (SDPA, eager, flex and flash
  varlen alike): attention never crosses samples. Each sample starts with a BOS whose label is ignored,
  so no loss term spans two samples either.

Every mode gives the same loss sum and supervised-token count for the same samples (up to float
rounding); the trainer normalises by the whole step's supervised tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tamer.engine.collate import pad_batch
from tamer.recipes.examples import IGNORE_INDEX, Example

Mode = Literal["longest", "max_len", "bucket", "packed"]
MODES: tuple[str, ...] = ("longest", "max_len", "bucket", "packed")
GROUPED_MODES = ("bucket", "packed")
"""Modes that also regroup the data order by length (tamer/engine/sampling.py, LengthGroupedOrder)."""


@dataclass
class MicroBatch:
    tensors: dict[str, torch.Tensor]
    sample_ids: list[int]
    useful_tokens: int
    """Tokens of the samples themselves (no padding)."""
    computed_tokens: int
    """Positions the model computes: rows x row length."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bucket_length(longest: int, multiple: int, max_seq_len: int) -> int:
    """The padded length of a `bucket` row: `longest` rounded up to `multiple`, never past max_seq_len."""
    return max(longest, min(round_up(longest, multiple), max_seq_len))


def pack(examples: list[Example], pad_id: int, multiple: int) -> dict[str, torch.Tensor]:
    """`examples` in one row of input_ids, labels and restarted position_ids, padded to a multiple of `multiple`."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        input_ids += example.input_ids
        labels += example.labels
        positions += range(len(example.input_ids))
    padding = round_up(len(input_ids), multiple) - len(input_ids)
    input_ids += [pad_id] * padding
    labels += [IGNORE_INDEX] * padding
    positions += range(padding)  # a segment of its own: attends only to itself and is never scored
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.int64),
        "labels": torch.tensor([labels], dtype=torch.int64),
        "position_ids": torch.tensor([positions], dtype=torch.int64),
    }


def collate(
    examples: list[Example], mode: Mode, pad_id: int, max_seq_len: int, multiple: int
) -> dict[str, torch.Tensor]:
    """The tensors of one micro-batch in `mode` (see the module docstring)."""
    if mode == "packed":
        return pack(examples, pad_id, multiple)
    longest = max(len(example.input_ids) for example in examples)
    pad_to = {"longest": None, "max_len": max_seq_len, "bucket": bucket_length(longest, multiple, max_seq_len)}[mode]
    collated = pad_batch(examples, pad_id, pad_to)
    return {name: value for name, value in collated.items() if isinstance(value, torch.Tensor)}


def build(
    examples: list[Example], sample_ids: list[int], size: int, mode: Mode, pad_id: int, max_seq_len: int, multiple: int
) -> list[MicroBatch]:
    """`sample_ids` cut into micro-batches of `size` samples, in order, each collated in `mode` (on the CPU)."""
    out = []
    for start in range(0, len(sample_ids), size):
        ids = sample_ids[start : start + size]
        chosen = [examples[i] for i in ids]
        tensors = collate(chosen, mode, pad_id, max_seq_len, multiple)
        out.append(
            MicroBatch(tensors, ids, sum(len(example.input_ids) for example in chosen), tensors["input_ids"].numel())
        )
    return out
