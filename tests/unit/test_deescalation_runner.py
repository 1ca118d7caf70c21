"""The supervisor's de-escalation runner on a real database and a fake card (TAMER_FAKE_CARD), no processes:
an in-process micro-batch split under a squeeze is remembered as the unsplit plan's squeeze, the step back
asks the child to stop and restarts that plan, and an OOM after the step back holds the plan off."""

from __future__ import annotations

import json
import os
import time

import pytest

from tamer.config import DeescalateConfig, RunConfig
from tamer.daemon.card import FAKE_CARD_ENV, read_card
from tamer.daemon.deescalation import Deescalation
from tamer.outcome import Outcome, parse_oom_message
from tamer.plan import Plan
from tamer.planner.candidates import plan_key
from tamer.protocol import STOP_FILE
from tamer.state.db import Database

RUN_ID = "squad-20260101-000000-cafe"
GIB = 1024**3
STARTED = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
SPLIT = STARTED.replace(micro_batch_size=4, grad_accumulation=2)
OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 40.00 GiB of which 1.00 GiB is free. "
    "Including non-PyTorch memory, this process has 8.50 GiB memory in use."
)
CHILD = 777
SQUEEZED = {
    "total": "40GiB",
    "free": "1GiB",
    "processes": [{"pid": 4242, "used": "30GiB"}, {"pid": CHILD, "used": "9GiB"}],
}
EMPTY = {"total": "40GiB", "free": "39GiB", "processes": []}


def child() -> set[int]:
    return {CHILD}


@pytest.fixture
def runner(tmp_path, monkeypatch):
    card = tmp_path / "card.json"
    card.write_text(json.dumps(SQUEEZED))
    monkeypatch.setenv(FAKE_CARD_ENV, str(card))
    db = Database(tmp_path / "tamer.db")
    db.insert_run(
        {
            "id": RUN_ID,
            "recipe": "squad",
            "preset": "tiny",
            "status": "running",
            "config_json": "{}",
            "run_dir": str(tmp_path),
            "created_at": time.time(),
            "steps_done": 0,
            "samples_consumed": 0,
        }
    )
    db.insert_attempt(
        {
            "run_id": RUN_ID,
            "attempt": 1,
            "plan_json": STARTED.to_json(),
            "plan_summary": STARTED.describe(),
            "rungs_applied": "[]",
            "reason": "",
            "started_at": time.time(),
        }
    )
    db.event(RUN_ID, "in_process_split", "micro-batch halved", attempt=1, error=OOM_TEXT)
    db.insert_step(
        {
            "run_id": RUN_ID,
            "attempt": 1,
            "step": 1,
            "samples_consumed": 8,
            "loss": 1.0,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens": 100,
            "tokens_per_s": 100.0,
            "step_time": 1.0,
            "micro_batch_size": 4,
            "grad_accumulation": 2,
            "wall_time": time.time(),
            "sample_ids": "[]",
        }
    )
    config = RunConfig(deescalate=DeescalateConfig(poll_seconds=0.01))
    attempt_dir = tmp_path / "attempts" / "1"
    attempt_dir.mkdir(parents=True)
    (attempt_dir / "plan.json").write_text(SPLIT.to_json())
    yield Deescalation(db, RUN_ID, tmp_path, config, predicted_peak=lambda plan: None), card, attempt_dir
    db.close()


