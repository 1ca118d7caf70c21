"""Learning rates per plan: LoRA adapters train at `lora.learning_rate`, whichever way a run reaches LoRA (first
plan, start_rungs through the planner, an escalation); a move mid-run keeps the schedule's position with the new
peak, and the events say so. A plan reached by start_rungs is the planner's fastest plan with those rungs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tamer.config import build_config
from tamer.daemon.supervisor import Supervisor, create_run
from tamer.plan import DeviceFacts, Plan
from tamer.state.db import Database
from tamer.state.home import Home
from tests.unit.test_model_shape import SMOLLM2_135M, model_folder
from tests.unit.test_supervisor_loop import details, supervise

FULL = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
LORA = FULL.replace(lora=True)
CARD_16GB = DeviceFacts(kind="cuda", name="GPU (assumed)", total_memory=16 * 2**30, bf16=True, fp16=True)


def test_a_lora_plan_takes_the_lora_rate_and_the_config_hash_sees_it():
    """Full fine-tunes train at learning_rate, LoRA plans at lora.learning_rate (2e-4 unless set), which is part of
    what decides the result (the config hash)."""
    config = build_config("llama-3.2-1b")
    assert config.learning_rate_for(FULL) == 2e-5 and config.learning_rate_for(LORA) == 2e-4
    assert config.learning_rate_for(FULL.replace(quantization="int8", lora=True)) == 2e-4
    changed = build_config("llama-3.2-1b", sets=["lora.learning_rate=1e-4"])
    assert changed.learning_rate_for(LORA) == 1e-4 and changed.config_hash() != config.config_hash()


def test_the_rate_change_is_said_in_words_both_ways():
    """Full -> LoRA and back name both rates; the same kind of plan, or equal rates, say nothing."""
    config = build_config("llama-3.2-1b")
    assert config.learning_rate_change(FULL, LORA) == "learning rate 2e-05 -> 0.0002 for LoRA adapters"
    assert config.learning_rate_change(LORA, FULL) == "learning rate 0.0002 -> 2e-05 for the full model"
    assert config.learning_rate_change(FULL, FULL.replace(micro_batch_size=4, grad_accumulation=2)) is None
    assert build_config("llama-3.2-1b", sets=["lora.learning_rate=2e-5"]).learning_rate_change(FULL, LORA) is None


def test_a_restored_schedule_keeps_its_position_with_the_new_plans_peak():
    """A scheduler restored from a full fine-tune's checkpoint under a LoRA plan gives step k's factor times the LoRA
    rate; restored under the same plan it gives the very rate it had (exact resume)."""
    torch = pytest.importorskip("torch")
    from tamer.engine.optim import build_scheduler, cosine_with_warmup, restore_scheduler

    def scheduler(lr: float):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
        return build_scheduler(optimizer, total_steps=20, warmup=3)

    trained = scheduler(2e-5)
    for _ in range(7):
        trained.optimizer.step()
        trained.step()
    state, rate = trained.state_dict(), trained.optimizer.param_groups[0]["lr"]
    lora = scheduler(2e-4)
    restore_scheduler(lora, state, 2e-4)
    assert lora.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * cosine_with_warmup(7, 20, 3))
    lora.optimizer.step()
    lora.step()
    assert lora.optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * cosine_with_warmup(8, 20, 3))
    same = scheduler(2e-5)
    restore_scheduler(same, state, 2e-5)
    assert same.optimizer.param_groups[0]["lr"] == rate and not math.isnan(rate)


def _prepared(tmp_path: Path, facts: DeviceFacts, **options) -> tuple[Supervisor, str]:
    """A supervisor of a new run on `facts`, prepared up to its first plan (no child started)."""
    home = Home.resolve(tmp_path)
    run_id = create_run(home, build_config("llama-3.2-1b", None, options, []))
    db = Database(home.db_path)
    db.update_run(run_id, device_json=json.dumps(facts.to_dict()))
    db.close()
    supervisor = Supervisor(home, run_id)
    supervisor._prepare()
    return supervisor, run_id


def test_start_rungs_get_the_planners_fastest_plan_with_them(tmp_path):
    """start_rungs [lora] on a CUDA card: the planner's fastest plan with LoRA (bf16 autocast or a bf16 base, not fp32
    math), at the LoRA rate, said in the first attempt's reason; the `created` event says where the shape came from."""
    folder = model_folder(tmp_path, SMOLLM2_135M)
    supervisor, run_id = _prepared(tmp_path / "home", CARD_16GB, model=str(folder), start_rungs=["lora"])
    plan = supervisor.plan
    assert plan.lora and "lora" in plan.rungs and (plan.autocast_dtype == "bf16" or plan.weights_dtype == "bf16")
    assert supervisor.reason.startswith("planner: ") and "(start_rungs: lora)" in supervisor.reason
    assert supervisor.reason.endswith("; peak learning rate 0.0002 for LoRA adapters (lora.learning_rate)")
    created = next(e for e in supervisor.db.events(run_id) if e["kind"] == "created")
    assert f"shape from {folder}/config.json: 30 layers, hidden 576" in created["message"]
    supervisor.db.close()


def test_a_model_the_planner_cannot_shape_escalates_by_measurement_and_says_why(tmp_path):
    """A hub model whose config.json is nowhere on this machine: no planning on the CUDA card, the user's plan first,
    and a planner event naming what is missing."""
    supervisor, run_id = _prepared(tmp_path / "home", CARD_16GB, model="someone/not-cached-anywhere")
    assert supervisor.plan.rungs == () and supervisor.reason == "first plan"
    (event,) = [e for e in supervisor.db.events(run_id) if e["kind"] == "planner"]
    assert (
        "cannot plan this model" in event["message"]
        and "someone/not-cached-anywhere is not on this machine" in event["message"]
    )
    supervisor.db.close()


def test_an_escalation_to_lora_records_the_rate_change(tmp_path):
    """An OOM that the card ladder answers with LoRA: the escalate event and the next attempt's reason say
    `learning rate 0.001 -> 0.0002 for LoRA adapters` (the tiny preset trains at 1e-3), with both rates in its details."""
    script = {"1": {"steps": [1, 2], "end": "oom", "phase": "backward"}, "default": {"steps": [3, 4], "end": "done"}}
    code, run_id, db = supervise(tmp_path, script, {"ladder.mode": "card", "ladder.order": ["lora"]})
    assert code == 0
    (escalate,) = [event for event in db.events(run_id) if event["kind"] == "escalate"]
    assert "learning rate 0.001 -> 0.0002 for LoRA adapters" in escalate["message"]
    (detail,) = details(db, run_id, "escalate")
    assert (detail["old_learning_rate"], detail["new_learning_rate"]) == (1e-3, 2e-4)
    assert db.attempts(run_id)[1]["reason"].endswith("; learning rate 0.001 -> 0.0002 for LoRA adapters")


def test_required_rungs_hold_even_where_a_full_fine_tune_fits():
    """A policy requiring `lora` picks a LoRA plan for the 1B on an 80 GB H100, where its fastest plan is a full
    fine-tune; requiring a rung no plan here can have (fsdp on one process) leaves nothing to pick."""
    from tamer.planner import PlannerPolicy, choose, device_budget

    h100 = DeviceFacts(kind="cuda", name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, bf16=True, fp16=True)
    config, budget = build_config("llama-3.2-1b"), device_budget(h100.total_memory)
    assert not choose(config, h100, budget).plan.lora
    assert choose(config, h100, budget, PlannerPolicy(required_rungs=("lora",))).plan.lora
    assert choose(config, h100, budget, PlannerPolicy(required_rungs=("fsdp",))) is None
