"""The planner sizes a chat run on its own data: the token lengths preflight measured go into run.json, and the
supervisor's first plan is the one `tamer plan chat` shows for that data."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tamer.config import build_config
from tamer.recipes.prepare import prepare

# The 1B shape with the bundled tokenizer and chat sample, so that nothing comes from the hub.
SETS = [
    "init=random",
    "tokenizer=bundled",
    "chat_template=chatml",
    "data=bundled",
    "eval_samples=64",
    "gpu_mem_cap=15GiB",
]


def _tamer_plan(monkeypatch, recipe: str) -> dict:
    from tamer import cli

    monkeypatch.setattr("tamer.daemon.probe.nvml_facts", lambda: None)
    sets = [item for value in SETS if recipe == "chat" or "chat" not in value for item in ("--set", value)]
    result = CliRunner().invoke(
        cli.app,
        [
            "plan",
            recipe,
            "--preset",
            "llama-3.2-1b",
            "--gpu-mem",
            "80GiB",
            "--json",
            "--home",
            "/nonexistent-tamer-home",
            *sets,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_supervisor_plans_a_chat_run_on_its_data_as_tamer_plan_shows(tmp_path, monkeypatch):
    """The workload and first plan of a chat run of the 1B shape under a 15 GiB cap are those `tamer plan chat`
    shows: sized on the chat sample's lengths (not SQuAD's), and predicted to fit."""
    from tamer.cli.commands_plan import _device
    from tamer.daemon.supervisor import Supervisor, create_run
    from tamer.state.db import Database
    from tamer.state.home import Home

    shown = _tamer_plan(monkeypatch, "chat")
    squad = _tamer_plan(monkeypatch, "squad")
    assert shown["workload"] != squad["workload"] and shown["chosen"]["fits"] == "yes"
    config = build_config("llama-3.2-1b", options={"recipe": "chat"}, sets=SETS)
    measured = prepare(config).profile
    assert shown["workload"]["supervised_per_sequence"] == measured.max_scored
    home = Home.resolve(tmp_path)
    run_id = create_run(home, config, measured)
    database = Database(home.db_path, create=False)
    database.update_run(run_id, device_json=json.dumps(_device("80GiB", None).to_dict()))
    database.close()
    supervisor = Supervisor(home, run_id)
    supervisor._prepare()
    assert supervisor._workload().__dict__ == {
        **shown["workload"],
        "lora_targets": tuple(shown["workload"]["lora_targets"]),
    }
    assert supervisor.plan.to_dict() == shown["chosen"]["plan"]
