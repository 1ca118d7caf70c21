"""Bad input: a one-line error, a distinct exit code, and no run left `running`."""

from __future__ import annotations

import json

import pytest

from tests.integration.runs import SHARED_DATA, TINY, query, tamer


def _no_run_running(home) -> bool:
    if not (home / "tamer.db").exists():
        return True
    return query(home, "SELECT count(*) FROM runs WHERE status IN ('running', 'queued')") == [(0,)]


def _bad_squad(tmp_path):
    document = json.loads((SHARED_DATA / "squad_v1.1_dev_subset.json").read_text()) if SHARED_DATA.exists() else None
    if document is None:
        pytest.skip("shared/data is not beside the repo")
    del document["data"][0]["paragraphs"][2]["qas"][1]["question"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    return path


CASES = {
    "malformed yaml": (lambda p: ["--config", str(_write(p / "c.yaml", "max_steps: [1, 2\n"))], 2, "malformed YAML"),
    "unknown --set key": (lambda p: ["--set", "lora.rank=8"], 2, "lora.rank: unknown key"),
    "wrong type": (lambda p: ["--set", "max_steps=lots"], 2, "max_steps: expected an integer"),
    "unknown preset": (lambda p: ["--preset", "huge"], 2, "unknown preset"),
    "missing data file": (lambda p: ["--data", str(p / "nope.json")], 3, "no such file"),
    "malformed squad record": (lambda p: ["--data", str(_bad_squad(p))], 3, "data[0].paragraphs[2].qas[1]"),
    "unknown rung": (
        lambda p: ["--set", "ladder.order=[gradient_checkpointing,magic]"],
        2,
        "ladder.order[1]: unknown rung 'magic'",
    ),
    "bad fault spec": (lambda p: ["--inject", "oom:step=soon"], 2, "step must be a whole number"),
}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_with_its_exit_code(tmp_path, case):
    """Each kind of bad input exits with its own code and a single `error:` line, leaving nothing running."""
    make_args, code, text = CASES[case]
    extra = make_args(tmp_path)
    preset = [] if "--preset" in extra else TINY
    result = tamer("run", "squad", *preset, "--max-steps", "2", *extra, home=tmp_path / "home")
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.stderr
    assert _no_run_running(tmp_path / "home")


def test_unknown_run_is_a_state_error(tmp_path):
    """`tamer show` of a run that does not exist exits 5 with a one-line error."""
    tamer("run", "squad", *TINY, "--max-steps", "1", "--set", "checkpoint_every=1", home=tmp_path)
    result = tamer("show", "nosuchrun", home=tmp_path)
    assert result.returncode == 5 and "no run 'nosuchrun'" in result.stderr


def test_foreign_database_is_refused_without_writing(tmp_path):
    """A database that is not tamer's gives a clear error and is left byte-for-byte unchanged."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "tamer.db")
    conn.execute("CREATE TABLE notes (text)")
    conn.commit()
    conn.close()
    before = (tmp_path / "tamer.db").read_bytes()
    result = tamer("runs", home=tmp_path)
    assert result.returncode == 5 and "not a tamer one" in result.stderr
    assert (tmp_path / "tamer.db").read_bytes() == before


def test_corrupt_database_is_refused_without_writing(tmp_path):
    """A database file that is not SQLite at all gives a clear one-line error and is left byte-for-byte unchanged."""
    (tmp_path / "tamer.db").write_bytes(b"not a database " * 512)
    before = (tmp_path / "tamer.db").read_bytes()
    result = tamer("runs", home=tmp_path)
    assert result.returncode == 5 and "not a usable tamer database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "tamer.db").read_bytes() == before
