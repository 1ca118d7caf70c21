"""The chat recipe: conversations in, rendered with a chat template, with the loss on the assistant's turns.

    conversations = [row for row in conversations_of(rows, columns=None, train_on="assistant") if not isinstance(row, str)]
    examples, stats = build_examples(conversations, tokenizer, template, max_seq_len=512, train_on="assistant",
                                     overlong="truncate", label="data support.jsonl")

Rows are `{"messages": [{"role": "user", "content": "..."}, ...]}` (OpenAI / TRL / torchtune) or ShareGPT's
`{"conversations": [{"from": "human", "value": "..."}, ...]}` (`human` is the user, `gpt` the assistant);
`columns: {messages: COLUMN}` reads another column (of either shape). Roles: system, user, assistant, tool.
A row may carry `answers` (a list of texts): the references `tamer eval --em-f1` scores the last reply
against (else that reply itself).

What is scored (`train_on`): `assistant` = every assistant turn, `last_assistant` = the last one, `all` =
every token. A scored turn is its text as the template writes it up to its end-of-turn marker (found by
rendering prefixes: tamer/recipes/chat_templates.py); a token is scored when it begins inside one.
Skipped and counted (the `data` event): a row with an empty message, a row with no assistant turn (unless
`train_on: all`), a row longer than max_seq_len under `overlong: skip` (or with nothing scored left after
`truncate`). Refused with a DataError naming the row: an unknown role, a message that is not
{role, content} text, rows of both shapes in one source, a conversation the template refuses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tamer.errors import DataError
from tamer.recipes.chat_templates import ChatTemplate, TemplateRefused, refused
from tamer.recipes.examples import IGNORE_INDEX, Example, cut_to_length
from tamer.recipes.sources import (
    Rows,
    answers_value,
    did_you_mean,
    looks_like,
    mapped_columns,
    row_id,
    row_name,
    text_value,
)

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
}
SHAPES = {"messages": ("role", "content"), "conversations": ("from", "value")}


@dataclass
class Conversation:
    """One row's messages, normalised to {role, content}."""

    id: str
    messages: list[dict[str, str]]
    answers: tuple[str, ...]
    """References for EM/F1: the row's `answers`, else the last assistant reply."""


def conversations_of(rows: Rows, columns: dict[str, str] | None, train_on: str) -> list[Conversation | str]:
    """The conversation of each row of `rows`, or why it is skipped (`empty`, `no_assistant`)."""
    mapped = mapped_columns(rows, columns, ("messages", "answers"), ("messages",))
    present = [name for name in SHAPES if name in rows.columns]
    if mapped is not None:
        candidates = [mapped["messages"]]
    elif present:
        candidates = present
    else:
        raise DataError(
            f"{rows.label}: no 'messages' or 'conversations' column (columns: {', '.join(rows.columns) or 'none'})"
            f"{looks_like(rows, tuple(SHAPES))}; name yours with columns: {{messages: COLUMN}}"
        )
    answers_column = (mapped or {}).get("answers", "answers")
    found: list[Conversation | str] = []
    first_of: dict[str, int] = {}
    for position, row in enumerate(rows.rows):
        filled = [name for name in candidates if row.get(name) is not None]
        if len(filled) != 1:
            what = "both 'messages' and 'conversations'" if filled else f"no {' or '.join(repr(c) for c in candidates)}"
            raise DataError(f"{rows.label}: row {position} has {what}; give each row one conversation")
        column = filled[0]
        first_of.setdefault(column, position)
        if len(first_of) > 1:
            raise DataError(
                f"{rows.label}: row {first_of['messages']} is a messages row and row {first_of['conversations']} a "
                "ShareGPT conversations row: a file mixing formats; keep one format per file"
            )
        messages = _messages(row[column], f"{rows.label}: row {position}")
        if any(not message["content"].strip() for message in messages) or not messages:
            found.append("empty")
            continue
        if train_on != "all" and not any(message["role"] == "assistant" for message in messages):
            found.append("no_assistant")
            continue
        replies = [message["content"] for message in messages if message["role"] == "assistant"]
        answers = answers_value(row.get(answers_column), f"{rows.label}: row {position}") or tuple(replies[-1:])
        found.append(Conversation(row_id(row, position), messages, answers))
    return found


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """Messages as {role, content}, from either shape (datasets fills the other shape's keys with None)."""
    if not isinstance(value, list):
        raise DataError(f"{where}: the conversation is {type(value).__name__}, expected a list of messages")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {index} is {type(message).__name__}, expected {{role, content}}")
        if message.get("role") is not None or message.get("content") is not None:
            role, content, known = message.get("role"), message.get("content"), {name: name for name in ROLES}
        elif message.get("from") is not None or message.get("value") is not None:
            role, content, known = message.get("from"), message.get("value"), SHAREGPT_ROLES
        else:
            raise DataError(
                f"{where}: message {index} has neither role/content nor from/value (keys: {', '.join(message) or 'none'})"
            )
        if not isinstance(role, str) or role not in known:
            raise DataError(
                f"{where}: message {index} has unknown role {role!r}; known roles: {', '.join(known)}"
                + did_you_mean(str(role), list(known))
            )
        try:
            text = text_value(content)
        except TypeError as kind:
            raise DataError(f"{where}: message {index} content is {kind}, expected text") from None
        out.append({"role": known[role], "content": text or ""})
    return out


def build_examples(
    conversations: list[Conversation],
    tokenizer: Any,
    template: ChatTemplate,
    max_seq_len: int,
    train_on: str,
    overlong: str,
    label: str,
) -> tuple[list[Example], Counter]:
    """(examples, counts): each conversation rendered, tokenized once (one Rust batch), and labelled."""
    rendered = []
    for conversation in conversations:
        try:
            rendered.append(template.assistant_spans(conversation.messages))
        except TemplateRefused as error:
            raise refused(label, row_name(conversation.id), error) from None
    encodings = tokenizer.encode_batch([text for text, _ in rendered])
    examples: list[Example] = []
    counts: Counter = Counter()
    for conversation, (_, spans), encoding in zip(conversations, rendered, encodings):
        ids = encoding.ids
        chosen = spans[-1:] if train_on == "last_assistant" else spans
        labels = [
            token if train_on == "all" or _inside(offset, chosen) else IGNORE_INDEX
            for token, offset in zip(ids, encoding.offsets)
        ]
        truncated = len(ids) > max_seq_len
        fitted = cut_to_length(ids, labels, max_seq_len, overlong, f"{label}: {row_name(conversation.id)}")
        if fitted is None:
            counts["skipped_too_long"] += 1
            continue
        ids, labels = fitted
        if labels:
            labels[0] = IGNORE_INDEX  # packed after another example: never predicted from it
        if not any(label_id != IGNORE_INDEX for label_id in labels):
            counts["skipped_too_long" if truncated else "nothing_scored"] += 1
            continue
        counts["truncated"] += truncated
        examples.append(Example(len(examples), conversation.id, ids, labels, truncated))
    return examples, counts


def _inside(offset: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    begin = offset[0]
    return any(start <= begin < end for start, end in spans)


def generation_prompt(conversation: Conversation) -> list[dict[str, str]] | None:
    """The messages before the last assistant reply: what EM/F1 asks (None: no reply to ask for, under train_on: all)."""
    replies = [index for index, message in enumerate(conversation.messages) if message["role"] == "assistant"]
    return conversation.messages[: replies[-1]] if replies else None
