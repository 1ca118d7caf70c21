"""The SQuAD recipe: questions in, padded batches with answer-only labels out.

Read top to bottom: load the records (hub, a local SQuAD v1.1 JSON file, or the bundled slice), hold
some out for evaluation, load the tokenizer, and turn each record into a prompt plus target. No torch
here: the supervisor checks data with it before a run starts; the child pads examples into tensors
(tamer/engine/collate.py).

    records = load_records("bundled")
    train_records, eval_records = split_train_eval(records, eval_samples=64, seed=0)
    tokenizer = load_tokenizer("bundled", model="tiny-llama")
    examples, stats = build_examples(train_records, tokenizer, max_seq_len=512)
    batch = pad_batch(examples[:8], pad_id=tokenizer.pad_token_id)  # tamer/engine/collate.py

Each example reads `Context: {context}\\nQuestion: {question}\\nAnswer: {answer}</s>`; the loss covers
the answer and the end-of-sequence token only. An example longer than `max_seq_len` loses context
tokens (a window around the answer is kept), never question or answer tokens.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tamer.errors import DataError, ModelError
from tamer.hub import HUB_DATASET, hub_error
from tamer.recipes.examples import IGNORE_INDEX, Example, scored_tokens

# datasets and transformers are imported where they are used: both are slow to import, and a
# caller that only reads a data file needs neither.
if TYPE_CHECKING:
    from tokenizers import Encoding
    from transformers import PreTrainedTokenizerFast

BUNDLED_DATA = Path(str(files("tamer.recipes") / "data" / "squad_v1.1_slice.json"))
BUNDLED_TOKENIZER = Path(str(files("tamer.recipes") / "data" / "tokenizer_mistral_v1"))

CONTEXT_LABEL = "Context:"
QUESTION_LABEL = "\nQuestion:"
ANSWER_LABEL = "\nAnswer:"


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class Record:
    """One question with its paragraph and its first reference answer (the one training uses)."""

    id: str
    context: str
    question: str
    answer: str
    answer_start: int
    """Character offset of `answer` in `context`."""
    gold_answers: tuple[str, ...] = ()
    """Every reference answer's text, first included (evaluation accepts any of them)."""


def load_records(source: str | None, split: str = "train") -> list[Record]:
    """The records of `source`: None = `rajpurkar/squad` (`split`) from the hub, `bundled` = the
    slice shipped with tamer, else the path of an official SQuAD v1.1 JSON file."""
    if source is None:
        return _load_hub_split(split)
    if source == "bundled":
        return _load_file(BUNDLED_DATA, "--data bundled")
    return _load_file(Path(source).expanduser(), f"--data {source}")


def _load_hub_split(split: str) -> list[Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(HUB_DATASET, split=split)
    except OSError as error:  # ConnectionError, DatasetNotFoundError and the hub's HTTP errors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"data: could not reach the hub to load {HUB_DATASET} ({reason}); "
            "pass --data PATH with a local SQuAD v1.1 JSON file (or --data bundled)"
        ) from None
    label = f"data {HUB_DATASET}"
    records = []
    for index, row in enumerate(dataset.to_list()):
        answers = row.get("answers") or {}
        question = {
            "id": row.get("id"),
            "question": row.get("question"),
            "answers": [
                {"text": text, "answer_start": start}
                for text, start in zip(answers.get("text", []), answers.get("answer_start", []))
            ],
        }
        records.append(_record(question, row.get("context"), label, f"{split}[{index}]"))
    return records


def _load_file(path: Path, label: str) -> list[Record]:
    if not path.is_file():
        raise DataError(f"{label}: no such file; pass a SQuAD v1.1 JSON file, `bundled`, or no --data for the hub")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            f"{label}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            "expected an official SQuAD v1.1 file"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{label}: not UTF-8 text; expected an official SQuAD v1.1 JSON file") from None
    return _records_from_squad(document, label)


def _records_from_squad(document: Any, label: str) -> list[Record]:
    """Records from the official layout {"data": [{"paragraphs": [{"context", "qas": [...]}]}]}."""
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise DataError(f'{label}: no "data" list at the top; expected the SQuAD v1.1 layout {{"data": [...]}}')
    records = []
    for article_index, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise _bad_record(label, f"data[{article_index}]", None, 'has no "paragraphs" list')
        for paragraph_index, paragraph in enumerate(paragraphs):
            where = f"data[{article_index}].paragraphs[{paragraph_index}]"
            paragraph = paragraph if isinstance(paragraph, dict) else {}
            context, questions = paragraph.get("context"), paragraph.get("qas")
            if not isinstance(context, str):
                raise _bad_record(label, where, None, 'has no "context" string')
            if not isinstance(questions, list):
                raise _bad_record(label, where, None, 'has no "qas" list')
            for question_index, question in enumerate(questions):
                records.append(_record(question, context, label, f"{where}.qas[{question_index}]"))
    return records


