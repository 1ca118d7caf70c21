"""The escalation ladder: after a child's failure, the next plan to try (or none left).

Pure: `next_plan(plan, outcome, facts, order)` walks the user's rung order (default
`tamer.config.CARD_LADDER`) and applies the first rung that can help, together with any rung it
requires that the plan lacks. Prerequisites are applied first, so `plan.rungs` lists every rung after
the rungs it needs (`lora, quantize_8bit`). The order is data from the config; each rung declares its
own applicability, prerequisites and conflicts, so nothing here knows a rung by name.

- A training OOM (cuda_oom / host_oom outside eval) climbs one rung. A repeatable rung
  (split_micro_batch) stays on the ladder until it no longer applies, so with it last in the order
  every other rung is tried first and then the micro-batch halves down to 1.
- An OOM during eval halves only the eval batch: training is untouched.
- Any other outcome restarts the same plan.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tamer.outcome import OOM_KINDS, Outcome
from tamer.plan import DeviceFacts, Plan
from tamer.strategies import registry
from tamer.strategies.base import Strategy

EVAL_BATCH = "eval_batch_size"


@dataclass(frozen=True)
class LadderDecision:
    """What the ladder decided after one failure."""

    plan: Plan | None
    """The plan for the next attempt; None when the ladder is exhausted."""
    applied: list[str] = field(default_factory=list)
    """Rungs applied this time, prerequisites first, in the order applied (or ["eval_batch_size"])."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(rung, reason) for each rung passed over on the way."""
    reason: str = ""
    """One sentence for the event log."""
    escalated: bool = False
    """Whether the next plan saves more memory than this one."""


def next_plan(plan: Plan, outcome: Outcome, facts: DeviceFacts, order: list[str]) -> LadderDecision:
    """The decision after `outcome` ended an attempt under `plan`, climbing rungs in `order`."""
    if outcome.kind not in OOM_KINDS:
        return LadderDecision(plan=plan, reason=f"restart without escalation: {outcome.kind}")
    where = _where(plan, outcome)
    if outcome.phase == "eval":
        return _halve_eval_batch(plan, where)
    skipped: list[tuple[str, str]] = []
    for name in order:
        strategy = registry.get(name)
        blocked = _blocked(strategy, plan, facts, order)
        if blocked:
            skipped.append((name, blocked))
            continue
        chain = _prerequisites(strategy, plan) + [strategy]
        for rung in chain:
            plan = rung.apply(plan, facts)
        applied = [rung.name for rung in chain]
        described = [f"{rung} (prerequisite of {name})" for rung in applied[:-1]] + [name]
        return LadderDecision(
            plan=plan,
            applied=applied,
            skipped=skipped,
            reason=f"{where}: applied {', '.join(described)}",
            escalated=True,
        )
    return LadderDecision(
        plan=None,
        skipped=skipped,
        reason=f"{where}: no rung left to apply (already applied: {_tried(plan)})",
    )


def apply_rung(plan: Plan, name: str, facts: DeviceFacts) -> Plan:
    """`plan` with rung `name` and the prerequisites it lacks applied, for rungs asked for up front
    (config `start_rungs`). Unchanged when the rung cannot apply here, as the ladder would skip it:
    already applied (e.g. lora brought by quantize_8bit), or not on this device."""
    strategy = registry.get(name)
    if _blocked(strategy, plan, facts, registry.names()):
        return plan
    for rung in _prerequisites(strategy, plan) + [strategy]:
        plan = rung.apply(plan, facts)
    return plan


def unusable_rungs(config: Any, facts: DeviceFacts) -> set[str]:
    """Rungs the run's collective backend cannot run on this device: FSDP needs all-gather and reduce-scatter
    of CUDA tensors, which gloo lacks (gloo on CUDA: ranks sharing one GPU, where NCCL refuses)."""
    return {"fsdp"} if config.distributed.backend == "gloo" and facts.kind == "cuda" else set()


def usable_order(config: Any, facts: DeviceFacts) -> list[str]:
    """The config's rung order less `unusable_rungs`."""
    unusable = unusable_rungs(config, facts)
    return [name for name in config.ladder.order if name not in unusable]


def initial_plan(config: Any, facts: DeviceFacts) -> Plan:
    """The user's batch geometry (RunConfig; per process with several) plus its `start_rungs`, each
    with its prerequisites."""
    micro_batch_size, grad_accumulation = config.rank_geometry()
    plan = Plan(
        micro_batch_size=micro_batch_size,
        grad_accumulation=grad_accumulation,
        eval_batch_size=config.eval_batch_size,
        world_size=config.distributed.world_size,
    )
    for name in config.start_rungs:
        plan = apply_rung(plan, name, facts)
    return plan


