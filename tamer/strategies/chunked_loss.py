"""The `chunked_loss` rung: compute the LM head and cross-entropy over slices of positions, recomputed in backward."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class ChunkedLoss(Strategy):
    """Chunked loss: the head + cross-entropy run over slices of 1,024 positions (tamer/engine/loss.py),
    each slice recomputed in backward, so at most one slice of [positions x vocab] fp32 logits exists.

    Memory: saves the logits peak (about 12 bytes x positions x vocab in backward: log-softmax output,
    its gradient and the gradient of the logits), 1.96 GiB per fp32 copy at 4,096 positions and a
    128k vocabulary. Cost: ~1-3% (the head runs twice); exact up to float rounding (the loss is a sum
    of per-slice sums). With fewer supervised positions than one slice it changes nothing. Not in the
    card ladder: the planner (tamer/planner) picks it when the logits matter.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.chunked_loss:
            return "the loss is already chunked"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, chunked_loss=True)


STRATEGY = ChunkedLoss(
    name="chunked_loss",
    summary=(
        "saves the fp32 logits peak (head + cross-entropy over 1,024-position slices); "
        "costs ~1-3% (head recomputed in backward), exact up to float rounding"
    ),
    changes=("chunked_loss",),
    new_process=False,
    exact=True,
)