def _record(question: Any, context: Any, label: str, where: str) -> Record:
    """The Record for one question, or a DataError naming it. Only the first answer is used, so
    only the first answer is checked."""
    if not isinstance(question, dict):
        raise _bad_record(label, where, None, "is not an object")
    question_id = question.get("id")
    if not isinstance(question_id, str) or not question_id:
        raise _bad_record(label, where, None, 'has no "id" string')
    if not isinstance(context, str):
        raise _bad_record(label, where, question_id, 'has no "context" string')
    question_text = question.get("question")
    if not isinstance(question_text, str) or not question_text.strip():
        raise _bad_record(label, where, question_id, 'has no "question" text')
    answers = question.get("answers")
    if not isinstance(answers, list) or not answers:
        raise _bad_record(label, where, question_id, 'has no "answers" (expected a non-empty list)')
    answer = answers[0] if isinstance(answers[0], dict) else {}
    answer_text, answer_start = answer.get("text"), answer.get("answer_start")
    if not isinstance(answer_text, str) or not answer_text.strip():
        raise _bad_record(label, where, question_id, 'answers[0] has no "text"')
    if not isinstance(answer_start, int) or isinstance(answer_start, bool):
        problem = f"answers[0].answer_start is {answer_start!r}, expected an integer"
        raise _bad_record(label, where, question_id, problem)
    found = context[answer_start : answer_start + len(answer_text)] if answer_start >= 0 else ""
    if found != answer_text:
        raise _bad_record(
            label,
            where,
            question_id,
            f"answer {answer_text!r} is not at answer_start {answer_start} of the context (found {found!r})",
        )
    # The other reference answers only score evaluation: keep their non-empty texts, unchecked.
    golds = [answer_text] + [
        other["text"]
        for other in answers[1:]
        if isinstance(other, dict) and isinstance(other.get("text"), str) and other["text"].strip()
    ]
    return Record(question_id, context, question_text, answer_text, answer_start, tuple(dict.fromkeys(golds)))


def _bad_record(label: str, where: str, question_id: str | None, problem: str) -> DataError:
    named = f"record {where} (id {question_id})" if question_id else f"record {where}"
    return DataError(f"{label}: {named}: {problem}")


# ---------------------------------------------------------------------------------------------
# Held-out evaluation slice


def split_train_eval(records: list[Record], eval_samples: int, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, eval): eval = the first `eval_samples` of a seeded permutation; train = the rest, in
    their original order (the trainer shuffles them itself)."""
    if not 0 <= eval_samples < len(records):
        raise DataError(
            f"eval_samples: {eval_samples} must be at least 0 and less than the {len(records)} questions "
            "of the data; lower eval_samples"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:eval_samples])
    train = [record for position, record in enumerate(records) if position not in held_out]
    return train, [records[position] for position in order[:eval_samples]]


def load_train_and_eval(source: str | None, eval_samples: int, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, eval) records. From the hub the whole train split trains and `eval_samples` seeded
    picks of the validation split evaluate; from a file, `split_train_eval` holds some out."""
    if source is None:
        _, eval_records = split_train_eval(load_records(None, "validation"), eval_samples, seed)
        return load_records(None, "train"), eval_records
    return split_train_eval(load_records(source), eval_samples, seed)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def load_tokenizer(name: str | None, model: str) -> PreTrainedTokenizerFast:
    """The tokenizer `name` (`bundled`, a hub id or a directory; None = the model's own), with a pad
    token. Hub failures become a one-line ModelError that says what to do."""
    if name == "bundled":
        tokenizer = _bundled_tokenizer()
        described = "the bundled tokenizer"
    elif name is None:
        tokenizer = _pretrained_tokenizer(model, f"model {model}", "--model PATH")
        described = f"the tokenizer of model {model}"
    else:
        tokenizer = _pretrained_tokenizer(name, f"tokenizer {name}", "--set tokenizer=PATH")
        described = f"tokenizer {name}"
    # Context windows are cut with character offsets, which only fast (Rust) tokenizers give.
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{described} is not a fast tokenizer; tamer needs one (a tokenizer.json)")
    if tokenizer.eos_token_id is None:
        raise ModelError(f"{described} has no end-of-sequence token; each answer ends with one, so pick another")
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _bundled_tokenizer() -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    config = json.loads((BUNDLED_TOKENIZER / "tokenizer_config.json").read_text(encoding="utf-8"))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(BUNDLED_TOKENIZER / "tokenizer.json"),
        bos_token=config["bos_token"],
        eos_token=config["eos_token"],
        unk_token=config["unk_token"],
    )


def _pretrained_tokenizer(name: str, described: str, local_hint: str) -> PreTrainedTokenizerFast:
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise ModelError(f"{described}: no such directory; pass a hub id or {local_hint} to a local copy")
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name)
    except (OSError, ValueError) as error:
        raise hub_error(error, described, local_hint) from None


# ---------------------------------------------------------------------------------------------
# Examples: prompt, target and answer-only labels


@dataclass(frozen=True)
class _Template:
    """The fixed pieces of every example, tokenized once."""

    bos: list[int]
    context_label: list[int]
    question_label: list[int]
    answer_label: list[int]
    eos: int


