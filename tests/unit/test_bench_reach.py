"""bench/reach.py's pure parts: the markdown table fits 80 columns with its ratios right, the first attempt that
trained is found, and "as predicted" compares how plans train, not their rung history. No torch, no model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tamer.plan import Plan

BENCH = Path(__file__).resolve().parents[2] / "bench"
GIB = 2**30


def _reach():
    spec = importlib.util.spec_from_file_location("bench_reach", BENCH / "reach.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NF4 = Plan(8, 1, 8, lora=True, quantization="nf4", compute_dtype="bf16", rungs=("lora", "quantize_4bit"))
ROWS = [
    {
        "shape": "1b",
        "change": "full",
        "attempts_to_first_step": 1,
        "predicted_bytes": 12.6 * GIB,
        "peak_bytes": 12.0 * GIB,
        "questions_per_second": 71.5,
        "hf": {"outcome": "done", "questions_per_second": 30.0},
    },
    {
        "shape": "8b",
        "change": "LoRA, nf4 base",
        "attempts_to_first_step": 2,
        "predicted_bytes": 12.6 * GIB,
        "peak_bytes": 13.9 * GIB,
        "questions_per_second": 3.2,
        "hf": {"outcome": "OOM"},
    },
    {"shape": "3b", "change": "LoRA, bf16 base", "predicted_bytes": 13.6 * GIB, "error": "failed", "hf": {}},
]


def test_the_table_fits_80_columns_with_its_ratios():
    """Each row is at most 80 columns; peak / predicted and tamer's q/s over the reference's are computed, an OOM of
    the reference is its cell, and a failed tamer run shows dashes."""
    reach = _reach()
    text = reach.table(ROWS)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[2] == "| 1b | full | 1 | 12.6 | 12.0 | 0.95 | 71.50 | 30.00 | 2.38 |"
    assert lines[3] == "| 8b | LoRA, nf4 base | 2 | 12.6 | 13.9 | 1.10 | 3.20 | OOM | - |"
    assert lines[4] == "| 3b | LoRA, bf16 base | - | 13.6 | - | - | - | - | - |"
    cpu = reach.table([{**ROWS[0], "peak_kind": "RSS", "hf": {"outcome": "skipped: --device cpu"}}])
    assert cpu.splitlines()[2] == "| 1b | full | 1 | 12.6 | 12.0 RSS | - | 71.50 | skipped | - |"
    assert all(len(line) <= 80 for line in reach.plans_text(ROWS).splitlines())


def test_attempts_to_the_first_step_and_as_predicted():
    """The first attempt with a step row counts (an OOM before step 1 makes it 2), and its plan is compared with the
    prediction by how it trains: the same plan reached through other rungs is as predicted, another micro-batch not."""
    reach = _reach()
    attempts = [
        {"attempt": 1, "plan_json": json.dumps(NF4.replace(micro_batch_size=16).to_dict())},
        {"attempt": 2, "plan_json": json.dumps(NF4.to_dict())},
    ]
    steps = [{"attempt": 2}, {"attempt": 2}]
    found = reach.first_attempt_facts(attempts, steps)
    assert found["attempts_to_first_step"] == 2 and found["first_plan"] == NF4.to_dict()
    assert reach.first_attempt_facts(attempts, []) == {"attempts_to_first_step": None, "first_plan": None}
    other_history = NF4.replace(rungs=("lora", "quantize_8bit", "quantize_4bit")).to_dict()
    assert reach.same_plan(NF4.to_dict(), other_history)
    assert not reach.same_plan(NF4.to_dict(), NF4.replace(micro_batch_size=4, grad_accumulation=2).to_dict())
    assert not reach.same_plan(NF4.to_dict(), None)


def test_bad_shapes_and_steps_are_one_line_errors(tmp_path):
    """An unknown shape or fewer than 2 steps ends the bench with a one-line error before anything runs."""
    import pytest

    reach = _reach()
    for argv, words in ((["--shapes", "70b"], "--shapes 70b"), (["--shapes", "1b", "--steps", "1"], "--steps 1")):
        with pytest.raises(SystemExit) as stopped:
            reach.bench_command(reach.parse([*argv, "--out", str(tmp_path)]))
        assert words in str(stopped.value) and "\n" not in str(stopped.value)
    assert not any(tmp_path.iterdir())


def test_steady_state_is_the_median_of_the_second_half():
    """Tokens/s: the median of computed tokens / step time over the second half (a slow recompiling step there does
    not move it); questions/s: every step after the first, the whole wall clock of them."""
    reach = _reach()

    def step(seconds: float, tokens: int = 1000) -> dict:
        return {"step_time": seconds, "computed_tokens": tokens, "micro_batch_size": 8, "grad_accumulation": 1}

    steps = [step(10.0), step(1.0), step(0.5), step(0.5), step(5.0), step(0.25), step(0.5), step(0.5)]
    found = reach.steady(steps)
    assert found["tokens_per_second"] == 2000.0 and found["steps"] == 8
    assert found["questions_per_second"] == 7 * 8 / 8.25
    assert reach.steady([])["tokens_per_second"] is None
