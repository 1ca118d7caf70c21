"""The `gradient_checkpointing` rung: recompute each layer's activations in backward instead of keeping them."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy


@dataclass(frozen=True)
class GradientCheckpointing(Strategy):
    """Activation (gradient) checkpointing: keep only each decoder layer's input in forward.

    Memory: saves the activations inside every layer (~60-70% of activation memory, more at long
    sequences). Cost: ~30% more compute, since backward reruns each layer's forward. The recomputed
    values are the same, so training stays exact; the child can switch it on for a live model.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.gradient_checkpointing and plan.checkpoint_layers is None:
            return "gradient checkpointing is already on"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        # A plan that checkpoints only some layers (the planner's selective checkpointing) gets all of them.
        return plan.with_rung(self.name, gradient_checkpointing=True, checkpoint_layers=None)


STRATEGY = GradientCheckpointing(
    name="gradient_checkpointing",
    summary=(
        "saves the fp32 activations of every layer (~60-70% of activation memory); "
        "costs ~30% more compute (recomputed forward)"
    ),
    changes=("gradient_checkpointing",),
    new_process=False,
    exact=True,
)
