"""Reading a data recipe's rows (tamer/recipes/sources.py), the text recipe's pieces (text.py), the held-out rows,
and the token lengths the planner sizes plans on (profile.py, Workload.from_config)."""

from __future__ import annotations

import json

import pytest

from tamer.config import build_config
from tamer.errors import DataError
from tamer.planner.estimate import SUPERVISED_PER_SEQUENCE, Workload
from tamer.recipes import sources, text, tokens
from tamer.recipes.examples import IGNORE_INDEX, Example
from tamer.recipes.prepare import prepare
from tamer.recipes.profile import DataProfile

ROWS = [
    {"prompt": "one", "completion": "1"},
    {"prompt": "two", "completion": "2"},
    {"prompt": "three", "completion": "3"},
]


def write_rows(folder, name: str) -> str:
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    elif name.endswith(".json"):
        path.write_text(json.dumps(ROWS))
    elif name.endswith(".csv"):
        path.write_text("prompt,completion\n" + "".join(f"{row['prompt']},{row['completion']}\n" for row in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    return str(path)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.csv", "rows.parquet"])
def test_every_local_format_reads_the_same_rows(tmp_path, name):
    """JSON Lines, a JSON array, CSV and Parquet files give the same rows (a CSV column of digits read as text by the recipe)."""
    rows = sources.load_rows(write_rows(tmp_path, name), "instruct", "train", "data")
    assert [{k: str(v) for k, v in row.items()} for row in rows.rows] == ROWS and rows.columns == [
        "prompt",
        "completion",
    ]


def test_a_folder_reads_its_files_in_order_and_refuses_mixed_formats(tmp_path):
    """A folder of .jsonl files is one source (files in name order); a .csv beside them is a one-line error."""
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (tmp_path / "a.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert [row["prompt"] for row in sources.load_rows(str(tmp_path), "instruct", "train", "data").rows] == [
        "one",
        "two",
    ]
    (tmp_path / "c.csv").write_text("prompt,completion\nx,y\n")
    with pytest.raises(DataError, match=r"the folder mixes \.csv and \.jsonl files; keep one format per folder"):
        sources.load_rows(str(tmp_path), "instruct", "train", "data")


def test_bytes_that_are_not_utf8_are_refused_with_their_line(tmp_path):
    """A Latin-1 byte on line 2 is named with its line and a way to convert the file."""
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(
        DataError, match=r"^data .*latin1.jsonl: latin1.jsonl is not UTF-8 text \(byte 0xe9 on line 2\); convert it"
    ):
        sources.load_rows(str(path), "text", "train", "data")


def test_a_line_that_is_not_json_is_named(tmp_path):
    """A broken line of a JSON Lines file is named by its number."""
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "no end"\n')
    with pytest.raises(DataError, match=r"could not be read as json \(broken.jsonl line 2 is not JSON"):
        sources.load_rows(str(path), "text", "train", "data")


def test_missing_sources_and_txt_for_rows_are_refused(tmp_path):
    """No such file; a .txt file given to a recipe of rows; a malformed hub name."""
    with pytest.raises(DataError, match="no such file or folder"):
        sources.load_rows(str(tmp_path / "nope.jsonl"), "chat", "train", "data")
    (tmp_path / "a.txt").write_text("words")
    with pytest.raises(DataError, match=r"\.txt files are plain text, which `tamer run text` trains on"):
        sources.load_rows(str(tmp_path / "a.txt"), "chat", "train", "data")
    with pytest.raises(DataError, match=r"expected hub:NAME or hub:NAME:SUBSET"):
        sources.load_rows("hub:a/b/c", "chat", "train", "data")


def test_a_hub_dataset_that_does_not_exist_is_a_data_error(monkeypatch):
    """datasets' DatasetNotFoundError becomes a one-line DataError naming the source."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def not_found(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError, match=r"^data hub:nobody/nothing: no dataset nobody/nothing on the hub"):
        sources.load_rows("hub:nobody/nothing", "chat", "train", "data")
    assert sources.hub_name("hub:org/set:subset") == ("org/set", "subset") and sources.hub_name("rows.jsonl") is None


def test_txt_files_are_documents_and_long_ones_are_cut_into_pieces(tmp_path):
    """Each .txt file of a folder is one document; a document longer than max_seq_len becomes pieces of at most
    max_seq_len tokens that together score every token after BOS exactly once."""
    (tmp_path / "short.txt").write_text("A short note.")
    (tmp_path / "long.txt").write_text(" ".join(f"word{n}" for n in range(200)))
    rows = sources.load_rows(str(tmp_path), "text", "train", "data")
    documents = text.documents_of(rows, None)
    assert [document.id for document in documents] == ["long.txt", "short.txt"]
    tokenizer = tokens.load("bundled", "tiny")
    examples, counts = text.build_examples(documents, tokenizer, max_seq_len=64)
    whole = [tokenizer.bos_id] + tokenizer.ids(documents[0].text) + [tokenizer.eos_id]
    pieces = [example for example in examples if example.id.startswith("long.txt#")]
    assert len(pieces) > 1 and counts["cut"] == 1 and all(len(piece.input_ids) <= 64 for piece in pieces)
    assert all(piece.labels[0] == IGNORE_INDEX for piece in pieces)
    scored = [label for piece in pieces for label in piece.labels if label != IGNORE_INDEX]
    assert scored == whole[1:]  # every token after BOS, once, in order
    assert [piece.input_ids[0] for piece in pieces[1:]] == [piece.input_ids[-1] for piece in pieces[:-1]]


def test_held_out_rows_are_seeded_stable_and_sized():
    """The same seed holds out the same rows; another seed others; a fraction is rounded; impossible sizes are errors."""
    train, held = sources.hold_out(100, 10, None, seed=3, label="data x")
    assert (train, held) == sources.hold_out(100, 10, None, seed=3, label="data x")
    assert held != sources.hold_out(100, 10, None, seed=4, label="data x")[1]
    assert sorted(train + held) == list(range(100)) and train == sorted(train)
    assert len(sources.hold_out(100, 10, 0.25, seed=3, label="data x")[1]) == 25
    with pytest.raises(DataError, match=r"eval_samples: 100 must be less than the 100 rows of data x"):
        sources.hold_out(100, 100, None, 0, "data x")
    with pytest.raises(DataError, match=r"validation_split: 0.001 of the 100 rows of data x is 0 rows"):
        sources.hold_out(100, 0, 0.001, 0, "data x")


def test_prepare_holds_out_by_row_and_counts_what_it_skipped(tmp_path):
    """prepare() on the bundled chat sample: validation rows by the seed, the skipped rows counted, the profile of the training set."""
    config = build_config("tiny", options={"recipe": "chat"}, sets=["eval_samples=20"])
    prepared = prepare(config)
    again = prepare(config)
    assert [e.id for e in prepared.evaluation] == [e.id for e in again.evaluation] and len(prepared.evaluation) <= 20
    assert not {e.id for e in prepared.train} & {e.id for e in prepared.evaluation}
    assert prepared.detail["train"]["rows"] + prepared.detail["eval"]["rows"] == 207
    assert prepared.profile == DataProfile.of(prepared.train)
    assert prepared.summary.startswith(
        f"{len(prepared.train)} training and {len(prepared.evaluation)} validation examples; "
    )


def test_the_planner_sizes_a_workload_on_the_data_profile():
    """A profile sets the sequence length (the longest, rounded up to batch_multiple, capped at max_seq_len), the speed
    length (the mean under the batching's overhead) and the scored positions (the most, at least the config's);
    without one (squad) the workload is as before."""
    config = build_config("tiny", options={"recipe": "chat"})
    short = DataProfile(examples=10, mean_tokens=100.0, max_tokens=130, mean_scored=5.0, max_scored=40)
    workload = Workload.from_config(config, data=short)
    assert (workload.sequence_length, workload.computed_per_sequence, workload.supervised_per_sequence) == (
        192,
        102,
        40,
    )
    few = DataProfile(examples=10, mean_tokens=100.0, max_tokens=2000, mean_scored=2.0, max_scored=3)
    assert (
        Workload.from_config(config, data=few).sequence_length,
        Workload.from_config(config, data=few).supervised_per_sequence,
    ) == (config.max_seq_len, SUPERVISED_PER_SEQUENCE)
    assert Workload.from_config(build_config("tiny")) == Workload.from_config(build_config("tiny"), data=None)
    assert Workload.from_config(build_config("tiny")).sequence_length == 512


def test_example_positions_scored_by_the_profile():
    """DataProfile counts tokens and scored tokens per example (the first label never counts)."""
    examples = [
        Example(0, "a", [1, 2, 3], [IGNORE_INDEX, 2, 3], False),
        Example(1, "b", [1, 2, 3, 4, 5], [5, IGNORE_INDEX, 3, 4, 5], False),
    ]
    assert DataProfile.of(examples) == DataProfile(2, 4.0, 5, 2.5, 3)
