"""The `paged_adamw_8bit` rung: keep AdamW state in 8 bits, in pages the driver can evict to host memory."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.plan import DeviceFacts, Plan
from tamer.strategies.base import Strategy

OPTIMIZER = "paged_adamw_8bit"


@dataclass(frozen=True)
class PagedAdamW8bit(Strategy):
    """Paged 8-bit AdamW (bitsandbytes): block-wise quantised moments in unified memory.

    Memory: saves ~75% of optimizer state (2 bytes per trained parameter instead of 8), and its
    pages move to host memory under pressure instead of failing. Cost: quantised moments change the
    updates slightly, and paging stalls steps when it happens. The optimizer state is rebuilt.
    """

    def not_applicable(self, plan: Plan, facts: DeviceFacts) -> str | None:
        reason = super().not_applicable(plan, facts)
        if reason:
            return reason
        if plan.optimizer == OPTIMIZER:
            return f"the optimizer is already {OPTIMIZER}"
        if not facts.bitsandbytes:
            return "bitsandbytes is not usable on this device"
        return None

    def apply(self, plan: Plan, facts: DeviceFacts) -> Plan:
        return plan.with_rung(self.name, optimizer=OPTIMIZER)


STRATEGY = PagedAdamW8bit(
    name="paged_adamw_8bit",
    summary=(
        "saves ~75% of optimizer-state memory (8-bit moments, paged to host under pressure); "
        "costs slightly different updates and stalls while paging"
    ),
    changes=("optimizer",),
    new_process=False,
    exact=False,
)
