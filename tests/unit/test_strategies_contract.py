"""The contract every strategy keeps, checked over every rung the registry finds (none listed by hand)."""

from __future__ import annotations

import ast
import dataclasses
import inspect

import pytest

from tamer.config import CARD_LADDER
from tamer.plan import DeviceFacts, Plan
from tamer.strategies import registry

STRATEGIES = registry.all_strategies()
PLAN_FIELDS = {field.name for field in dataclasses.fields(Plan)}
CUDA = DeviceFacts(kind="cuda", name="H100", bf16=True, fp16=True, bitsandbytes=True)
each_strategy = pytest.mark.parametrize("strategy", list(STRATEGIES.values()), ids=list(STRATEGIES))


def fresh_plan() -> Plan:
    """A full fine-tune on two processes, so every rung (fsdp included) has something to act on."""
    return Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8, world_size=2)


def test_registry_finds_every_card_rung():
    """Every rung of the card ladder is found by the registry under its file name."""
    assert set(CARD_LADDER) <= set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert inspect.getmodule(strategy).__name__ == f"tamer.strategies.{name}"


@each_strategy
def test_summary_says_what_it_saves_and_costs(strategy):
    """The summary is one line saying what the rung saves and what it costs."""
    assert "saves" in strategy.summary and "costs" in strategy.summary
    assert "\n" not in strategy.summary


@each_strategy
def test_class_has_its_own_docstring(strategy):
    """The strategy class documents its memory effect and cost (not dataclass's generated signature)."""
    doc = type(strategy).__doc__ or ""
    assert doc and not doc.startswith(f"{type(strategy).__name__}(")
    assert doc != inspect.getdoc(type(strategy).__mro__[1])


@each_strategy
def test_changes_are_plan_fields(strategy):
    """Every declared change names a real Plan field, and the rung declares at least one."""
    assert strategy.changes
    assert set(strategy.changes) <= PLAN_FIELDS - {"rungs"}


@each_strategy
def test_requires_and_conflicts_name_known_rungs(strategy):
    """Prerequisites and conflicts name rungs the registry knows, never the rung itself."""
    for name in (*strategy.requires, *strategy.conflicts):
        assert name in STRATEGIES and name != strategy.name


@each_strategy
def test_applies_to_a_fresh_plan_on_cuda(strategy):
    """Every rung can apply to a fresh full-fine-tuning plan on a capable GPU."""
    assert strategy.not_applicable(fresh_plan(), CUDA) is None


@each_strategy
def test_apply_changes_only_declared_fields(strategy):
    """apply() changes the declared fields (each of them) and rungs, and nothing else."""
    plan = fresh_plan()
    result = strategy.apply(plan, CUDA)
    changed = {name for name in PLAN_FIELDS if getattr(result, name) != getattr(plan, name)}
    assert changed == set(strategy.changes) | {"rungs"}


@each_strategy
def test_apply_records_its_name(strategy):
    """apply() appends the rung's name to plan.rungs."""
    plan = fresh_plan().replace(rungs=("earlier",))
    assert strategy.apply(plan, CUDA).rungs == ("earlier", strategy.name)


@each_strategy
def test_apply_leaves_its_input_alone(strategy):
    """apply() is pure: the plan passed in (including its env dict) is unchanged."""
    plan = fresh_plan().replace(env={"KEEP": "1"})
    before = plan.to_dict()
    strategy.apply(plan, CUDA)
    assert plan.to_dict() == before


@each_strategy
def test_apply_keeps_the_effective_batch(strategy):
    """No rung changes the user's effective batch."""
    plan = fresh_plan()
    assert strategy.apply(plan, CUDA).effective_batch_size == plan.effective_batch_size


@each_strategy
def test_rung_stops_applying(strategy):
    """A one-shot rung does not apply to its own result; a repeatable one stops within a few repeats."""
    plan = strategy.apply(fresh_plan(), CUDA)
    repeats = 1
    while strategy.not_applicable(plan, CUDA) is None:
        assert strategy.repeatable, "a non-repeatable rung applied twice"
        plan = strategy.apply(plan, CUDA)
        repeats += 1
        assert repeats <= 16
    assert isinstance(strategy.not_applicable(plan, CUDA), str)


@each_strategy
def test_module_does_not_import_torch(strategy):
    """The rung's module imports no torch (nor anything under it): plans stay plain data."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(strategy)))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name == "torch" or name.startswith("torch.") for name in imported)


def test_checkpointing_rung_extends_selective_checkpointing_to_every_layer():
    """A plan checkpointing only some layers can still take the checkpointing rung, which checkpoints them all."""
    strategy = registry.get("gradient_checkpointing")
    selective = fresh_plan().replace(gradient_checkpointing=True, checkpoint_layers=4)
    assert strategy.not_applicable(selective, CUDA) is None
    assert strategy.apply(selective, CUDA).checkpoint_layers is None
    assert (
        strategy.not_applicable(selective.replace(checkpoint_layers=None), CUDA)
        == "gradient checkpointing is already on"
    )
