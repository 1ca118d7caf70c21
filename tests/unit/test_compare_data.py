"""`tamer compare --data FILE` puts the scores `tamer eval --data FILE` stored side by side, not the held-out slice's."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from tamer.inspect.results import compare
from tamer.protocol import HELD_OUT
from tamer.state.db import Database
from tests.unit.conftest import RUN_ID


def _score(db: Database, data: str, exact_match: float, f1: float) -> None:
    common = {
        "run_id": RUN_ID,
        "step": 4,
        "attempt": 1,
        "plan": "micro-batch 8 x 1",
        "questions": 8,
        "seconds": 1.0,
        "data": data,
        "wall_time": time.time(),
    }
    db.insert_squad_scores(
        [{**common, "metric": "exact_match", "value": exact_match}, {**common, "metric": "f1", "value": f1}]
    )


def test_compare_reads_the_scores_of_the_file_asked_for(recorded_home, tmp_path):
    """With the held-out slice and an evaluation file both scored, compare shows the slice by default and the file's
    pass with --data (the path resolved as `tamer eval` stores it)."""
    from tamer import cli

    evaluation = tmp_path / "eval.json"
    db = Database(recorded_home / "tamer.db", create=False)
    _score(db, HELD_OUT, 0.5, 0.6)
    _score(db, str(evaluation.resolve()), 0.25, 0.375)
    assert [(row["exact_match"], row["f1"]) for row in compare(db, [RUN_ID])] == [(0.5, 0.6)]
    assert [(row["exact_match"], row["f1"]) for row in compare(db, [RUN_ID], str(evaluation.resolve()))] == [
        (0.25, 0.375)
    ]
    db.close()
    result = CliRunner().invoke(
        cli.app, ["compare", RUN_ID, "--data", str(evaluation), "--json", "--home", str(recorded_home)]
    )
    assert result.exit_code == 0, result.output
    assert [(row["exact_match"], row["f1"]) for row in json.loads(result.output)] == [(0.25, 0.375)]
