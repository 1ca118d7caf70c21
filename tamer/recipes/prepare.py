"""The chat, instruct and text recipes from config to examples, without torch: one pipeline that preflight
runs before a run is registered (to refuse bad data, exit 3, and measure its token lengths for the planner)
and the child runs again to train (the same ids: same files, same tokenizer, same code).

    prepared = prepare(config)        # rows -> validation split -> records -> examples, counted
    prepared.train, prepared.evaluation, prepared.summary, prepared.profile

Reads top to bottom: the tokenizer (and, for chat, the template), the rows of `data` (tamer/recipes/sources.py),
the validation rows (`eval_data`, else `validation_split` or `eval_samples` rows held out of `data`, by row,
seeded), each row turned into the recipe's record (or a counted skip), and the records into examples
(tamer/recipes/chat.py, instruct.py, text.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tamer.errors import DataError
from tamer.recipes import chat, chat_templates, instruct, sources, text, tokens
from tamer.recipes.examples import Example
from tamer.recipes.profile import DataProfile

DATA_RECIPES = ("chat", "instruct", "text")
SKIPS = {
    "skipped_too_long": "skipped as too long",
    "skipped_empty": "skipped as empty",
    "skipped_no_assistant": "skipped without an assistant turn",
    "nothing_scored": "skipped with nothing to score",
    "cut": "documents cut into pieces",
}
"""What the `data` event counts beyond `truncated`, in its words."""


@dataclass
class Prepared:
    """A data recipe's examples, what the `data` event says of them, and what evaluation needs."""

    train: list[Example]
    evaluation: list[Example]
    summary: str
    detail: dict[str, Any]
    profile: DataProfile
    tokenizer: tokens.TextTokenizer
    template: chat_templates.ChatTemplate | None
    eval_records: list[Any] = field(default_factory=list)
    """The records behind `evaluation` (Conversation, Pair or Document), for EM/F1."""


def setup(
    config: Any, tokenizer: tokens.TextTokenizer | None = None
) -> tuple[tokens.TextTokenizer, chat_templates.ChatTemplate | None]:
    """The tokenizer the config names and, for chat, the template it renders with."""
    tokenizer = tokenizer or tokens.load(tokens.tokenizer_source(config), config.model)
    template = chat_templates.resolve(config.chat_template, tokenizer) if config.recipe == "chat" else None
    return tokenizer, template


def prepare(config: Any, tokenizer: tokens.TextTokenizer | None = None) -> Prepared:
    """Train and validation examples of a chat, instruct or text config (see the module docstring)."""
    tokenizer, template = setup(config, tokenizer)
    if config.data is None:
        raise DataError(
            f"data: the {config.recipe} recipe trains on your data: pass --data with a .jsonl/.json/.parquet/.csv "
            "file (.txt for text), a folder, hub:NAME[:SUBSET], or bundled (its sample)"
        )
    rows = sources.load_rows(config.data, config.recipe, config.split, "data")
    if config.eval_data is not None:
        train_rows, eval_rows = rows, sources.load_rows(config.eval_data, config.recipe, config.eval_split, "eval_data")
        train_records, eval_records = records_of(config, train_rows), records_of(config, eval_rows)
    else:
        records = records_of(config, rows)
        train_positions, eval_positions = sources.hold_out(
            len(records), config.eval_samples, config.validation_split, config.seed, rows.label
        )
        train_records, eval_records = [records[p] for p in train_positions], [records[p] for p in eval_positions]
    train, train_counts = examples_of(config, train_records, tokenizer, template, rows.label)
    evaluation, eval_counts = examples_of(
        config, eval_records, tokenizer, template, f"eval_data {config.eval_data}" if config.eval_data else rows.label
    )
    if not train:
        reasons = (
            ", ".join(f"{count} {SKIPS[name]}" for name, count in train_counts.items() if count and name in SKIPS)
            or "no rows"
        )
        raise DataError(
            f"{rows.label}: no training examples left after filtering ({len(train_records)} rows: {reasons}); "
            "check the data and the columns it is read from"
        )
    if config.max_steps is None and len(train) < config.effective_batch_size:
        raise DataError(
            f"{rows.label}: {len(train)} training examples make no full batch of {config.effective_batch_size}; "
            "lower effective_batch_size or add data"
        )
    summary = f"{len(train)} training and {len(evaluation)} validation examples; " + ", ".join(
        [f"{train_counts['truncated'] + eval_counts['truncated']} truncated"]
        + [
            f"{train_counts[name] + eval_counts[name]} {words}"
            for name, words in SKIPS.items()
            if name == "skipped_too_long" or train_counts[name] + eval_counts[name]
        ]
    )
    detail = {"train": {"examples": len(train), **train_counts}, "eval": {"examples": len(evaluation), **eval_counts}}
    kept = [record for record in eval_records if not isinstance(record, str)]
    return Prepared(train, evaluation, summary, detail, DataProfile.of(train), tokenizer, template, kept)


def records_of(config: Any, rows: sources.Rows) -> list[Any]:
    """Each row's record for the config's recipe, or the reason it is skipped."""
    if config.recipe == "chat":
        return chat.conversations_of(rows, config.columns, config.train_on)
    if config.recipe == "instruct":
        return instruct.pairs_of(rows, config.columns)
    return text.documents_of(rows, config.columns)


def examples_of(
    config: Any,
    records: list[Any],
    tokenizer: tokens.TextTokenizer,
    template: chat_templates.ChatTemplate | None,
    label: str,
) -> tuple[list[Example], Counter]:
    """The examples of `records` (skip reasons counted as `skipped_<reason>`), and their counts."""
    kept = [record for record in records if not isinstance(record, str)]
    counts: Counter = Counter({"rows": len(records), "truncated": 0, "skipped_too_long": 0})
    counts.update(f"skipped_{reason}" for reason in records if isinstance(reason, str))
    if config.recipe == "chat":
        examples, built = chat.build_examples(
            kept, tokenizer, template, config.max_seq_len, config.train_on, config.overlong, label
        )
    elif config.recipe == "instruct":
        examples, built = instruct.build_examples(
            kept, tokenizer, config.prompt_template, config.max_seq_len, config.overlong, label
        )
    else:
        examples, built = text.build_examples(kept, tokenizer, config.max_seq_len)
    counts.update(built)
    return examples, counts


def prepare_file(config: Any, source: str, tokenizer: tokens.TextTokenizer | None = None) -> Prepared:
    """Every row of another source as validation examples (`tamer eval --data SOURCE`): no split, no training rows."""
    tokenizer, template = setup(config, tokenizer)
    rows = sources.load_rows(source, config.recipe, config.eval_split, "--data")
    records = records_of(config, rows)
    evaluation, counts = examples_of(config, records, tokenizer, template, rows.label)
    if not evaluation:
        raise DataError(f"{rows.label}: no examples left to evaluate ({len(records)} rows)")
    kept = [record for record in records if not isinstance(record, str)]
    return Prepared(
        [],
        evaluation,
        f"{len(evaluation)} examples",
        {"eval": dict(counts)},
        DataProfile.of(evaluation),
        tokenizer,
        template,
        kept,
    )
