"""The planner policy is declared once (the config's `planner` and `ladder.order`): `tamer plan` and the
supervisor both plan through tamer/planner/planning.py's Planner; `tamer plan`'s flags override the config."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tamer.config import build_config
from tamer.errors import ConfigError
from tamer.planner.candidates import PlannerPolicy

# Without checkpointing and LoRA in the config, the 1B model needs another plan at 15 GiB than the default
# policy's (checked below, so that the comparison can fail).
SETS = [
    "planner.allow_lora=false",
    "ladder.order=[expandable_segments, mixed_precision, paged_adamw_8bit, split_micro_batch]",
    "gpu_mem_cap=15GiB",
]


def _tamer_plan(monkeypatch, *arguments: str) -> dict:
    from tamer import cli

    monkeypatch.setattr("tamer.daemon.probe.nvml_facts", lambda: None)
    sets = [item for value in SETS for item in ("--set", value)]
    result = CliRunner().invoke(
        cli.app,
        [
            "plan",
            "squad",
            "--preset",
            "llama-3.2-1b",
            "--gpu-mem",
            "80GiB",
            "--json",
            "--home",
            "/nonexistent-tamer-home",
            *sets,
            *arguments,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_policy_comes_from_the_config():
    """from_config carries every planner knob and allows exactly ladder.order plus chunked_loss."""
    config = build_config("llama-3.2-1b", sets=SETS + ["planner.min_micro_batch=2", "planner.safety_margin=0.2"])
    policy = PlannerPolicy.from_config(config)
    assert (policy.allow_lora, policy.min_micro_batch, policy.safety_margin) == (False, 2, 0.2)
    assert policy.rungs == (
        "expandable_segments",
        "mixed_precision",
        "paged_adamw_8bit",
        "split_micro_batch",
        "chunked_loss",
    )


def test_the_planner_fits_a_squeezed_budget_and_never_repeats_a_failed_plan():
    """Planner.choose (the one entry the supervisor and `tamer plan` use): under a smaller budget (other processes
    hold part of the card) it picks a plan predicted to fit that budget; a failed plan is never chosen again."""
    from tamer.plan import DeviceFacts
    from tamer.planner.candidates import plan_key, usable_bytes
    from tamer.planner.planning import Planner

    facts = DeviceFacts(
        kind="cuda",
        name="H100",
        total_memory=80 * 2**30,
        compute_capability=(9, 0),
        bf16=True,
        fp16=True,
        bitsandbytes=True,
    )
    planner = Planner.for_run(build_config("llama-3.2-1b"), facts)
    roomy = planner.choose()
    squeezed = planner.choose(budget=16 * 2**30)
    assert roomy is not None and squeezed is not None
    assert (
        squeezed.predicted.reserved <= usable_bytes(16 * 2**30, planner.policy.safety_margin) < roomy.predicted.reserved
    )
    again = planner.choose(failed=[roomy.plan])
    assert again is not None and plan_key(again.plan) != plan_key(roomy.plan)


def test_tamer_plan_flags_override_the_config(monkeypatch):
    """--safety-margin sets planner.safety_margin (as --set does) over the config's; a bad value gets the key's message."""
    from_config = _tamer_plan(monkeypatch)["usable"]
    from_flag = _tamer_plan(monkeypatch, "--safety-margin", "0.5")["usable"]
    assert from_flag < from_config
    assert _tamer_plan(monkeypatch, "--set", "planner.safety_margin=0.5")["usable"] == from_flag
    with pytest.raises(ConfigError, match="planner.safety_margin: must be in \\[0, 1\\), got 1.5"):
        build_config("llama-3.2-1b", options={"planner.safety_margin": 1.5})


def test_a_resumed_run_holds_only_training_ooms_against_their_plans(tmp_path):
    """`tamer resume` rebuilds the policy state from the attempts as the live policy keeps it: an OOM in eval
    halved the eval batch and says nothing against the training plan."""
    from tamer.daemon.supervisor import Supervisor, create_run
    from tamer.plan import DeviceFacts, Plan
    from tamer.state.db import Database
    from tamer.state.home import Home

    home = Home.resolve(tmp_path)
    run_id = create_run(home, build_config("tiny", sets=["device=cpu"]))
    database = Database(home.db_path, create=False)
    database.update_run(
        run_id, device_json=json.dumps(DeviceFacts(kind="cpu", name="cpu", total_memory=2**34).to_dict())
    )
    plans = {
        1: Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8),
        2: Plan(micro_batch_size=4, grad_accumulation=2, eval_batch_size=8),
    }
    for number, phase in ((1, "eval"), (2, "backward")):
        database.insert_attempt(
            {
                "run_id": run_id,
                "attempt": number,
                "plan_json": json.dumps(plans[number].to_dict()),
                "plan_summary": plans[number].describe(),
                "rungs_applied": "[]",
                "reason": "test",
                "started_at": 1000.0 + number,
                "resumed_from_step": 0,
            }
        )
        database.update_attempt(
            run_id,
            number,
            ended_at=1000.5 + number,
            outcome="host_oom",
            phase=phase,
            last_step=1,
            message="out of memory",
            detail_json=json.dumps({"phase": phase}),
        )
    database.close()
    supervisor = Supervisor(home, run_id)
    supervisor._prepare()
    assert supervisor.state.failed_plans == (plans[2],)
    assert [hint["plan"] for hint in supervisor.state.oom_hints] == [plans[2].to_dict()]


def test_the_supervisor_knows_its_childs_managed_memory(tmp_path):
    """De-escalation counts a paged optimizer's moments as ours (squeeze.our_share): the planner's estimate
    says how many bytes live in CUDA managed memory, ~2 bytes per parameter of the 1B model; none for AdamW."""
    from tamer.daemon.supervisor import Supervisor, create_run
    from tamer.plan import Plan
    from tamer.state.home import Home

    home = Home.resolve(tmp_path)
    supervisor = Supervisor(home, create_run(home, build_config("llama-3.2-1b")))
    plain = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
    paged = plain.replace(optimizer="paged_adamw_8bit")
    assert supervisor._managed_bytes(plain) == 0
    assert (
        2.3e9 < supervisor._managed_bytes(paged) < 2.5e9
    )  # 1.236 B parameters x 2 moments x 1 byte, the small ones left out