def test_an_in_process_split_under_a_squeeze_steps_back_to_the_unsplit_plan(runner):
    """The split is remembered as a squeeze of the plan the attempt started with (measured from the OOM text);
    once the card empties the child is asked to stop and that unsplit plan comes back."""
    deescalation, card, attempt_dir = runner
    squeeze = deescalation.split(1, attempt_dir, STARTED, child)
    assert (
        squeeze is not None and squeeze.plan == STARTED.to_dict() and squeeze.others == 30 * GIB
    )  # 39 used less our 9
    assert squeeze.measured == 10 * GIB  # 8.5 GiB in use less the 0.5 GiB context, plus the 2 GiB asked for
    assert deescalation.split(1, attempt_dir, STARTED, child) is None  # nothing new: no second squeeze
    time.sleep(0.02)
    assert deescalation.poll(1, attempt_dir, child) is None and not (attempt_dir / STOP_FILE).exists()
    card.write_text(
        json.dumps({**EMPTY, "processes": [{"pid": CHILD, "used": "9GiB"}]})
    )  # the other job left; ours trains on
    time.sleep(0.02)
    decision = deescalation.poll(1, attempt_dir, child)
    assert decision is not None and (attempt_dir / STOP_FILE).exists()
    assert "gone: pid 4242" in decision.reason and "still there" not in decision.reason, (
        decision.reason
    )  # our child is not a squeezer
    plan, _, detail = deescalation.take(1)
    assert plan == STARTED and deescalation.squeezes == [] and detail["steps_back_to_this_plan"] == 1


def test_splitting_again_in_one_attempt_renews_the_squeeze_without_a_second_report(runner):
    """8 -> 4 -> 2 under one squeeze (seen on an H200: three identical `squeeze` events): the second split
    renews the remembered reading but returns nothing, so the supervisor records one event per attempt."""
    deescalation, card, attempt_dir = runner
    assert deescalation.split(1, attempt_dir, STARTED, child) is not None
    card.write_text(
        json.dumps({**SQUEEZED, "processes": [{"pid": 4242, "used": "34GiB"}, {"pid": CHILD, "used": "5GiB"}]})
    )
    (attempt_dir / "plan.json").write_text(SPLIT.replace(micro_batch_size=2, grad_accumulation=4).to_json())
    os.utime(
        attempt_dir / "plan.json", (time.time() + 5, time.time() + 5)
    )  # a later change, whatever the clock's grain
    assert deescalation.split(1, attempt_dir, STARTED, child) is None
    assert len(deescalation.squeezes) == 1 and deescalation.squeezes[0].others == 34 * GIB  # the newer reading


def test_an_oom_after_the_step_back_holds_the_plan_off(runner):
    """After stepping back, another OOM of that plan sets a not-before time `deescalate.backoff` ahead and says so."""
    deescalation, card, attempt_dir = runner
    deescalation.split(1, attempt_dir, STARTED, child)
    card.write_text(json.dumps(EMPTY))
    time.sleep(0.02)
    deescalation.poll(1, attempt_dir, child)
    deescalation.take(1)
    said = deescalation.oom(STARTED, None)
    record = next(iter(deescalation.records.values()))
    assert "ran out of memory again after a step back" in said
    assert record.ooms_after_step_back == 1 and record.not_before >= time.time() + 599
    assert deescalation.oom(STARTED, None) == ""  # a second OOM is no longer one right after a step back


def test_an_exit_oom_after_a_split_squeeze_keeps_one_squeeze_of_the_plan(runner):
    """A split under a squeeze and then the attempt's own OOM exit (split down to the minimum) leave one squeeze of the unsplit plan."""
    deescalation, _, attempt_dir = runner
    deescalation.split(1, attempt_dir, STARTED, child)
    card = read_card()
    deescalation.oom(STARTED, card)
    deescalation.escalated(
        1, STARTED, Outcome("cuda_oom", "out of memory", phase="backward", sizes=parse_oom_message(OOM_TEXT)), card
    )
    assert [squeeze.key for squeeze in deescalation.squeezes] == [plan_key(STARTED)]


def test_a_split_is_no_squeeze_when_nvml_does_not_list_our_child(runner):
    """Without NVML listing our child (a container's pid namespace) its share is unknown: no squeeze is guessed."""
    deescalation, _, attempt_dir = runner
    assert deescalation.split(1, attempt_dir, STARTED, lambda: {12345}) is None and deescalation.squeezes == []
