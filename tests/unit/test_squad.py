"""The SQuAD recipe: loading and checking data, prompts with answer-only labels, truncation, splits and batches."""

from __future__ import annotations

import copy
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from tamer.engine.collate import pad_batch
from tamer.errors import DataError, ModelError
from tamer.recipes import squad
from tamer.recipes.squad import IGNORE_INDEX, Example, Record

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
OFFICIAL_SUBSET = SHARED_DATA / "squad_v1.1_dev_subset.json"
needs_official_subset = pytest.mark.skipif(
    not OFFICIAL_SUBSET.is_file(), reason=f"the SQuAD dev subset is not at {OFFICIAL_SUBSET} (shared/data is absent)"
)

VALID_DOCUMENT = {
    "version": "1.1",
    "data": [
        {
            "title": "Southern_California",
            "paragraphs": [
                {
                    "context": "Southern California, often abbreviated SoCal, is a region.",
                    "qas": [
                        {
                            "id": "5705e26d75f01819005e76d4",
                            "question": "What is Southern California often abbreviated as?",
                            "answers": [{"answer_start": 39, "text": "SoCal"}],
                        }
                    ],
                }
            ],
        }
    ],
}


@pytest.fixture(scope="module")
def tokenizer():
    return squad.load_tokenizer("bundled", model="tiny-llama")


@pytest.fixture(scope="module")
def bundled_records():
    return squad.load_records("bundled")


def write_json(directory: Path, document) -> Path:
    path = directory / "data.json"
    path.write_text(json.dumps(document))
    return path


def long_record(answer_position: str) -> Record:
    """A record whose context is hundreds of filler tokens with the answer at its start, middle or end."""
    filler = " ".join(f"word{number}" for number in range(150))
    before = {"start": "", "middle": filler + " ", "end": filler + " " + filler + " "}[answer_position]
    after = {"start": " " + filler + " " + filler, "middle": " " + filler, "end": ""}[answer_position]
    context = f"{before}Zanzibar is the answer.{after}"
    return Record("long", context, "Which island is the answer?", "Zanzibar", len(before))


def target_ids(example: Example) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


# Loading


@needs_official_subset
def test_official_file_loads_every_question():
    """The official-format dev subset gives one record per question, each answer found at answer_start."""
    records = squad.load_records(str(OFFICIAL_SUBSET))
    assert len(records) == 5609
    assert len({record.id for record in records}) == 5609
    first = records[0]
    assert (first.id, first.answer, first.answer_start) == ("5705e26d75f01819005e76d4", "SoCal", 39)
    assert all(r.context[r.answer_start : r.answer_start + len(r.answer)] == r.answer for r in records)


@needs_official_subset
def test_bundled_slice_is_the_first_whole_articles_of_the_subset(bundled_records):
    """The bundled slice holds 1,313 questions, the first ones of the subset, in a file under 700 KB."""
    official = squad.load_records(str(OFFICIAL_SUBSET))
    assert len(bundled_records) == 1313
    assert bundled_records == official[:1313]
    assert squad.BUNDLED_DATA.stat().st_size < 700_000


def test_missing_file_is_a_data_error(tmp_path):
    """A --data path that does not exist is a DataError naming it."""
    missing = tmp_path / "nowhere.json"
    with pytest.raises(DataError, match=rf"^--data {missing}: no such file"):
        squad.load_records(str(missing))


def test_invalid_json_is_a_data_error(tmp_path):
    """A file that is not JSON is a one-line DataError with the line and column."""
    path = tmp_path / "broken.json"
    path.write_text('{"data": [}')
    with pytest.raises(DataError, match=r"not valid JSON \(line 1, column 11") as caught:
        squad.load_records(str(path))
    assert "\n" not in str(caught.value)


