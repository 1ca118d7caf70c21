"""The instruct recipe (tamer/recipes/instruct.py): Alpaca rows with and without an input, prompt/completion and
mapped columns, the prompt template, completion-only labels, and the rows it skips or refuses."""

from __future__ import annotations

import pytest

from tamer.errors import DataError
from tamer.recipes import instruct, tokens
from tamer.recipes.examples import IGNORE_INDEX
from tamer.recipes.sources import Rows

TOKENIZER = tokens.load("bundled", "tiny")


def pairs(*records: dict, columns: dict | None = None) -> list:
    names = list(dict.fromkeys(name for record in records for name in record))
    return instruct.pairs_of(
        Rows([{name: record.get(name) for name in names} for record in records], names, "data a.jsonl"), columns
    )


def build(found: list, template: str | None = None, max_seq_len: int = 512, overlong: str = "truncate"):
    return instruct.build_examples(
        [p for p in found if not isinstance(p, str)], TOKENIZER, template, max_seq_len, overlong, "data a.jsonl"
    )


def test_an_alpaca_row_with_an_input_gets_the_input_section():
    """instruction + input: `### Instruction:\\n...\\n\\n### Input:\\n...\\n\\n### Response:\\n`, then the output."""
    (pair,) = pairs({"instruction": "Name the capital.", "input": "France", "output": "Paris"})
    assert (
        instruct.render_prompt(pair, None)
        == "### Instruction:\nName the capital.\n\n### Input:\nFrance\n\n### Response:\n"
    )


def test_an_alpaca_row_without_an_input_has_no_input_section():
    """An empty or missing input leaves the input section out entirely."""
    for row in ({"instruction": "Say hi.", "input": "", "output": "hi"}, {"instruction": "Say hi.", "output": "hi"}):
        (pair,) = pairs(row)
        assert instruct.render_prompt(pair, None) == "### Instruction:\nSay hi.\n\n### Response:\n"


def test_only_the_completion_and_eos_are_scored():
    """BOS + prompt are unscored; the completion's ids (as they follow the prompt) and EOS are scored, and the
    prompt part is exactly what evaluation asks the model."""
    (pair,) = pairs({"instruction": "Name the capital.", "input": "France", "output": "Paris"})
    (example,), counts = build([pair])
    asked = instruct.prompt_ids(pair, TOKENIZER, None)
    assert example.input_ids[: len(asked)] == asked and asked[0] == TOKENIZER.bos_id
    assert all(label == IGNORE_INDEX for label in example.labels[: len(asked)])
    answer = example.labels[len(asked) :]
    assert answer == example.input_ids[len(asked) :] and answer[-1] == TOKENIZER.eos_id
    assert TOKENIZER.backend.decode(answer[:-1]) == "Paris" and counts["truncated"] == 0


def test_prompt_completion_rows_and_mapped_columns_give_the_same_examples():
    """{prompt, completion} and any columns mapped with `columns:` train identically."""
    direct = build(pairs({"prompt": "2+2?", "completion": "4"}))[0]
    mapped = build(pairs({"question": "2+2?", "answer": "4"}, columns={"prompt": "question", "completion": "answer"}))[
        0
    ]
    assert [(e.input_ids, e.labels) for e in direct] == [(e.input_ids, e.labels) for e in mapped]


def test_a_template_of_your_own_places_prompt_and_input():
    """`{prompt}` and `{input}` are filled once each (text in them is not re-read); without `{input}` the input follows the prompt."""
    (pair,) = pairs({"instruction": "Echo {input}", "input": "x", "output": "y"})
    assert instruct.render_prompt(pair, "Q: {prompt} [{input}]\nA: ") == "Q: Echo {input} [x]\nA: "
    assert instruct.render_prompt(pair, "Q: {prompt}\nA: ") == "Q: Echo {input}\n\nx\nA: "


def test_empty_rows_are_skipped_and_counted():
    """A row with an empty prompt or completion is skipped ('empty'), the others kept."""
    found = pairs(
        {"prompt": "a", "completion": "b"}, {"prompt": " ", "completion": "b"}, {"prompt": "a", "completion": ""}
    )
    assert found[1:] == ["empty", "empty"] and not isinstance(found[0], str)


def test_overlong_rows_follow_the_overlong_setting():
    """Over max_seq_len: truncate keeps the first tokens (nothing scored left: skipped), skip drops, error refuses."""
    row = {"prompt": "word " * 20, "completion": "answer"}
    examples, counts = build(pairs(row), max_seq_len=8)
    assert examples == [] and counts["skipped_too_long"] == 1  # the prompt alone fills 8 tokens
    examples, counts = build(pairs({"prompt": "a", "completion": "word " * 20}), max_seq_len=16)
    assert len(examples[0].input_ids) == 16 and examples[0].truncated and counts["truncated"] == 1
    with pytest.raises(DataError, match=r"row 0 has \d+ tokens, more than max_seq_len 8 \(overlong: error\)"):
        build(pairs(row), max_seq_len=8, overlong="error")


def test_a_missing_column_lists_the_columns_and_the_near_miss():
    """No prompt/completion or Alpaca columns: the columns and the near miss; a mapped column that is absent: did you mean."""
    with pytest.raises(
        DataError,
        match=r"no prompt/completion or instruction/output columns \(columns: promt, completion\); "
        r"column 'promt' looks like 'prompt'; name yours with columns",
    ):
        pairs({"promt": "a", "completion": "b"})
    with pytest.raises(
        DataError, match=r"no column 'questoin' \(columns: question, answer\); did you mean 'question'\?"
    ):
        pairs({"question": "a", "answer": "b"}, columns={"prompt": "questoin", "completion": "answer"})
    with pytest.raises(
        DataError,
        match=r"columns: unknown key 'promt' for this recipe; its keys: prompt, completion, input, answers; "
        r"did you mean 'prompt'\?",
    ):
        pairs({"question": "a", "answer": "b"}, columns={"promt": "question", "completion": "answer"})


def test_a_file_mixing_formats_is_refused():
    """Alpaca rows and prompt/completion rows in one source: an error naming the first row of each."""
    with pytest.raises(
        DataError, match=r"row 0 is a prompt/completion row and row 1 an instruction/output row: a file mixing formats"
    ):
        pairs({"prompt": "a", "completion": "b"}, {"instruction": "c", "output": "d"})


def test_a_completion_that_is_not_text_is_refused():
    """A list where text belongs is an error naming the row and the column; numbers are taken as text."""
    with pytest.raises(DataError, match=r"row 0: 'completion' is list, expected text"):
        pairs({"prompt": "a", "completion": ["b"]})
    (pair,) = pairs({"prompt": "2+2?", "completion": 4})
    assert pair.completion == "4"
