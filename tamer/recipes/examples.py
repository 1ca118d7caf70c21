"""What every recipe produces: tokenized examples (token ids and labels), and what the `data` event counts.

No torch: the supervisor builds examples with these in preflight (to refuse bad data and measure its
token lengths before a run is registered) and the child builds the same ones to train on; the child
pads or packs them into tensors (tamer/engine/batching.py).

    example = Example(index=0, id="row 3", input_ids=[1, 415, 2], labels=[IGNORE_INDEX, 415, 2], truncated=False)
    scored_tokens(example)  # 2: labels are predicted from the position before, so labels[0] never counts

Every example's first label is IGNORE_INDEX: packed rows put examples side by side, and the first token of
one must never be predicted from the last token of the one before.
"""

from __future__ import annotations

from dataclasses import dataclass

from tamer.errors import DataError

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


@dataclass
class Example:
    """One tokenized training sequence."""

    index: int
    """Position in the list of examples built (the sample id the trainer reports)."""
    id: str
    """The source's id for it: a SQuAD question id, a row's `id` column, or `row N` (`row N#k` for a piece of a document)."""
    input_ids: list[int]
    labels: list[int]
    """IGNORE_INDEX where the loss does not score; elsewhere the token itself (unshifted)."""
    truncated: bool
    """Whether tokens were dropped to fit max_seq_len."""


def scored_tokens(example: Example) -> int:
    """How many tokens the loss scores for `example`. The model predicts token i from position
    i - 1, so labels are shifted by one and position 0 is never scored: count labels[1:] only."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def cut_to_length(
    ids: list[int], labels: list[int], max_seq_len: int, overlong: str, described: str
) -> tuple[list[int], list[int]] | None:
    """`ids` and `labels` of a row longer than `max_seq_len` as `overlong` says: cut to the length (`truncate`), None
    (`skip`; the caller counts it), or a DataError naming the row (`error`). A row that fits is returned as it is."""
    if len(ids) <= max_seq_len:
        return ids, labels
    if overlong == "error":
        raise DataError(
            f"{described} has {len(ids)} tokens, more than max_seq_len {max_seq_len} (overlong: error); "
            "raise max_seq_len, or set overlong: truncate or skip"
        )
    if overlong == "skip":
        return None
    return ids[:max_seq_len], labels[:max_seq_len]
