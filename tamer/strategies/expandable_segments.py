"""The `expandable_segments` rung: let the CUDA caching allocator grow segments instead of fragmenting."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.protocol import ALLOCATOR_VARIABLES
from tamer.strategies.base import Strategy

SETTING = "expandable_segments:True"
# Newer torch reads PYTORCH_ALLOC_CONF and older versions only PYTORCH_CUDA_ALLOC_CONF; set both so
# whichever torch the child imports sees it.
VARIABLES = ALLOCATOR_VARIABLES


@dataclass(frozen=True)
class ExpandableSegments(Strategy):
    """Expandable segments: the allocator maps more memory onto one growing segment per stream.

    Memory: recovers the "reserved by PyTorch but unallocated" memory that fragmentation strands
    (often 5-20% of the card when tensor sizes vary from step to step). Cost: none to the math; a
    little allocator overhead. Read by the allocator at start-up, so the child must restart.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if facts.kind != "cuda":
            return "CPU allocator has no segments"
        if all("expandable_segments" in plan.env.get(variable, "") for variable in VARIABLES):
            return "expandable segments are already set in the plan's environment"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        env = dict(plan.env)
        for variable in VARIABLES:
            # Keep any other allocator options already in the plan (e.g. max_split_size_mb).
            existing = env.get(variable, "")
            if "expandable_segments" not in existing:
                env[variable] = f"{existing},{SETTING}" if existing else SETTING
        return plan.with_rung(self.name, env=env)


STRATEGY = ExpandableSegments(
    name="expandable_segments",
    summary=(
        "saves the memory stranded by allocator fragmentation (reserved but unallocated); "
        "costs nothing to the math, a child restart"
    ),
    changes=("env",),
    new_process=True,
    exact=True,
)