def _template(tokenizer: PreTrainedTokenizerFast) -> _Template:
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return _Template(
        bos=bos,
        context_label=_ids(tokenizer, CONTEXT_LABEL),
        question_label=_ids_after_text(tokenizer, QUESTION_LABEL),
        answer_label=_ids_after_text(tokenizer, ANSWER_LABEL),
        eos=tokenizer.eos_token_id,
    )


def _ids_after_text(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """The ids of `text` as it tokenizes after other text. SentencePiece-style tokenizers mark the
    start of their input with '▁', which would add a stray token before each `\\n...` label."""
    anchor = _ids(tokenizer, "a")
    joined = _ids(tokenizer, "a" + text)
    if joined[: len(anchor)] == anchor:
        return joined[len(anchor) :]
    return _ids(tokenizer, text)


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """`text`'s ids with no special tokens, from the Rust tokenizer that also encodes the records."""
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def build_example(
    record: Record, tokenizer: PreTrainedTokenizerFast, max_seq_len: int, index: int = 0
) -> Example | None:
    """The example for one record, or None if it cannot fit `max_seq_len` with the answer's part
    of the context kept (see `build_examples` for many records at once)."""
    template = _template(tokenizer)
    context, question, answer = tokenizer.backend_tokenizer.encode_batch(
        [" " + record.context, " " + record.question, " " + record.answer], add_special_tokens=False
    )
    return _assemble(record, template, context.ids, context, question.ids, answer.ids, max_seq_len, index)


def build_examples(
    records: list[Record], tokenizer: PreTrainedTokenizerFast, max_seq_len: int
) -> tuple[list[Example], dict[str, int]]:
    """(examples, stats) for `records`, in order, skipping those that cannot fit; stats counts
    `examples`, `truncated` (context cut) and `skipped_too_long`."""
    template = _template(tokenizer)
    backend = tokenizer.backend_tokenizer
    # A paragraph has about five questions: tokenize each context once, all in one Rust batch, and
    # turn its ids into a Python list once too (offsets only when a context must be cut).
    unique_contexts = list(dict.fromkeys(record.context for record in records))
    encodings = backend.encode_batch([" " + context for context in unique_contexts], add_special_tokens=False)
    context_encodings = dict(zip(unique_contexts, encodings))
    context_ids = {context: encoding.ids for context, encoding in context_encodings.items()}
    questions = backend.encode_batch([" " + record.question for record in records], add_special_tokens=False)
    answers = backend.encode_batch([" " + record.answer for record in records], add_special_tokens=False)
    examples: list[Example] = []
    skipped = 0
    for record, question, answer in zip(records, questions, answers):
        example = _assemble(
            record,
            template,
            context_ids[record.context],
            context_encodings[record.context],
            question.ids,
            answer.ids,
            max_seq_len,
            len(examples),
        )
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    stats = {
        "examples": len(examples),
        "truncated": sum(example.truncated for example in examples),
        "skipped_too_long": skipped,
    }
    return examples, stats


def _assemble(
    record: Record,
    template: _Template,
    context_ids: list[int],
    context_encoding: Encoding,  # the context's encoding, for its offsets; its ids come converted
    question_ids: list[int],
    answer_ids: list[int],
    max_seq_len: int,
    index: int,
) -> Example | None:
    """BOS + `Context: {context}\\nQuestion: {question}\\nAnswer:` + ` {answer}` + EOS, the context
    cut to a window around the answer when the whole does not fit."""
    fixed_length = (
        len(template.bos)
        + len(template.context_label)
        + len(template.question_label)
        + len(question_ids)
        + len(template.answer_label)
        + len(answer_ids)
        + 1
    )
    context_budget = max_seq_len - fixed_length
    truncated = len(context_ids) > context_budget
    if truncated:
        # The context was tokenized with a leading space, so its characters sit one further on.
        answer_begin = record.answer_start + 1
        answer_end = answer_begin + len(record.answer)
        answer_tokens = [
            position
            for position, (begin, end) in enumerate(context_encoding.offsets)
            if begin < answer_end and end > answer_begin
        ]
        if not answer_tokens:
            return None  # a normalizer dropped the answer's characters: no window can show it
        first, last = answer_tokens[0], answer_tokens[-1] + 1
        if last - first > context_budget:
            return None
        start = first - (context_budget - (last - first)) // 2
        start = max(0, min(start, len(context_ids) - context_budget))
        context_ids = context_ids[start : start + context_budget]
    prompt_ids = (
        template.bos
        + template.context_label
        + context_ids
        + template.question_label
        + question_ids
        + template.answer_label
    )
    target_ids = answer_ids + [template.eos]
    return Example(
        index=index,
        id=record.id,
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
        truncated=truncated,
    )


# ---------------------------------------------------------------------------------------------
# Batches (padded into tensors in the child: tamer/engine/collate.py)


def answer_token_count(example: Example) -> int:
    """How many tokens the loss scores for `example` (labels[1:] that are not IGNORE_INDEX)."""
    return scored_tokens(example)
