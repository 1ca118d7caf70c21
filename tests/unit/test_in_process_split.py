"""The in-process micro-batch split is decided on the supervisor's side: the ladder gives the child's
plan its leave (`in_process_split_down_to`), and the child only asks `split_in_process` what to do."""

from __future__ import annotations

import pytest

from tamer.config import LadderConfig, PlannerConfig, RunConfig
from tamer.plan import Plan
from tamer.planner.candidates import plan_key
from tamer.strategies.ladder import for_child
from tamer.strategies.split_micro_batch import split_in_process

PLAN = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)


def config(**ladder: object) -> RunConfig:
    return RunConfig(ladder=LadderConfig(**{"mode": "planner", **ladder}), planner=PlannerConfig(min_micro_batch=2))


def test_planner_mode_gives_the_child_leave_down_to_the_planners_smallest_micro_batch():
    """In planner mode, with in_process_split on and split_micro_batch in the order, one process may split down to min_micro_batch."""
    assert for_child(PLAN, config()).in_process_split_down_to == 2


@pytest.mark.parametrize(
    "setting, plan",
    [
        ({"mode": "card"}, PLAN),
        ({"in_process_split": False}, PLAN),
        ({"order": ["gradient_checkpointing"]}, PLAN),
        ({}, PLAN.replace(micro_batch_size=4, world_size=2)),
    ],
    ids=["card-mode", "switched-off", "rung-not-allowed", "several-processes"],
)
def test_no_leave_without_every_condition(setting, plan):
    """Card mode, the switch off, split_micro_batch left out of the order, or several processes: the OOM ends the child."""
    assert for_child(plan, config(**setting)).in_process_split_down_to is None


def test_leave_is_taken_back_when_the_config_no_longer_gives_it():
    """A plan carried over from an attempt that had leave loses it when handed to a child under a config without it."""
    assert for_child(PLAN.replace(in_process_split_down_to=1), config(mode="card")).in_process_split_down_to is None


def test_the_child_halves_only_in_forward_or_backward_and_not_past_the_floor():
    """With leave down to 2: 8 -> 4 -> 2 in forward or backward, then no further; never in the optimizer or eval."""
    plan = PLAN.replace(in_process_split_down_to=2)
    halved = split_in_process(plan, "backward")
    assert (halved.micro_batch_size, halved.grad_accumulation, halved.rungs) == (4, 2, ("split_micro_batch",))
    again = split_in_process(halved, "forward")
    assert again.micro_batch_size == 2 and again.effective_batch_size == plan.effective_batch_size
    assert split_in_process(again, "forward") is None
    assert split_in_process(plan, "optimizer") is None and split_in_process(plan, "eval") is None


def test_no_split_without_leave_or_with_an_odd_micro_batch():
    """A plan without leave, or with an odd micro-batch (not exactly halvable), is not split."""
    assert split_in_process(PLAN, "backward") is None
    assert split_in_process(PLAN.replace(micro_batch_size=3, in_process_split_down_to=1), "backward") is None


def test_leave_does_not_change_what_a_plan_trains():
    """plan_key ignores the leave: a failed plan still rules out the planner's identical candidate."""
    assert plan_key(for_child(PLAN, config())) == plan_key(PLAN)


def test_a_split_drops_the_checkpointing_table_by_size():
    """The table by size gives short rows fewer checkpointed layers: kept after a split, it would spend the
    memory the halved micro-batch frees (an OOM says its sizes did not fit). The split plan checkpoints the
    plan's own layers at every size (every rung drops the table: Plan.with_rung)."""
    plan = PLAN.replace(
        in_process_split_down_to=2,
        gradient_checkpointing=True,
        checkpoint_layers=8,
        checkpoint_layers_by_tokens=((2112, 0), (3072, 4)),
    )
    assert plan.checkpointed_for(1000, 16) == 0
    halved = split_in_process(plan, "backward")
    assert halved.checkpoint_layers_by_tokens == () and halved.checkpointed_for(1000, 16) == 8