def set_answer_start(document, value):
    document["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = value


def drop_paragraph_key(key):
    return lambda document: document["data"][0]["paragraphs"][0].pop(key)


def drop_question_key(key):
    return lambda document: document["data"][0]["paragraphs"][0]["qas"][0].pop(key)


QUESTION = "data[0].paragraphs[0].qas[0]"
QUESTION_WITH_ID = f"{QUESTION} (id 5705e26d75f01819005e76d4)"


@pytest.mark.parametrize(
    ("break_document", "expected"),
    [
        (lambda document: document.pop("data"), 'no "data" list'),
        (lambda document: document["data"][0].pop("paragraphs"), 'record data[0]: has no "paragraphs" list'),
        (drop_paragraph_key("context"), 'record data[0].paragraphs[0]: has no "context" string'),
        (drop_paragraph_key("qas"), 'record data[0].paragraphs[0]: has no "qas" list'),
        (drop_question_key("id"), f'record {QUESTION}: has no "id" string'),
        (drop_question_key("question"), f'record {QUESTION_WITH_ID}: has no "question" text'),
        (drop_question_key("answers"), f'record {QUESTION_WITH_ID}: has no "answers"'),
        (
            lambda document: document["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]),
            f'record {QUESTION_WITH_ID}: has no "answers"',
        ),
        (
            lambda document: set_answer_start(document, "39"),
            f"record {QUESTION_WITH_ID}: answers[0].answer_start is '39', expected an integer",
        ),
        (
            lambda document: set_answer_start(document, 40),
            f"record {QUESTION_WITH_ID}: answer 'SoCal' is not at answer_start 40 of the context (found 'oCal,')",
        ),
    ],
    ids=[
        "no-data",
        "no-paragraphs",
        "no-context",
        "no-qas",
        "no-id",
        "no-question",
        "no-answers",
        "empty-answers",
        "answer-start-not-int",
        "answer-not-at-start",
    ],
)
def test_malformed_record_is_a_one_line_data_error_naming_it(tmp_path, break_document, expected):
    """Each kind of malformed SQuAD file fails with one line naming the file and the first bad record."""
    document = copy.deepcopy(VALID_DOCUMENT)
    break_document(document)
    path = write_json(tmp_path, document)
    with pytest.raises(DataError) as caught:
        squad.load_records(str(path))
    message = str(caught.value)
    assert message.startswith(f"--data {path}: ")
    assert expected in message
    assert "\n" not in message


def test_first_bad_record_is_the_one_named(tmp_path):
    """With several bad records, the error names the first one in file order."""
    document = copy.deepcopy(VALID_DOCUMENT)
    paragraph = document["data"][0]["paragraphs"][0]
    good = paragraph["qas"][0]
    paragraph["qas"] = [good, dict(good, id="second", answers=[]), dict(good, id="third", answers=[])]
    with pytest.raises(DataError, match=r"qas\[1\] \(id second\)"):
        squad.load_records(str(write_json(tmp_path, document)))


def hub_rows(count: int, prefix: str) -> list[dict]:
    context = "Southern California, often abbreviated SoCal, is a region."
    return [
        {
            "id": f"{prefix}{number}",
            "title": "Southern_California",
            "context": context,
            "question": f"Question {number}?",
            "answers": {"text": ["SoCal"], "answer_start": [39]},
        }
        for number in range(count)
    ]


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering from local rows: 10 train rows, 6 validation rows."""
    import datasets

    splits = {"train": hub_rows(10, "train-"), "validation": hub_rows(6, "validation-")}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(splits[split]))
    return splits


def test_hub_rows_become_records(fake_hub):
    """Rows in the hub's column layout become Records with their first answer."""
    records = squad.load_records(None, "train")
    assert [record.id for record in records] == [f"train-{number}" for number in range(10)]
    assert (records[0].answer, records[0].answer_start) == ("SoCal", 39)


def test_hub_train_and_eval_come_from_train_and_validation(fake_hub):
    """From the hub, all of the train split trains and a seeded pick of the validation split evaluates."""
    train, evaluation = squad.load_train_and_eval(None, eval_samples=3, seed=7)
    assert [record.id for record in train] == [f"train-{number}" for number in range(10)]
    assert len(evaluation) == 3
    assert all(record.id.startswith("validation-") for record in evaluation)
    assert squad.load_train_and_eval(None, eval_samples=3, seed=7)[1] == evaluation


def test_unreachable_hub_is_a_data_error_pointing_to_local_data(monkeypatch):
    """A network failure loading rajpurkar/squad says the hub was unreachable and to pass --data PATH."""
    import datasets

    def unreachable(name, split):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"could not reach the hub .*pass --data PATH with a local SQuAD v1.1 JSON"):
        squad.load_records(None)


# Tokenizer


def test_bundled_tokenizer_loads_with_no_network(monkeypatch):
    """The bundled tokenizer loads offline, from inside the package, with EOS standing in as pad."""

    def no_network(*args, **kwargs):
        raise AssertionError("the bundled tokenizer tried to use the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    tokenizer = squad.load_tokenizer("bundled", model="meta-llama/Llama-3.2-1B")
    assert squad.BUNDLED_TOKENIZER.parent == Path(squad.__file__).parent / "data"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert len(tokenizer) == 32000


def test_tokenizer_directory_loads_like_the_bundled_one(tokenizer, monkeypatch):
    """A tokenizer directory path loads with AutoTokenizer and encodes as the bundled tokenizer does."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from_directory = squad.load_tokenizer(str(squad.BUNDLED_TOKENIZER), model="tiny-llama")
    text = "Context: Southern California\nQuestion: Who?"
    assert from_directory.encode(text) == tokenizer.encode(text)


class FakeGated(GatedRepoError):
    def __init__(self):
        Exception.__init__(self, "401 Client Error: access to model meta-llama/Llama-3.2-1B is restricted")


class FakeNotFound(RepositoryNotFoundError):
    def __init__(self):
        Exception.__init__(self, "404 Client Error: repository not found")


class FakeUnauthorized(HfHubHTTPError):
    def __init__(self):
        Exception.__init__(self, "401 Client Error: unauthorized")
        self.response = SimpleNamespace(status_code=401)


def raising_from(cause: Exception):
    """An AutoTokenizer.from_pretrained stand-in that fails the way transformers wraps hub errors."""

    def from_pretrained(name, **kwargs):
        raise OSError(f"could not load {name}") from cause

    return from_pretrained


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (
            FakeGated(),
            "model meta-llama/Llama-3.2-1B is gated: accept its licence on the hub and log in (set HF_TOKEN or run "
            "`hf auth login`), or pass --model PATH to a local copy",
        ),
        (
            FakeUnauthorized(),
            "model meta-llama/Llama-3.2-1B is gated: accept its licence on the hub and log in (set HF_TOKEN or run "
            "`hf auth login`), or pass --model PATH to a local copy",
        ),
        (FakeNotFound(), "model meta-llama/Llama-3.2-1B was not found on the hub"),
        (LocalEntryNotFoundError("offline"), "model meta-llama/Llama-3.2-1B: could not reach the hub"),
    ],
    ids=["gated", "unauthorized", "not-found", "unreachable"],
)
def test_hub_tokenizer_failures_are_model_errors(monkeypatch, cause, expected):
    """Gated, unauthorised, missing and unreachable hub models become ModelErrors that say what to do."""
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", raising_from(cause))
    with pytest.raises(ModelError) as caught:
        squad.load_tokenizer(None, model="meta-llama/Llama-3.2-1B")
    assert str(caught.value).startswith(expected)
    assert "--model PATH" in str(caught.value)


def test_missing_tokenizer_directory_is_a_model_error(tmp_path):
    """A tokenizer path that does not exist is a ModelError naming it, without asking the hub."""
    missing = tmp_path / "no-tokenizer"
    with pytest.raises(ModelError, match=rf"^tokenizer {missing}: no such directory"):
        squad.load_tokenizer(str(missing), model="tiny-llama")


# Examples


def test_labels_cover_exactly_the_answer_and_eos(tokenizer, bundled_records):
    """Labels are IGNORE_INDEX over BOS and prompt, then the answer's tokens and EOS, which decode to the answer."""
    examples, stats = squad.build_examples(bundled_records[:50], tokenizer, max_seq_len=4096)
    assert stats == {"examples": 50, "truncated": 0, "skipped_too_long": 0}
    for record, example in zip(bundled_records, examples):
        answer_ids = tokenizer.encode(" " + record.answer, add_special_tokens=False)
        prompt_length = len(example.input_ids) - len(answer_ids) - 1
        assert example.labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
        assert example.labels[prompt_length:] == example.input_ids[prompt_length:] == answer_ids + [2]
        assert tokenizer.decode(target_ids(example)) == f"{record.answer}</s>"
        assert squad.answer_token_count(example) == len(answer_ids) + 1


def test_example_tokens_equal_the_whole_text_tokenized(tokenizer, bundled_records):
    """Pieces tokenized apart join into the same ids as the whole prompt tokenized at once (after BOS)."""
    examples, _ = squad.build_examples(bundled_records, tokenizer, max_seq_len=4096)
    for record, example in zip(bundled_records, examples):
        text = f"Context: {record.context}\nQuestion: {record.question}\nAnswer: {record.answer}"
        assert example.input_ids == [1] + tokenizer.encode(text, add_special_tokens=False) + [2]


def test_build_example_matches_build_examples(tokenizer, bundled_records):
    """One record built alone gives the same example as in a batch."""
    examples, _ = squad.build_examples(bundled_records[:3], tokenizer, max_seq_len=4096)
    assert squad.build_example(bundled_records[2], tokenizer, max_seq_len=4096, index=2) == examples[2]


def split_context(example: Example, record: Record, tokenizer) -> tuple[list[int], list[int]]:
    """(context ids, question-and-answer ids) of an example, split after BOS and "Context:"."""
    full = squad.build_example(record, tokenizer, max_seq_len=100_000)
    context_length = len(tokenizer.encode(" " + record.context, add_special_tokens=False))
    after_context = len(full.input_ids) - 3 - context_length
    return example.input_ids[3:-after_context], example.input_ids[-after_context:]


@pytest.mark.parametrize("answer_position", ["start", "middle", "end"])
def test_truncation_keeps_the_answer_and_the_whole_question(tokenizer, answer_position):
    """A long context is cut to a window that holds the answer; question and answer tokens stay whole."""
    record = long_record(answer_position)
    full = squad.build_example(record, tokenizer, max_seq_len=100_000)
    example = squad.build_example(record, tokenizer, max_seq_len=64)
    assert example is not None and example.truncated and not full.truncated
    assert len(example.input_ids) == 64
    kept_context, question_and_answer = split_context(example, record, tokenizer)
    assert question_and_answer == split_context(full, record, tokenizer)[1]
    assert target_ids(example) == target_ids(full)
    assert tokenizer.decode(question_and_answer) == "\nQuestion: Which island is the answer?\nAnswer: Zanzibar</s>"
    assert "Zanzibar" in tokenizer.decode(kept_context)


def test_truncated_context_is_one_contiguous_window(tokenizer):
    """The kept context tokens are a contiguous run of the full context's tokens."""
    record = long_record("middle")
    context_ids = tokenizer.encode(" " + record.context, add_special_tokens=False)
    kept_context, _ = split_context(squad.build_example(record, tokenizer, max_seq_len=64), record, tokenizer)
    assert 0 < len(kept_context) < len(context_ids)
    window = len(kept_context)
    assert kept_context in [context_ids[start : start + window] for start in range(len(context_ids))]


def test_answer_longer_than_the_context_window_is_skipped(tokenizer):
    """When the context window left over cannot hold the answer's span, the record is skipped, not cut blind."""
    answer = " ".join(f"part{number}" for number in range(12))  # 26 tokens
    filler = " ".join(f"word{number}" for number in range(100))
    record = Record("long-answer", f"{filler} {answer} {filler}", "What?", answer, len(filler) + 1)
    full = squad.build_example(record, tokenizer, max_seq_len=100_000)
    without_context = len(full.input_ids) - len(split_context(full, record, tokenizer)[0])
    assert squad.build_example(record, tokenizer, max_seq_len=without_context + 30).truncated
    assert squad.build_example(record, tokenizer, max_seq_len=without_context + 20) is None


def test_too_long_without_context_is_skipped_and_counted(tokenizer, bundled_records):
    """A record whose question and answer alone exceed max_seq_len is skipped, counted, and indexes stay dense."""
    too_long = Record("too-long", "Short context.", "Why " * 150 + "?", "Short", 0)
    assert squad.build_example(too_long, tokenizer, max_seq_len=64) is None
    records = [bundled_records[0], too_long, bundled_records[1]]
    examples, stats = squad.build_examples(records, tokenizer, max_seq_len=128)
    assert stats["skipped_too_long"] == 1 and stats["examples"] == 2
    assert [(example.index, example.id) for example in examples] == [(0, records[0].id), (1, records[2].id)]


@needs_official_subset
def test_build_examples_is_fast_on_the_dev_subset(tokenizer):
    """5,609 questions tokenize in well under 10 seconds."""
    records = squad.load_records(str(OFFICIAL_SUBSET))
    started = time.perf_counter()
    examples, stats = squad.build_examples(records, tokenizer, max_seq_len=256)
    assert time.perf_counter() - started < 10
    assert stats["examples"] + stats["skipped_too_long"] == 5609 and stats["truncated"] > 0
    assert all(len(example.input_ids) <= 256 for example in examples)


# Splits and batches


def test_split_is_deterministic_disjoint_and_complete(bundled_records):
    """The same seed gives the same split; held-out and train partition the records; train keeps file order."""
    train, evaluation = squad.split_train_eval(bundled_records, eval_samples=64, seed=3)
    again_train, again_evaluation = squad.split_train_eval(bundled_records, eval_samples=64, seed=3)
    assert (train, evaluation) == (again_train, again_evaluation)
    assert len(evaluation) == 64 and len(train) == len(bundled_records) - 64
    assert {r.id for r in train}.isdisjoint({r.id for r in evaluation})
    assert {r.id for r in train} | {r.id for r in evaluation} == {r.id for r in bundled_records}
    positions = {record.id: position for position, record in enumerate(bundled_records)}
    assert [positions[record.id] for record in train] == sorted(positions[record.id] for record in train)
    assert squad.split_train_eval(bundled_records, eval_samples=64, seed=4)[1] != evaluation


def test_eval_samples_must_leave_training_data(bundled_records):
    """Holding out as many questions as there are is a DataError that says how many there are."""
    with pytest.raises(DataError, match=r"less than the 3 questions"):
        squad.split_train_eval(bundled_records[:3], eval_samples=3, seed=0)


def make_example(index: int, input_ids: list[int], labels: list[int]) -> Example:
    return Example(index=index, id=f"q{index}", input_ids=input_ids, labels=labels, truncated=False)


def test_pad_batch_right_pads_to_the_longest():
    """Shorter rows get pad ids, attention 0 and ignored labels on the right; sample ids list the indexes."""
    examples = [make_example(4, [1, 5, 6], [-100, -100, 6]), make_example(9, [1, 7], [-100, 7])]
    batch = pad_batch(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6], [-100, 7, -100]]
    assert all(batch[key].dtype == torch.int64 for key in ("input_ids", "attention_mask", "labels"))
    assert batch["sample_ids"] == [4, 9]


def test_pad_batch_pads_to_a_fixed_length():
    """pad_to pads every row to that length and refuses one shorter than the longest example."""
    examples = [make_example(0, [1, 5, 6], [-100, -100, 6])]
    batch = pad_batch(examples, pad_id=2, pad_to=5)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 6, -100, -100]]
    with pytest.raises(ValueError, match="shorter than the longest"):
        pad_batch(examples, pad_id=2, pad_to=2)


def test_answer_token_count_skips_the_first_position():
    """Position 0 is never predicted, so a label there is not counted; the others are."""
    assert squad.answer_token_count(make_example(0, [1, 5, 6], [-100, 5, 6])) == 2
    assert squad.answer_token_count(make_example(0, [5, 6], [5, 6])) == 1
