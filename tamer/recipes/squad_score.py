"""SQuAD v1.1 scoring: exact match and token F1 of predicted answers against gold answers.

Pure Python, no torch, so the CLI and the tests use it directly:

    score(["Denver Broncos"], [["Denver Broncos", "The Broncos"]])  # {"exact_match": 1.0, "f1": 1.0, "questions": 1}

Written from the definition of the official v1.1 script: both sides are normalised (lower case,
punctuation removed, the articles a/an/the removed, whitespace collapsed); exact match is 1 when the
normalised strings are equal; F1 is the harmonic mean of precision and recall over the bag of
normalised tokens. Each question takes the best value over its gold answers; scores are averaged over
questions (in [0, 1]; the official script prints them times 100).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = frozenset(string.punctuation)


def _is_punctuation(character: str) -> bool:
    """ASCII punctuation, as the official script removes, plus Unicode punctuation (« », “ ”, —)."""
    return character in PUNCTUATION or unicodedata.category(character).startswith("P")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(character for character in text if not _is_punctuation(character))
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 over normalised tokens; two empty answers agree (1.0), one empty answer scores 0."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over_golds(metric, prediction: str, golds: list[str]) -> float:
    """The best value of `metric` over the gold answers of one question."""
    if not golds:
        raise ValueError("a question needs at least one gold answer to be scored")
    return max(metric(prediction, gold) for gold in golds)


def per_question(predictions: list[str], golds: list[list[str]]) -> list[tuple[float, float]]:
    """(exact match, F1) of each question, each the best over its gold answers `golds[i]`."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    return [(best_over_golds(exact_match, p, g), best_over_golds(token_f1, p, g)) for p, g in zip(predictions, golds)]


def score(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 over questions; `golds[i]` are the accepted answers of question i."""
    scores = per_question(predictions, golds)
    if not scores:
        return {"exact_match": 0.0, "f1": 0.0, "questions": 0}
    exact = sum(em for em, _ in scores)
    f1 = sum(f1 for _, f1 in scores)
    return {"exact_match": exact / len(scores), "f1": f1 / len(scores), "questions": len(scores)}


def prediction_rows(ids: list[str], predictions: list[str], golds: list[list[str]]) -> list[dict[str, object]]:
    """One row per question for `tamer eval --predictions FILE`: its id, the reply, the gold answers, and the
    question's exact match (0 or 1) and F1."""
    return [
        {"id": id_, "answer": answer, "gold": gold, "exact_match": em, "f1": round(f1, 6)}
        for id_, answer, gold, (em, f1) in zip(ids, predictions, golds, per_question(predictions, golds))
    ]
