"""De-escalation: after an OOM that other processes on the card caused (a squeeze), step back to the
faster plan once their memory is back. Pure decisions from card readings (card.py); the supervisor
records a `Squeeze` at such an OOM, asks `choose_step_back(...)` every `deescalate.poll_seconds` while it
trains on the escalated plan, and acts (a stop at the next step boundary, one checkpoint, a restart under
the better plan).

- A squeeze: right after the OOM (our child is gone, so all that is used is someone else's) other
  processes held at least `deescalate.min_squeeze`. An OOM on an empty card is the plan's own: no squeeze.
- What the better plan needs: the planner's predicted peak when it has the model's shape, and what was
  measured (its earlier attempts' peaks; at the OOM, what PyTorch held plus what it asked for).
- Room again: the card's total minus what others hold now (used minus our child's share), capped as the
  child is (`gpu_mem_cap`), covers the prediction with the planner's safety margin kept free, and the
  measurement without it (the plan ran at that peak before: a margin on a measurement would rule out a
  plan that trained fine at 13.9 of 15 GiB).
- Hysteresis: a plan that OOMs again after a step back waits `deescalate.backoff` (doubling per such OOM)
  before the next step back to it, and is stepped back to at most `deescalate.max_per_plan` times a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tamer.daemon.card import CardView
from tamer.daemon.restarts import backoff
from tamer.planner.candidates import usable_bytes, within_cap
from tamer.planner.estimate import CUDA_CONTEXT_BYTES
from tamer.units import format_size


@dataclass(frozen=True)
class Squeeze:
    """An escalation caused by other processes: the plan left behind, what it needs, who held the card."""

    plan: dict[str, Any]
    """The better plan (Plan.to_dict()) to step back to."""
    key: str
    """Its identity for the hysteresis (planner.plan_key)."""
    predicted: int | None
    """The planner's predicted peak reserved bytes for the better plan; None without a planner."""
    measured: int | None
    """The least it was measured to need (allocator bytes); None when nothing told. Neither known: the card must empty."""
    others: int
    """Bytes other processes held right after the OOM."""
    attempt: int
    """The attempt that ran out of memory."""
    processes: list[dict[str, Any]] = field(default_factory=list)
    """The other processes NVML listed then ({pid, used, name})."""
    tokens_per_s: float | None = None
    """The better plan's median throughput before the squeeze, when it had trained."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlanRecord:
    """A plan's step-back history in this run."""

    steps_back: int = 0
    ooms_after_step_back: int = 0
    not_before: float = 0.0
    """No step back to it before this time (epoch seconds)."""


@dataclass(frozen=True)
class StepBackDecision:
    """The decision to step back to `squeeze.plan`, dropping the squeezes from `index` on."""

    squeeze: Squeeze
    index: int
    reason: str
    others_now: int
    budget: int


def others_holding(view: CardView, ours: int) -> int:
    """Bytes that processes other than our child hold on the card: everything used, less our share."""
    return max(0, view.used - ours)


def our_share(view: CardView, our_pids: set[int], reported_reserved: int | None, managed: int = 0) -> int:
    """Our child's bytes on the card: what NVML lists for its processes, else what its last step
    reported (PyTorch's reserved memory plus the CUDA context), else 0 (others then look bigger: safe);
    plus its CUDA managed memory (`managed`: a paged optimizer's moments) as far as the card's used memory
    leaves it unattributed. NVML counts resident managed memory in the card's use but in no process's
    (seen on an H200, 2026-12-03: 3.0 GiB of "others" on an empty card; pynvml#63, nvtop#213): without
    this a 1B full fine-tune's ~2.5 GB of paged moments would pass for another job's memory on a 16 GB
    card, and the run would never step back."""
    listed = [process.used for process in view.processes if process.pid in our_pids and process.used is not None]
    share = sum(listed) if listed else (reported_reserved + CUDA_CONTEXT_BYTES if reported_reserved else 0)
    unattributed = max(0, view.used - sum(process.used for process in view.processes if process.used is not None))
    return share + min(managed, unattributed)


