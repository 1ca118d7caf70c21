"""bench/squad_chat.py turns SQuAD into two halves of chat and instruct rows that the chat and instruct recipes
train on, with every gold answer kept for EM/F1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tamer.config import build_config
from tamer.recipes.prepare import prepare
from tamer.recipes.squad import BUNDLED_DATA, load_records

BENCH = Path(__file__).resolve().parents[2] / "bench" / "squad_chat.py"


def _bench_module():
    """bench/squad_chat.py, imported from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("squad_chat", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_halves_split_the_questions_by_article_and_train(tmp_path):
    """Train and test hold whole articles and every question once; a chat row asks the context and question, is
    answered with the first answer and lists all answers; the chat recipe scores that answer and its end of turn."""
    subprocess.run(
        [sys.executable, str(BENCH), "--data", str(BUNDLED_DATA), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    records = {record.id: record for record in load_records(str(BUNDLED_DATA))}
    halves = [load_records(str(tmp_path / f"{name}.json")) for name in ("train", "test")]
    assert sorted(r.id for half in halves for r in half) == sorted(records) and halves[0] and halves[1]
    assert not {r.context for r in halves[0]} & {r.context for r in halves[1]}
    chat_rows = [json.loads(line) for line in (tmp_path / "test.chat.jsonl").read_text().splitlines()]
    assert [row["id"] for row in chat_rows] == [r.id for r in halves[1]]
    first = records[chat_rows[0]["id"]]
    assert chat_rows[0]["messages"] == [
        {"role": "user", "content": f"Context: {first.context}\nQuestion: {first.question.strip()}"},
        {"role": "assistant", "content": first.answer},
    ]
    assert chat_rows[0]["answers"] == list(first.gold_answers)
    config = build_config(
        "tiny",
        options={
            "recipe": "chat",
            "data": str(tmp_path / "train.chat.jsonl"),
            "eval_data": str(tmp_path / "test.chat.jsonl"),
        },
    )
    prepared = prepare(config)
    example = prepared.train[0]
    scored = prepared.tokenizer.backend.decode([label for label in example.labels if label != -100])
    answer = records[example.id].answer
    assert scored == f"{answer}<|im_end|>" and prepared.eval_records[0].answers == tuple(chat_rows[0]["answers"])
    module = _bench_module()
    chat_rows, _ = module.rows(json.loads(BUNDLED_DATA.read_text())["data"][:1], "Be brief.")
    assert chat_rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_span_rows_spell_the_answer_as_the_context_does():
    """`--span`: the assistant turn keeps the space the context has before the answer (so a byte-level BPE gives it
    the context's tokens), none at the context's start or after a non-space; `answers` (what EM/F1 score against)
    and the instruct completion stay the bare answers."""
    module = _bench_module()
    context = "Paris is in France (Europe)."
    assert module.span_text(context, {"text": "France", "answer_start": 12}) == " France"
    assert module.span_text(context, {"text": "Paris", "answer_start": 0}) == "Paris"
    assert module.span_text(context, {"text": "Europe", "answer_start": 20}) == "Europe"
    assert module.span_text(context, {"text": "France"}) == "France"  # no offset: the bare answer
    articles = [
        {
            "paragraphs": [
                {
                    "context": context,
                    "qas": [
                        {
                            "id": "q",
                            "question": "Where? ",
                            "answers": [
                                {"text": "France", "answer_start": 12},
                                {"text": "in France", "answer_start": 9},
                            ],
                        }
                    ],
                }
            ]
        }
    ]
    (spanned,), (instruct,) = module.rows(articles, None, span=True)
    assert spanned["messages"][-1] == {"role": "assistant", "content": " France"}
    assert spanned["answers"] == ["France", "in France"] and instruct["completion"] == "France"
    (plain,), _ = module.rows(articles, None)
    assert plain["messages"][-1]["content"] == "France"


def test_copied_tokens_counts_answers_whose_tokens_occur_in_the_context():
    """A byte-level BPE keeps the space in a word's token: ` France` inside the context is not `France` after the
    template's newline. Bare replies are counted without their space, spelled ones as they are."""
    import re

    module = _bench_module()

    def tokenizer(text, add_special_tokens=False):  # GPT-2's split: a word owns the space before it
        return {"input_ids": re.findall(r" ?\w+| ?[^\w\s]", text)}

    def row(context, reply):
        return {
            "messages": [{"role": "user", "content": f"Context: {context}"}, {"role": "assistant", "content": reply}]
        }

    rows = [row("Paris is in France.", " France"), row("Paris is in France.", "Paris"), row("A b c.", " d")]
    assert module.copied_tokens(rows, tokenizer) == (0, 1)  # the context holds " France" and " Paris", not "Paris"
