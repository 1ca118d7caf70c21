"""The result of a run on the torch-free side: what runs after a run, scores read back, the config
keys, the commands' docs, and the held-out questions keeping every gold answer."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from tamer.cli import app
from tamer.config import build_config
from tamer.daemon.result import after_run_arguments
from tamer.errors import ConfigError
from tamer.inspect.results import compare, last_squad, squad_series
from tamer.recipes import squad
from tamer.state.db import Database


@pytest.fixture()
def db(tmp_path):
    database = Database(tmp_path / "tamer.db")
    database.insert_run(
        {
            "id": "run-a",
            "recipe": "squad",
            "preset": "tiny",
            "status": "done",
            "config_json": "{}",
            "run_dir": str(tmp_path),
            "created_at": 1.0,
            "started_at": 1.0,
            "ended_at": 61.0,
            "steps_done": 20,
            "total_steps": 20,
            "final_loss": 0.5,
        }
    )
    rows = []
    for step, wall_time, data, exact, f1 in (
        (10, 100.0, "held-out", 0.1, 0.2),
        (20, 200.0, "held-out", 0.8, 0.9),
        (20, 300.0, "/other.json", 0.3, 0.4),
    ):
        for metric, value in (("exact_match", exact), ("f1", f1)):
            rows.append(
                {
                    "run_id": "run-a",
                    "step": step,
                    "attempt": 1,
                    "plan": "micro-batch 8 x 1",
                    "metric": metric,
                    "value": value,
                    "questions": 16,
                    "seconds": 2.0,
                    "data": data,
                    "wall_time": wall_time,
                }
            )
    database.insert_squad_scores(rows)
    return database


def test_series_and_last_scores_read_only_held_out_passes(db):
    """EM/F1 against step and the last pass come from held-out passes; another file's pass is left out."""
    assert squad_series(db, "run-a") == {"step": [10, 20], "exact_match": [0.1, 0.8], "f1": [0.2, 0.9]}
    last = last_squad(db, "run-a")
    assert (last["step"], last["exact_match"], last["f1"], last["questions"]) == (20, 0.8, 0.9, 16)


def test_compare_row_has_plan_steps_time_and_scores(db):
    """A compared run shows its steps, wall time, final loss and last held-out EM/F1."""
    row = compare(db, ["run-a"])[0]
    assert (row["steps"], row["wall_seconds"], row["final_loss"], row["exact_match"], row["f1"]) == (
        0,
        60.0,
        0.5,
        0.8,
        0.9,
    )


def test_never_scored_run_has_no_last_scores(tmp_path):
    """A run without a SQuAD pass reads as None (shown as `-`), not as zero."""
    assert last_squad(Database(tmp_path / "tamer.db"), "nothing") is None


def test_after_run_evaluates_and_exports_by_default_and_obeys_the_switches(tmp_path):
    """A completed run is scored and exported unless eval.squad_samples=0 or export.enabled=false."""
    assert after_run_arguments(build_config("tiny"), tmp_path) == ["--eval", "--export", str(tmp_path / "export")]
    assert after_run_arguments(build_config("tiny", sets=["eval.squad_samples=0"]), tmp_path) == [
        "--export",
        str(tmp_path / "export"),
    ]
    assert (
        after_run_arguments(build_config("tiny", sets=["eval.squad_samples=0", "export.enabled=false"]), tmp_path) == []
    )


def test_a_run_that_holds_no_questions_out_is_not_scored(tmp_path):
    """eval_samples=0 leaves no held-out questions: the run is exported but not scored (no `EM 0.000 on 0 questions`)."""
    assert after_run_arguments(build_config("tiny", sets=["eval_samples=0"]), tmp_path) == [
        "--export",
        str(tmp_path / "export"),
    ]


@pytest.mark.parametrize(
    "setting", ["eval.squad_every=0", "eval.squad_batch_size=0", "eval.squad_samples=-1", "export.dtype=int4"]
)
def test_bad_result_config_is_refused(setting):
    """Out-of-range evaluation knobs and unknown export dtypes are one-line config errors."""
    with pytest.raises(ConfigError):
        build_config("tiny", sets=[setting])


def test_result_keys_do_not_change_the_config_hash():
    """Evaluation and export settings do not decide training, so they leave the config hash alone."""
    assert (
        build_config("tiny").config_hash()
        == build_config("tiny", sets=["eval.squad_every=5", "export.dtype=fp32"]).config_hash()
    )


@pytest.mark.parametrize("name", ["export_command", "eval_command", "compare"])
def test_result_commands_are_documented_with_an_example(name):
    """export, eval and compare are registered and their help ends with an example."""
    commands = {command.callback.__name__: command for command in app.registered_commands}
    lines = [line.strip() for line in inspect.getdoc(commands[name].callback).splitlines() if line.strip()]
    shown = {"export_command": "export", "eval_command": "eval"}.get(name, name)
    assert lines[-1].startswith(f"Example: tamer {shown}")


def test_records_keep_every_gold_answer_and_train_on_the_first(tmp_path):
    """A question with several answers keeps them all (deduplicated) for scoring; training uses the first."""
    document = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": "The Denver Broncos won.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Who won?",
                                "answers": [
                                    {"text": "Denver Broncos", "answer_start": 4},
                                    {"text": "The Denver Broncos", "answer_start": 0},
                                    {"text": "Denver Broncos", "answer_start": 4},
                                    {"text": ""},
                                ],
                            }
                        ],
                    }
                ]
            }
        ]
    }
    path = Path(tmp_path / "squad.json")
    path.write_text(json.dumps(document))
    record = squad.load_records(str(path))[0]
    assert record.answer == "Denver Broncos"
    assert record.gold_answers == ("Denver Broncos", "The Denver Broncos")