def squeeze_at_oom(view: CardView | None, min_squeeze: int) -> int | None:
    """Bytes others held right after an OOM (the child is dead: all the used memory is theirs), when that
    is a squeeze (at least `min_squeeze`); None otherwise or without a reading."""
    if view is None:
        return None
    return view.used if view.used >= min_squeeze else None


def measured_need(sizes: dict[str, int], memory_stats: dict[str, Any], earlier_peak: int | None) -> int | None:
    """The least the failed plan needs, in allocator bytes: its earlier attempts' peak, and at the OOM what
    PyTorch held (the process's use less the CUDA context) plus what it asked for. None when nothing says."""
    held = None
    if sizes.get("process_in_use") is not None:
        held = max(0, sizes["process_in_use"] - CUDA_CONTEXT_BYTES)
    elif sizes.get("reserved_total") is not None:
        held = sizes["reserved_total"]
    elif memory_stats.get("peak_reserved"):
        held = int(memory_stats["peak_reserved"])
    at_oom = held + sizes.get("tried_to_allocate", 0) if held is not None else None
    known = [value for value in (at_oom, earlier_peak) if value]
    return max(known) if known else None


def budget_now(view: CardView, others: int, cap_budget: int | None) -> int:
    """Device bytes a new child could use now: the card less what others hold, and no more than its cap."""
    return within_cap(view.total - others, cap_budget)


def choose_step_back(
    squeezes: list[Squeeze],
    view: CardView,
    ours: int,
    cap_budget: int | None,
    safety_margin: float,
    records: dict[str, PlanRecord],
    now: float,
    max_per_plan: int,
    min_squeeze: int,
) -> StepBackDecision | None:
    """The best plan to step back to now (the earliest squeeze whose plan fits again), or None."""
    others = others_holding(view, ours)
    budget = budget_now(view, others, cap_budget)
    usable = usable_bytes(budget, safety_margin)
    present = {process.pid for process in view.processes}
    for index, squeeze in enumerate(squeezes):
        record = records.get(squeeze.key, PlanRecord())
        if record.steps_back >= max_per_plan or now < record.not_before:
            continue
        if not _fits(squeeze, usable, budget - CUDA_CONTEXT_BYTES, others, min_squeeze):
            continue
        gone = [str(p["pid"]) for p in squeeze.processes if p["pid"] not in present]
        still = [str(p["pid"]) for p in squeeze.processes if p["pid"] in present]
        needs = (
            [
                f"{format_size(squeeze.predicted)} predicted (of {format_size(usable)} usable with the {safety_margin:.0%} margin)"
            ]
            if squeeze.predicted is not None
            else []
        ) + ([f"{format_size(squeeze.measured)} measured"] if squeeze.measured else [])
        need = f"it needs {' and '.join(needs)}" if needs else "its need is unknown and the card is empty"
        whose = (f"; gone: pid {', '.join(gone)}" if gone else "") + (
            f"; still there: pid {', '.join(still)}" if still else ""
        )
        reason = (
            f"the squeeze of attempt {squeeze.attempt} is over: other processes hold {format_size(others)} "
            f"(were {format_size(squeeze.others)}), {format_size(budget)} available; {need}{whose}"
        )
        return StepBackDecision(squeeze, index, reason, others, budget)
    return None


def _fits(squeeze: Squeeze, usable: int, limit: int, others: int, min_squeeze: int) -> bool:
    """The prediction within the margin, the measurement within the budget; neither known: others gone."""
    if squeeze.predicted is None and squeeze.measured is None:
        return others < min_squeeze
    return (squeeze.predicted is None or squeeze.predicted <= usable) and (
        squeeze.measured is None or squeeze.measured <= limit
    )


def after_step_back(record: PlanRecord) -> PlanRecord:
    return dataclasses.replace(record, steps_back=record.steps_back + 1)


def after_oom_again(record: PlanRecord, now: float, first_wait: float, longest_wait: float) -> PlanRecord:
    """A plan stepped back to ran out of memory again: hold it off for a growing while."""
    ooms = record.ooms_after_step_back + 1
    return dataclasses.replace(
        record, ooms_after_step_back=ooms, not_before=now + backoff(ooms, first_wait, longest_wait)
    )
