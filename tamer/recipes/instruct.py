"""The instruct recipe: prompt/completion pairs in, a prompt template around the prompt, the loss on the completion.

    pairs = [row for row in pairs_of(rows, columns=None) if not isinstance(row, str)]
    examples, stats = build_examples(pairs, tokenizer, template=None, max_seq_len=512, overlong="truncate", label="data a.jsonl")

Rows: `{"prompt", "completion"}`; Alpaca's `{"instruction", "input", "output"}` (input optional or empty);
or any columns through `columns: {prompt: COLUMN, completion: COLUMN, input: COLUMN}`. A row may carry
`answers` (a list of texts): the references `tamer eval --em-f1` scores against (else the completion).

The prompt template (`prompt_template`) is text with `{prompt}` and optionally `{input}`. The default is
Alpaca's layout without its preamble:

    ### Instruction:
    {prompt}

    ### Response:

and, for a row with an input, `### Input:\\n{input}\\n\\n` before `### Response:`. A template of your own
without `{input}` gets a row's input after its prompt, after a blank line.

Each example is BOS + the rendered prompt + the completion + EOS; the loss scores the completion and EOS.
The completion's ids are those that follow the prompt's when the two are tokenized together (so a model
asked the prompt continues as it was trained), or the completion's own where a token would straddle the two.
Skipped and counted: an empty prompt or completion, a row over max_seq_len under `overlong: skip` (or with
nothing scored left after `truncate`, which keeps the first max_seq_len tokens).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tamer.errors import DataError
from tamer.recipes.examples import IGNORE_INDEX, Example, cut_to_length
from tamer.recipes.sources import Rows, answers_value, looks_like, mapped_columns, row_id, row_name, text_value

DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
DEFAULT_TEMPLATE_WITH_INPUT = "### Instruction:\n{prompt}\n\n### Input:\n{input}\n\n### Response:\n"
FORMATS = {
    "prompt/completion": {"prompt": "prompt", "completion": "completion"},
    "instruction/output": {"prompt": "instruction", "input": "input", "completion": "output"},
}
PLACEHOLDER = re.compile(r"\{(prompt|input)\}")


@dataclass
class Pair:
    """One row: its prompt, optional input and completion."""

    id: str
    prompt: str
    input: str
    completion: str
    answers: tuple[str, ...]
    """References for EM/F1: the row's `answers`, else the completion."""


def pairs_of(rows: Rows, columns: dict[str, str] | None) -> list[Pair | str]:
    """The pair of each row of `rows`, or why it is skipped (`empty`)."""
    mapped = mapped_columns(rows, columns, ("prompt", "completion", "input", "answers"), ("prompt", "completion"))
    if mapped is not None:
        formats = {"columns": mapped}
    else:
        formats = {
            name: keys
            for name, keys in FORMATS.items()
            if all(keys[key] in rows.columns for key in ("prompt", "completion"))
        }
    if not formats:
        raise DataError(
            f"{rows.label}: no prompt/completion or instruction/output columns (columns: {', '.join(rows.columns) or 'none'})"
            f"{looks_like(rows, ('prompt', 'completion', 'instruction', 'output'))}; "
            "name yours with columns: {prompt: COLUMN, completion: COLUMN}"
        )
    answers_column = (mapped or {}).get("answers", "answers")
    found: list[Pair | str] = []
    first_of: dict[str, int] = {}
    for position, row in enumerate(rows.rows):
        where = f"{rows.label}: row {position}"
        kinds = [
            name
            for name, keys in formats.items()
            if any(row.get(keys[key]) is not None for key in ("prompt", "completion"))
        ]
        if len(kinds) > 1:
            raise DataError(f"{where} has both prompt/completion and instruction/output; give each row one of them")
        if not kinds:
            found.append("empty")
            continue
        first_of.setdefault(kinds[0], position)
        if len(first_of) > 1:
            (one, first), (other, second) = sorted(first_of.items(), key=lambda item: item[1])
            raise DataError(
                f"{rows.label}: row {first} is a {one} row and row {second} an {other} row: a file mixing formats; "
                "keep one format per file"
            )
        keys = formats[kinds[0]]
        values = {}
        for key in ("prompt", "input", "completion"):
            try:
                values[key] = text_value(row.get(keys[key])) if key in keys else None
            except TypeError as kind:
                raise DataError(f"{where}: '{keys[key]}' is {kind}, expected text") from None
        if not (values["prompt"] or "").strip() or not (values["completion"] or "").strip():
            found.append("empty")
            continue
        found.append(
            Pair(
                row_id(row, position),
                values["prompt"],
                values["input"] or "",
                values["completion"],
                answers_value(row.get(answers_column), where) or (values["completion"],),
            )
        )
    return found


def render_prompt(pair: Pair, template: str | None) -> str:
    """The prompt text of `pair` under `template` (None: the default, with or without its input part)."""
    if template is None:
        template = DEFAULT_TEMPLATE_WITH_INPUT if pair.input.strip() else DEFAULT_TEMPLATE
        prompt = pair.prompt
    else:
        joins_input = pair.input.strip() and "{input}" not in template
        prompt = f"{pair.prompt}\n\n{pair.input}" if joins_input else pair.prompt
    values = {"prompt": prompt, "input": pair.input}
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def prompt_ids(pair: Pair, tokenizer: Any, template: str | None) -> list[int]:
    """BOS + the rendered prompt's ids: what the model is asked at evaluation, as in training."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    return bos + tokenizer.ids(render_prompt(pair, template))


def build_examples(
    pairs: list[Pair], tokenizer: Any, template: str | None, max_seq_len: int, overlong: str, label: str
) -> tuple[list[Example], Counter]:
    """(examples, counts): BOS + prompt (not scored) + completion + EOS (scored), tokenized in Rust batches."""
    eos = tokenizer.require_eos()
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    prompts = [render_prompt(pair, template) for pair in pairs]
    prompt_encodings = tokenizer.encode_batch(prompts)
    joint_encodings = tokenizer.encode_batch([prompt + pair.completion for prompt, pair in zip(prompts, pairs)])
    examples: list[Example] = []
    counts: Counter = Counter()
    for pair, prompt, joint in zip(pairs, prompt_encodings, joint_encodings):
        asked = bos + prompt.ids
        if joint.ids[: len(prompt.ids)] == prompt.ids:
            answer = joint.ids[len(prompt.ids) :]
        else:  # a token straddles the boundary: tokenize the completion alone
            answer = tokenizer.ids(pair.completion)
        ids = asked + answer + [eos]
        labels = [IGNORE_INDEX] * len(asked) + answer + [eos]
        truncated = len(ids) > max_seq_len
        fitted = cut_to_length(ids, labels, max_seq_len, overlong, f"{label}: {row_name(pair.id)}")
        if fitted is None:
            counts["skipped_too_long"] += 1
            continue
        ids, labels = fitted
        labels[0] = IGNORE_INDEX
        if not any(value != IGNORE_INDEX for value in labels):
            counts["skipped_too_long"] += 1
            continue
        counts["truncated"] += truncated
        examples.append(Example(len(examples), pair.id, ids, labels, truncated))
    return examples, counts
