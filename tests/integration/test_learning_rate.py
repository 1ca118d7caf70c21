"""A real escalation to LoRA on the tiny preset trains the adapters at `lora.learning_rate`, at the same position
of the warmup + cosine schedule (the step rows' lr), and says so in its events."""

from __future__ import annotations

import pytest

from tamer.config import build_config
from tamer.engine.optim import cosine_with_warmup, warmup_steps
from tests.integration.runs import TINY, attempts, events, final_steps, run_id_of, tamer

pytestmark = pytest.mark.slow


def test_an_escalation_to_lora_trains_at_the_lora_rate_on_the_same_schedule(tmp_path):
    """Steps 1-4 at learning_rate 1e-3 x the schedule, a CUDA OOM injected at step 5, the card ladder's LoRA rung:
    steps 5-8 resume from step 4's checkpoint at lora.learning_rate 5e-3 x the same schedule's factors."""
    sets = [
        "--set",
        "checkpoint_every=2",
        "--set",
        "ladder.mode=card",
        "--set",
        "ladder.order=[lora]",
        "--set",
        "lora.learning_rate=5e-3",
        "--set",
        "warmup_ratio=0.25",
    ]
    result = tamer(
        "run", "squad", *TINY, "--max-steps", "8", *sets, "--inject=oom:step=5,phase=backward,attempt=1", home=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    assert [row["outcome"] for row in attempts(tmp_path, run_id)] == ["cuda_oom", "done"]
    warmup = warmup_steps(build_config("tiny", sets=["warmup_ratio=0.25"]), 8)
    expected = [(1e-3 if step <= 4 else 5e-3) * cosine_with_warmup(step - 1, 8, warmup) for step in range(1, 9)]
    assert final_steps(tmp_path, run_id, "lr") == pytest.approx(expected, rel=1e-9)
    messages = dict(events(tmp_path, run_id))
    assert "learning rate 0.001 -> 0.005 for LoRA adapters" in messages["escalate"]
    assert (
        messages["learning_rate"] == "learning rate 0.001 -> 0.005 for LoRA adapters, from step 4 of the same schedule"
    )
    assert messages["start"].endswith("; peak learning rate 0.005")
