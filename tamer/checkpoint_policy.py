"""How often to checkpoint when `checkpoint_every: auto`: the rule, and how `tamer show` tells it.

The child measures its first save (the stall of the training loop, and the background write) and the
run's failure rate so far, then calls `choose_interval`. The rule (Young/Daly): with a save costing C
seconds of training and a mean time between failures M, the interval that loses least in expectation is
sqrt(2 C M). It is then held inside two bounds: at most `MAX_AT_RISK_SECONDS` of work between saves
(what a failure can cost), and at least C / `MAX_OVERHEAD` (saves take at most 2% of training); where
the two conflict the 2% bound wins, since its cost is certain and a failure's is not. The interval is
also never shorter than a background write, so saves do not queue. No torch here: `tamer show` reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
MAX_OVERHEAD = 0.02
"""Saves may take at most this fraction of training time."""
MAX_AT_RISK_SECONDS = 600.0
"""At most this much training between saves (what a failure can cost)."""
FIRST_SAVE_SECONDS = 30.0
"""Under `auto`, the first save of an attempt comes this long after it started training (or after a
failed save): early, since it measures what a save costs, and in the background it costs well under 1 s."""
INTERVAL_EVENT = "checkpoint_interval"
NOT_FAILURES = ("done", "stopped", "cuda_oom", "host_oom")
"""Attempt outcomes that do not count as failures for the rate (OOMs end in a new plan, not a lost machine)."""


@dataclass(frozen=True)
class Interval:
    steps: int
    seconds: float
    reason: str


def choose_interval(
    stall_seconds: float, write_seconds: float, step_seconds: float, mtbf_seconds: float | None
) -> Interval:
    """The checkpoint interval, in steps and seconds, with the bound that decided it.

    `stall_seconds`: training time one save costs; `write_seconds`: its background write (0 when
    synchronous); `step_seconds`: one optimizer step; `mtbf_seconds`: observed mean time between
    failures of this run (None: no failure yet)."""
    young = math.sqrt(2 * stall_seconds * mtbf_seconds) if mtbf_seconds else math.inf
    seconds, reason = (
        young,
        f"Young/Daly sqrt(2 x {stall_seconds:.2f} s stall x {mtbf_seconds or 0:.0f} s between failures)",
    )
    if seconds > MAX_AT_RISK_SECONDS:
        seconds = MAX_AT_RISK_SECONDS
        reason = f"at most {MAX_AT_RISK_SECONDS / 60:.0f} min of work at risk" + (
            "" if mtbf_seconds else " (no failure seen yet)"
        )
    overhead_floor = stall_seconds / MAX_OVERHEAD
    if seconds < overhead_floor:
        seconds, reason = (
            overhead_floor,
            f"saves at most {MAX_OVERHEAD:.0%} of training ({stall_seconds:.2f} s stall per save)",
        )
    if seconds < write_seconds:
        seconds, reason = write_seconds, f"no shorter than a background write ({write_seconds:.1f} s)"
    steps = max(1, round(seconds / step_seconds)) if step_seconds > 0 else 1
    return Interval(steps, steps * step_seconds, reason)


def mean_time_between_failures(attempts: list[dict[str, Any]], now: float) -> float | None:
    """Seconds of attempts per failure over a run's finished attempts (None: no failure yet)."""
    failures = sum(1 for a in attempts if a.get("outcome") and a["outcome"] not in NOT_FAILURES)
    if not failures:
        return None
    exposure = sum(max(0.0, _or(a.get("ended_at"), now) - _or(a.get("started_at"), now)) for a in attempts)
    return max(exposure, 1.0) / failures


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def interval_in_force(events: list[dict[str, Any]]) -> str | None:
    """What `tamer show` prints: the newest interval event's message, or None before any."""
    chosen = [e for e in events if e.get("kind") == INTERVAL_EVENT]
    return chosen[-1]["message"] if chosen else None
