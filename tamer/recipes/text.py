"""The text recipe: documents in, causal-LM loss on every token, long documents cut into pieces.

    documents = [row for row in documents_of(rows, columns=None) if not isinstance(row, str)]
    examples, stats = build_examples(documents, tokenizer, max_seq_len=512)

Rows: a `text` column (or `columns: {text: COLUMN}`); `.txt` files are one document each. A document is
BOS + its tokens + EOS, cut into pieces of at most max_seq_len tokens; each piece after the first starts
with the last token of the piece before, unscored, so every token after BOS is scored exactly once and a
piece never predicts its first token from nothing. Pieces are examples of their own: packed rows restart
positions at each, so attention never crosses a document or a piece. Empty documents are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tamer.errors import DataError
from tamer.recipes.examples import IGNORE_INDEX, Example
from tamer.recipes.sources import Rows, looks_like, mapped_columns, row_id, text_value


@dataclass
class Document:
    id: str
    text: str


def documents_of(rows: Rows, columns: dict[str, str] | None) -> list[Document | str]:
    """The document of each row of `rows`, or why it is skipped (`empty`)."""
    mapped = mapped_columns(rows, columns, ("text",), ("text",))
    column = mapped["text"] if mapped else "text"
    if column not in rows.columns:
        raise DataError(
            f"{rows.label}: no 'text' column (columns: {', '.join(rows.columns) or 'none'}){looks_like(rows, ('text',))}; "
            "name yours with columns: {text: COLUMN}"
        )
    found: list[Document | str] = []
    for position, row in enumerate(rows.rows):
        try:
            text = text_value(row.get(column))
        except TypeError as kind:
            raise DataError(f"{rows.label}: row {position}: '{column}' is {kind}, expected text") from None
        if not (text or "").strip():
            found.append("empty")
            continue
        found.append(Document(row_id(row, position), text))
    return found


def pieces(ids: list[int], max_seq_len: int) -> list[tuple[int, int]]:
    """(start, end) of each piece of a document of len(ids) tokens: at most max_seq_len long, each after the
    first starting at the last token of the one before."""
    spans, start = [], 0
    while True:
        end = min(len(ids), start + max_seq_len)
        spans.append((start, end))
        if end >= len(ids):
            return spans
        start = end - 1


def build_examples(documents: list[Document], tokenizer: Any, max_seq_len: int) -> tuple[list[Example], Counter]:
    """(examples, counts): every document's pieces, in document order (`cut` counts documents cut into pieces)."""
    if max_seq_len < 2:
        raise DataError(f"max_seq_len: {max_seq_len} leaves no token to score after the first; use at least 2")
    eos = tokenizer.require_eos()
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    examples: list[Example] = []
    counts: Counter = Counter()
    for document, encoding in zip(documents, tokenizer.encode_batch([document.text for document in documents])):
        ids = bos + encoding.ids + [eos]
        spans = pieces(ids, max_seq_len)
        counts["cut"] += len(spans) > 1
        for number, (start, end) in enumerate(spans):
            piece = ids[start:end]
            name = document.id if len(spans) == 1 else f"{document.id}#{number}"
            examples.append(Example(len(examples), name, piece, [IGNORE_INDEX] + piece[1:], False))
    return examples, counts