def for_child(plan: Plan, config: Any) -> Plan:
    """`plan` as handed to the child, with its leave to split the micro-batch in process after an
    activation OOM (`in_process_split_down_to`): in planner mode with `ladder.in_process_split`, with
    split_micro_batch in the order, down to `planner.min_micro_batch`. Never with several processes: they
    must run the same number of micro-batches (the gradient all-reduce), so an OOM on one ends the group
    and the supervisor escalates every rank together."""
    ladder = config.ladder
    allowed = (
        ladder.mode == "planner"
        and ladder.in_process_split
        and "split_micro_batch" in ladder.order
        and plan.world_size == 1
    )
    return plan.replace(in_process_split_down_to=config.planner.min_micro_batch if allowed else None)


def describe_ladder(order: list[str]) -> list[dict[str, Any]]:
    """Each rung of `order` as plain data, for `tamer strategies`."""
    return [
        {
            "name": strategy.name,
            "summary": strategy.summary,
            "changes": list(strategy.changes),
            "requires": list(strategy.requires),
            "conflicts": list(strategy.conflicts),
            "new_process": strategy.new_process,
            "exact": strategy.exact,
            "repeatable": strategy.repeatable,
        }
        for strategy in map(registry.get, order)
    ]


def _where(plan: Plan, outcome: Outcome) -> str:
    """`cuda_oom in backward at micro-batch 8` (`cuda_oom in eval at eval batch 16`): the opening of every reason."""
    phase = f" in {outcome.phase}" if outcome.phase else ""
    if outcome.phase == "eval":  # evaluation runs eval_batch_size sequences at once, not the micro-batch
        return f"{outcome.kind}{phase} at eval batch {plan.eval_batch_size}"
    micro_batch_size = outcome.micro_batch_size or plan.micro_batch_size
    return f"{outcome.kind}{phase} at micro-batch {micro_batch_size}"


def _halve_eval_batch(plan: Plan, where: str) -> LadderDecision:
    if plan.eval_batch_size <= 1:
        return LadderDecision(plan=None, reason=f"{where}: eval batch is already 1, nothing left to halve")
    halved = plan.eval_batch_size // 2
    return LadderDecision(
        plan=plan.replace(eval_batch_size=halved),
        applied=[EVAL_BATCH],
        reason=f"{where}: halved the eval batch {plan.eval_batch_size} -> {halved}",
        escalated=True,
    )


def _conflict(strategy: Strategy, plan: Plan) -> str | None:
    """The applied rung `strategy` conflicts with (declared on either side), or None."""
    for applied in dict.fromkeys(plan.rungs):
        if applied in strategy.conflicts or strategy.name in registry.get(applied).conflicts:
            return applied
    return None


def _blocked(strategy: Strategy, plan: Plan, facts: DeviceFacts, order: list[str]) -> str | None:
    """Why `strategy` cannot be applied now (itself, a conflict or a prerequisite), or None."""
    reason = strategy.not_applicable(plan, facts)
    if reason:
        return reason
    conflicting = _conflict(strategy, plan)
    if conflicting:
        return f"conflicts with {conflicting} (applied)"
    for required in strategy.requires:
        if required in plan.rungs:
            continue
        if required not in order:
            return f"needs {required}, which the ladder order leaves out"
        blocked = _blocked(registry.get(required), plan, facts, order)
        if blocked:
            return f"needs {required}, which cannot apply: {blocked}"
    return None


def _prerequisites(strategy: Strategy, plan: Plan) -> list[Strategy]:
    """The rungs `strategy` requires that `plan` lacks, each after its own prerequisites."""
    chain: list[Strategy] = []
    for required in strategy.requires:
        if required in plan.rungs:
            continue
        prerequisite = registry.get(required)
        for rung in _prerequisites(prerequisite, plan) + [prerequisite]:
            if rung not in chain:
                chain.append(rung)
    return chain


def _tried(plan: Plan) -> str:
    """The rungs in `plan`, repeats counted: `gradient_checkpointing, split_micro_batch x3`."""
    if not plan.rungs:
        return "none"
    counts = Counter(plan.rungs)
    return ", ".join(name if count == 1 else f"{name} x{count}" for name, count in counts.items())
