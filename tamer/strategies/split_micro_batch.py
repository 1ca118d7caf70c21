"""The `split_micro_batch` rung: halve the micro-batch and double accumulation, keeping the effective batch.

The ladder applies it between attempts; `split_in_process` is the same rung applied inside the child,
when the plan allows it (`Plan.in_process_split_down_to`, set by tamer/strategies/ladder.py `for_child`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class SplitMicroBatch(Strategy):
    """Micro-batch split: each optimizer step runs twice as many forward/backward passes of half the size.

    Memory: saves half of activation memory each time it is applied (activations scale with the
    micro-batch). Cost: smaller kernels use the GPU less well, so steps get slower. The loss is
    normalised over the whole effective batch, so only float rounding differs; repeatable down to 1.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.micro_batch_size == 1:
            return "micro-batch is already 1"
        if plan.micro_batch_size % 2:
            return (
                f"micro-batch {plan.micro_batch_size} is odd, so it cannot be halved exactly "
                "without changing the effective batch"
            )
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(
            self.name,
            micro_batch_size=plan.micro_batch_size // 2,
            grad_accumulation=plan.grad_accumulation * 2,
        )


STRATEGY = SplitMicroBatch(
    name="split_micro_batch",
    summary=(
        "saves half of activation memory per split (micro-batch halved, accumulation doubled); "
        "costs throughput (smaller kernels, more passes per step)"
    ),
    changes=("micro_batch_size", "grad_accumulation"),
    new_process=False,
    exact=True,
    repeatable=True,
)


SPLIT_PHASES = ("forward", "backward")
"""Phases whose OOM a smaller micro-batch can cure in process (activations); one in the optimizer or a
checkpoint would come back at any micro-batch."""


def split_in_process(plan: Plan, phase: str | None) -> Plan | None:
    """The plan after halving the micro-batch inside the child, after a CUDA OOM in `phase`, when `plan`
    allows it (its `in_process_split_down_to`) and the micro-batch halves exactly that far; None: the OOM
    ends the child and the supervisor decides."""
    floor = plan.in_process_split_down_to
    if floor is None or phase not in SPLIT_PHASES or plan.micro_batch_size // 2 < floor:
        return None
    if STRATEGY.not_applicable(plan, None) is not None:
        return None
    return STRATEGY.apply(plan, None)
