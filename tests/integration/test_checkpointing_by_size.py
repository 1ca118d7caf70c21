"""Checkpointing by size in a real run (tiny preset, CPU): the trainer switches how many layers it checkpoints
per micro-batch from the plan's table, says so once per count, and trains exactly as without the table."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from tests.integration.runs import TINY, events, final_weights, query, run_id_of, tamer

STEPS = 6
PLAN = {"micro_batch_size": 4, "grad_accumulation": 2, "gradient_checkpointing": True, "checkpoint_layers": 2}


def run(home, plan: dict) -> str:
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        str(STEPS),
        "--set",
        "checkpoint_every=6",
        "--set",
        f"start_plan={json.dumps(plan)}",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    return run_id_of(result)


@pytest.mark.slow
def test_a_run_switches_layers_by_size_and_trains_exactly_as_without(tmp_path):
    plain_home = tmp_path / "plain"
    plain = run(plain_home, PLAN)
    rows = query(plain_home, "SELECT step, loss, computed_tokens FROM steps WHERE run_id = ? ORDER BY step", (plain,))
    # a limit at the median micro-batch (two per step): some micro-batches fall under it, some above
    limit = int(statistics.median(computed / 2 for _, _, computed in rows))
    table_home = tmp_path / "table"
    by_size = run(table_home, {**PLAN, "checkpoint_layers_by_tokens": [[limit, 0]]})

    switched = query(
        table_home, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'checkpointing_by_size'", (by_size,)
    )
    assert sorted(json.loads(detail)["layers"] for (detail,) in switched) == [0, 2], switched
    assert not [kind for kind, _ in events(plain_home, plain) if kind == "checkpointing_by_size"]
    losses = query(
        table_home, "SELECT step, loss, computed_tokens FROM steps WHERE run_id = ? ORDER BY step", (by_size,)
    )
    assert losses == rows  # bit for bit: recomputation gives the same activations
    for name, tensor in final_weights(plain_home, plain).items():
        assert torch.equal(final_weights(table_home, by_size)[name], tensor), name
