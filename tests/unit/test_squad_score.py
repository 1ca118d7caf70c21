"""SQuAD v1.1 exact match and F1, on hand-worked cases (tamer/recipes/squad_score.py)."""

import pytest

from tamer.recipes.squad_score import exact_match, normalize_answer, score, token_f1

NORMALISED = [
    ("The Broncos", "broncos"),
    ("a cat and an owl", "cat and owl"),
    ("Theater", "theater"),  # an article only as a whole word
    ("  New   York\tCity ", "new york city"),
    ("U.S.A.", "usa"),
    ("rock-'n'-roll!", "rocknroll"),
    ("«Évian» — “l’eau”", "évian leau"),
    ("3.14", "314"),
    ("1,000 people", "1000 people"),
    ("", ""),
    ("The the THE", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISED)
def test_normalize_answer(text, expected):
    """Lower case, punctuation (ASCII and Unicode) and articles removed, whitespace collapsed."""
    assert normalize_answer(text) == expected


CASES = [
    # prediction, gold answers, exact match, F1 (worked by hand)
    ("Denver Broncos", ["Denver Broncos"], 1.0, 1.0),
    ("the Denver Broncos.", ["Denver Broncos"], 1.0, 1.0),
    ("Broncos", ["Denver Broncos"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # precision 1, recall 1/2 -> 2/3
    ("Denver Broncos team", ["Denver Broncos"], 0.0, 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)),  # 0.8
    ("Carolina Panthers", ["Denver Broncos"], 0.0, 0.0),
    ("", ["Denver Broncos"], 0.0, 0.0),  # empty prediction
    ("the", ["a"], 1.0, 1.0),  # both normalise to empty
    ("Broncos", ["Denver Broncos", "Broncos", "The Broncos"], 1.0, 1.0),  # best of several golds
    ("Denver", ["Denver Broncos", "Carolina"], 0.0, 2 / 3),
    ("1,000", ["1000"], 1.0, 1.0),
    ("1000 years", ["one thousand years"], 0.0, 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)),  # 0.4
    ("São Paulo", ["sao paulo"], 0.0, 0.5),  # accents are kept: only "paulo" is common
    ("São Paulo!", ["são paulo"], 1.0, 1.0),
    ("the the cat", ["cat cat"], 0.0, 2 * 1.0 * 0.5 / 1.5),  # counts clip: 1 common of 2 gold
    ("cat cat", ["cat"], 0.0, 2 * 0.5 * 1.0 / 1.5),
    ("Paris, France", ["France Paris"], 0.0, 1.0),  # F1 ignores order
]


@pytest.mark.parametrize(("prediction", "golds", "exact", "f1"), CASES)
def test_exact_match_and_f1_cases(prediction, golds, exact, f1):
    """Each hand-worked case scores the expected EM and F1 (maximum over its gold answers)."""
    result = score([prediction], [golds])
    assert result["exact_match"] == pytest.approx(exact)
    assert result["f1"] == pytest.approx(f1)


def test_scores_are_averaged_over_questions():
    """Three questions (EM 1, 0, 0; F1 1, 2/3, 0) average to EM 1/3 and F1 5/9."""
    result = score(["Paris", "Denver", ""], [["Paris"], ["Denver Broncos"], ["x"]])
    assert result == {"exact_match": pytest.approx(1 / 3), "f1": pytest.approx((1 + 2 / 3) / 3), "questions": 3}


def test_single_pair_functions_agree_with_score():
    """exact_match and token_f1 on one pair are what score reports for one question."""
    assert exact_match("An Apple", "apple") == 1.0
    assert token_f1("red apple", "apple") == pytest.approx(2 / 3)


def test_mismatched_lengths_and_missing_golds_are_refused():
    """A prediction count that differs from the question count, or a question without golds, is an error."""
    with pytest.raises(ValueError):
        score(["a"], [])
    with pytest.raises(ValueError):
        score(["a"], [[]])


def test_no_questions_scores_zero():
    """An empty evaluation set scores 0 over 0 questions rather than dividing by zero."""
    assert score([], []) == {"exact_match": 0.0, "f1": 0.0, "questions": 0}
