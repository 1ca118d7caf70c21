"""Bad data for `tamer run chat|instruct|text`, through the real command in-process: each case is one `error:` line
with its exit code (2 config, 3 data, 4 model) before anything is registered; rows a run can do without are
skipped and counted in what the `data` event says."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tamer import hub
from tamer.cli import app
from tamer.config import build_config
from tamer.recipes.prepare import prepare

GOOD = [{"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "In France."}]


def jsonl(folder, rows, name="data.jsonl"):
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def latin1(folder):
    path = folder / "latin1.jsonl"
    path.write_bytes(
        json.dumps({"messages": GOOD}).encode() + b'\n{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    )
    return str(path)


# name: (recipe, arguments given the test folder, exit code, text of the one error line)
CASES = {
    "a column that does not exist": (
        "instruct",
        lambda p: ["--data", jsonl(p, [{"promt": "a", "completion": "b"}] * 9)],
        3,
        "column 'promt' looks like 'prompt'",
    ),
    "a mapped column that does not exist": (
        "instruct",
        lambda p: [
            "--data",
            jsonl(p, [{"question": "a", "answer": "b"}] * 9),
            "--set",
            "columns={prompt: questoin, completion: answer}",
        ],
        3,
        "no column 'questoin' (columns: question, answer); did you mean 'question'?",
    ),
    "no row with an assistant turn": (
        "chat",
        lambda p: ["--data", jsonl(p, [{"messages": GOOD[:1]}] * 12)],
        3,
        "no training examples left after filtering (10 rows: 10 skipped without an assistant turn)",
    ),
    "an unknown role": (
        "chat",
        lambda p: ["--data", jsonl(p, [{"messages": GOOD}] * 5 + [{"messages": [{"role": "bot", "content": "x"}]}])],
        3,
        "row 5: message 0 has unknown role 'bot'; known roles: system, user, assistant, tool",
    ),
    "only empty strings": (
        "instruct",
        lambda p: ["--data", jsonl(p, [{"prompt": "", "completion": "x"}] * 12)],
        3,
        "(10 rows: 10 skipped as empty)",
    ),
    "a file mixing formats": (
        "chat",
        lambda p: [
            "--data",
            jsonl(p, [{"messages": GOOD}] * 5 + [{"conversations": [{"from": "human", "value": "x"}]}]),
        ],
        3,
        "row 0 is a messages row and row 5 a ShareGPT conversations row: a file mixing formats",
    ),
    "bytes that are not UTF-8": ("chat", lambda p: ["--data", latin1(p)], 3, "is not UTF-8 text (byte 0xe9 on line 2)"),
    "a row over max_seq_len under overlong: error": (
        "chat",
        lambda p: ["--data", jsonl(p, [{"messages": GOOD}] * 12), "--set", "overlong=error", "--set", "max_seq_len=8"],
        3,
        "row 0 has 41 tokens, more than max_seq_len 8 (overlong: error)",
    ),
    "an empty dataset after filtering": (
        "text",
        lambda p: ["--data", jsonl(p, [{"text": " "}] * 12)],
        3,
        "no training examples left after filtering (10 rows: 10 skipped as empty)",
    ),
    "a hub dataset not cached while offline": (
        "chat",
        lambda p: ["--data", "hub:someone/chats"],
        3,
        "data hub:someone/chats: could not reach the hub (HF_HUB_OFFLINE is set) and there is no "
        "cached copy; pass --data with a local file",
    ),
    "no data at all": (
        "text",
        lambda p: ["--set", "data=null"],
        3,
        "data: the text recipe trains on your data: pass --data",
    ),
    "too few rows for a batch": (
        "chat",
        lambda p: ["--data", jsonl(p, [{"messages": GOOD}] * 6)],
        3,
        "4 training examples make no full batch of 8; lower effective_batch_size or add data",
    ),
    "no chat template": (
        "chat",
        lambda p: ["--set", "chat_template=null"],
        4,
        "the bundled tokenizer has no chat template; set one with `chat_template: FILE | NAME`",
    ),
    "a recipe tamer does not have": (
        "chatt",
        lambda p: [],
        2,
        "recipe 'chatt': unknown recipe; choose one of squad, chat, instruct, text; did you mean chat?",
    ),
    "a key of another recipe": (
        "instruct",
        lambda p: ["--set", "train_on=all"],
        2,
        "train_on: applies to the chat recipe, not instruct",
    ),
}


def invoke(home, recipe: str, arguments: list[str]):
    return CliRunner().invoke(
        app, ["run", recipe, "--preset", "tiny", "--set", "eval_samples=2", *arguments, "--home", str(home)]
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_line_with_its_exit_code_and_registers_nothing(tmp_path, case):
    """Each case exits with its code and one `error:` line saying what is wrong, and leaves no run behind."""
    recipe, arguments, code, text = CASES[case]
    home = tmp_path / "home"
    result = invoke(home, recipe, arguments(tmp_path))
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


def test_a_hub_dataset_that_does_not_exist_is_refused_before_registering(tmp_path, monkeypatch):
    """With the hub reachable, a name the hub does not have is a one-line data error (exit 3)."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def not_found(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'someone/nothing' doesn't exist on the Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "probe", lambda timeout=0: None)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    result = invoke(tmp_path / "home", "chat", ["--data", "hub:someone/nothing"])
    assert result.exit_code == 3, result.output
    assert result.stderr.strip() == (
        "error: data hub:someone/nothing: no dataset someone/nothing on the hub (a private or gated one also "
        "needs HF_TOKEN); check the name, or pass a local file"
    )
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())


def test_rows_a_run_can_do_without_are_skipped_and_counted(tmp_path):
    """Rows without a reply, with an empty message, or over max_seq_len under overlong: skip are left out and counted
    in the `data` event's words; the rest train."""
    long = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}]
    rows = (
        [{"messages": GOOD}] * 10
        + [{"messages": GOOD[:1]}] * 2
        + [{"messages": [GOOD[0], {"role": "assistant", "content": ""}]}]
        + [{"messages": long}]
    )
    config = build_config(
        "tiny",
        options={"recipe": "chat", "data": jsonl(tmp_path, rows)},
        sets=["eval_samples=0", "overlong=skip", "max_seq_len=48"],
    )
    prepared = prepare(config)
    assert len(prepared.train) == 10
    assert prepared.summary == (
        "10 training and 0 validation examples; 0 truncated, 1 skipped as too long, 1 skipped as empty, "
        "2 skipped without an assistant turn"
    )
    assert prepared.detail["train"]["skipped_no_assistant"] == 2
