"""The shape of a strategy: a pure `apply(plan) -> plan` plus what it declares about itself.

A strategy never imports torch. It declares its name, a one-line "saves X, costs Y" summary (shown by
`tamer strategies`), the plan fields it changes, its prerequisites (rungs applied together with it when
missing, e.g. 8-bit weights need LoRA) and conflicts, whether the child must restart to apply it, and
whether training stays exact under it. Only the child turns the resulting plan into torch objects.
"""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    changes: tuple[str, ...]
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    new_process: bool = True
    exact: bool = True
    repeatable: bool = False

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        """Why this rung cannot apply to `plan` on this device, or None when it can."""
        if self.name in plan.rungs and not self.repeatable:
            return "already applied"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        """`plan` with this rung applied (and recorded in plan.rungs)."""
        raise NotImplementedError
