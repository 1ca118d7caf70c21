"""SQuAD v1.1 as chat and instruct rows, in two halves, to compare `tamer run chat` with `tamer run squad` on the
same questions.

    python bench/squad_chat.py --data squad_v1.1_dev_subset.json --out /tmp/sc [--system "Answer with a span of the context."]
    python bench/squad_chat.py --halves OUT/train.json OUT/eval.json --out /tmp/sc   # halves split already (bench/quality.py)

Writes, for the first half of the questions (whole articles, in file order, until half the questions) and for the rest:

    /tmp/sc/train.json, test.json                     the official SQuAD v1.1 layout (tamer run squad --data, tamer eval --data)
    /tmp/sc/train.chat.jsonl, test.chat.jsonl         {"id", "messages": [system?, user, assistant], "answers": [...]}
    /tmp/sc/train.instruct.jsonl, test.instruct.jsonl {"id", "prompt", "completion", "answers": [...]}

The user turn (and the instruct prompt) is `Context: {context}\\nQuestion: {question}`, the assistant turn (the
completion) the first answer, and `answers` every answer the data lists, which `tamer eval --em-f1` scores against
as SQuAD's scorer does (the best over the answers). Without --system a template that adds a default system prompt
when there is none (SmolLM2's) adds it: longer sequences than SQuAD's prompt. For example (SmolLM2-135M-Instruct):

    tamer run squad --model M --data /tmp/sc/train.json --set eval_samples=0 --set eval.squad_samples=0
    tamer eval SQUAD_RUN --data /tmp/sc/test.json --limit 1000
    tamer run chat --model M --data /tmp/sc/train.chat.jsonl --eval-data /tmp/sc/test.chat.jsonl \\
        --set eval.em_f1=true --set eval.squad_samples=1000

(`tamer compare SQUAD_RUN CHAT_RUN` then shows both runs' EM/F1, steps, tokens and wall time.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def halves(document: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The articles up to half of the questions, and the rest."""
    total = sum(len(paragraph["qas"]) for article in document["data"] for paragraph in article["paragraphs"])
    first, taken = [], 0
    for article in document["data"]:
        if taken >= total / 2:
            break
        first.append(article)
        taken += sum(len(paragraph["qas"]) for paragraph in article["paragraphs"])
    return first, document["data"][len(first) :]


def span_text(context: str, answer: dict[str, Any]) -> str:
    """The answer as the context spells it: with the space before it where the context has one (SQuAD's
    answer_start), so that a byte-level BPE tokenizer gives the answer the tokens it has inside the context."""
    start = answer.get("answer_start")
    spaced = isinstance(start, int) and start > 0 and context[start - 1] == " "
    return (" " if spaced else "") + answer["text"]


def rows(
    articles: list[dict[str, Any]], system: str | None, span: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(chat rows, instruct rows) of every question of `articles`. `span`: the assistant turn is the first answer as
    the context spells it (`span_text`: the space before it kept), not the bare answer."""
    chat, instruct = [], []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = list(dict.fromkeys(answer["text"] for answer in qa["answers"] if answer["text"].strip()))
                prompt = f"Context: {paragraph['context']}\nQuestion: {qa['question'].strip()}"
                first = next(answer for answer in qa["answers"] if answer["text"].strip())
                reply = span_text(paragraph["context"], first) if span else answers[0]
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": reply},
                ]
                chat.append({"id": qa["id"], "messages": messages, "answers": answers})
                instruct.append({"id": qa["id"], "prompt": prompt, "completion": answers[0], "answers": answers})
    return chat, instruct


def copied_tokens(chat: list[dict[str, Any]], tokenizer: Any) -> tuple[int, int]:
    """Of `chat` rows (`rows(..., span=True)`), how many assistant turns tokenize to a run of tokens that occurs in the
    user turn (the context): (bare answers, answers spelled as the context spells them). A span a model copies
    whole from the context is the second kind; the chat template puts the first kind after `assistant\\n`."""
    bare = spelled = 0

    def inside(needle: list[int], haystack: list[int]) -> bool:
        return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))

    for row in chat:
        context = tokenizer(row["messages"][-2]["content"], add_special_tokens=False)["input_ids"]
        reply = row["messages"][-1]["content"]
        bare += inside(tokenizer(reply.lstrip(), add_special_tokens=False)["input_ids"], context)
        spelled += inside(tokenizer(reply, add_special_tokens=False)["input_ids"], context)
    return bare, spelled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="An official SQuAD v1.1 JSON file, halved here.")
    parser.add_argument(
        "--halves",
        type=Path,
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="Two SQuAD v1.1 files split already (bench/quality.py's train.json and eval.json), converted as they are.",
    )
    parser.add_argument("--out", type=Path, required=True, help="Folder to write the halves to (created).")
    parser.add_argument("--system", help="A system message to open every conversation with (default: none).")
    parser.add_argument(
        "--span", action="store_true", help="Assistant turns spelled as the context spells the answer (`span_text`)."
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="A model folder: also count the training answers whose tokens occur in their context (`copied_tokens`).",
    )
    args = parser.parse_args()
    if (args.data is None) == (args.halves is None):
        parser.error("pass --data FILE or --halves TRAIN TEST")
    if args.halves:
        documents = [json.loads(path.read_text(encoding="utf-8")) for path in args.halves]
        document, parts = documents[0], [documents[0]["data"], documents[1]["data"]]
    else:
        document = json.loads(args.data.read_text(encoding="utf-8"))
        parts = list(halves(document))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, articles in zip(("train", "test"), parts):
        (args.out / f"{name}.json").write_text(
            json.dumps({"data": articles, "version": document.get("version", "1.1")})
        )
        chat, instruct = rows(articles, args.system, span=args.span)
        for kind, found in (("chat", chat), ("instruct", instruct)):
            (args.out / f"{name}.{kind}.jsonl").write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in found), encoding="utf-8"
            )
        print(
            f"{name}: {len(articles)} articles, {len(chat)} questions -> {args.out}/{name}.json, .chat.jsonl, .instruct.jsonl"
        )
        if args.tokenizer and name == "train":
            from transformers import AutoTokenizer

            spanned, _ = rows(articles, args.system, span=True)
            bare, spelled = copied_tokens(spanned, AutoTokenizer.from_pretrained(args.tokenizer))
            print(
                f"answers whose tokens occur in the context: {bare} of {len(spanned)} bare, {spelled} spelled as the context"
            )


if __name__ == "__main__":
    main()
