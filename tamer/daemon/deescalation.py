"""The supervisor's de-escalation runner: it keeps a run's squeezes, reads the card while an escalated
plan trains, and turns the decisions of squeeze.py into a stop file and the plan to step back to.

The supervisor calls `oom(...)` after each training CUDA OOM (before the next plan is chosen: a squeeze
shrinks the planner's budget to what the others left), `escalated(...)` once the next plan is known,
`poll(...)` from its watch loop, and `take(...)` when the child stopped for a step back. A plan is the
one its attempt started with: a child that halved its micro-batch in process (planner mode) and went on
is seen in `poll` (its `plan.json` changed), and a squeeze then steps back to the unsplit plan. The
squeezes and each plan's step-back record live in `runs/<id>/squeeze.json`, so `tamer resume` keeps them.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tamer.daemon.card import CardView, read_card
from tamer.daemon.squeeze import (
    PlanRecord,
    Squeeze,
    StepBackDecision,
    after_oom_again,
    after_step_back,
    budget_now,
    choose_step_back,
    measured_need,
    others_holding,
    our_share,
    squeeze_at_oom,
)
from tamer.outcome import Outcome, parse_oom_message
from tamer.plan import Plan
from tamer.planner.candidates import cap_budget, plan_key
from tamer.protocol import PLAN_FILE, STOP_FILE
from tamer.state import queries
from tamer.state.checkpoints import write_json_atomic
from tamer.state.db import Database
from tamer.units import format_size


class Deescalation:
    """One run's squeezes, step-back records and the step back in progress, for its supervisor."""

    def __init__(
        self, db: Database, run_id: str, run_dir: Path, config: Any, predicted_peak: Callable[[Plan], int | None]
    ) -> None:
        self.db = db
        self.run_id = run_id
        self.knobs = config.deescalate
        self.min_squeeze = self.knobs.min_squeeze
        self.cap_budget = cap_budget(config.gpu_mem_cap)
        self.safety_margin = config.planner.safety_margin
        self.predicted_peak = predicted_peak
        self.path = run_dir / "squeeze.json"
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.squeezes = [Squeeze(**squeeze) for squeeze in saved.get("squeezes", [])]
        self.records = {key: PlanRecord(**record) for key, record in saved.get("records", {}).items()}
        self.stepped_back: Squeeze | None = None
        """The squeeze whose plan the current attempt returned to (an OOM of it holds that plan off)."""
        self.pending: StepBackDecision | None = None
        """Decided during the current attempt: the child was asked to stop."""
        self.squeezed_budget: int | None = None
        """Device bytes the others left at the last OOM, while the next plan is chosen."""
        self.others_at_oom: int | None = None
        self.polled = 0.0
        self.split_seen: tuple[int, float] | None = None
        self.split_reported: int | None = None
        """The attempt whose split squeeze was last returned: a further split of it updates the reading silently."""

    # --- at an OOM ------------------------------------------------------------------------------

    def oom(self, plan: Plan, card: CardView | None) -> str:
        """After a training OOM of an attempt that started with `plan`: hold the plan off when it was stepped
        back to, and note whether others squeezed it. Returns a sentence for the escalation event ('' when
        nothing to say)."""
        again = self._oom_again(plan)
        said = [again] if again else []
        self.others_at_oom = squeeze_at_oom(card, self.min_squeeze) if card is not None else None
        self.squeezed_budget = (
            budget_now(card, self.others_at_oom, self.cap_budget) if card and self.others_at_oom else None
        )
        if card is not None:
            said.append(
                f"other processes held {format_size(card.used)} of the card's {format_size(card.total)}"
                + (
                    ": a squeeze" + (", tamer steps back when it passes" if self.knobs.enabled else "")
                    if self.others_at_oom
                    else ""
                )
            )
        return "; ".join(said)

    def escalated(self, number: int, failed: Plan, outcome: Outcome, card: CardView | None) -> Squeeze | None:
        """The next plan is chosen: remember the squeeze (when it was one) so that `poll` can step back."""
        others, self.squeezed_budget = self.others_at_oom, None
        if not (self.knobs.enabled and others and card is not None):
            return None
        return self._remember(number, failed, outcome.sizes, outcome.memory_stats, card, others)

    def _remember(
        self,
        number: int,
        failed: Plan,
        sizes: dict[str, int],
        memory_stats: dict[str, Any],
        card: CardView,
        others: int,
        ours: frozenset[int] | set[int] = frozenset(),
    ) -> Squeeze:
        """`ours`: our live child's processes (an in-process split), which are not among those who squeezed."""
        key = plan_key(failed)
        attempts = self._attempts_of(key)
        processes = [{"pid": p.pid, "used": p.used, "name": p.name} for p in card.processes if p.pid not in ours]
        squeeze = Squeeze(
            plan=failed.to_dict(),
            key=key,
            predicted=self.predicted_peak(failed),
            measured=measured_need(sizes, memory_stats, self._peak_reserved(attempts)),
            others=others,
            attempt=number,
            processes=processes,
            tokens_per_s=self.median_tokens_per_s(attempts),
        )
        same = [index for index, earlier in enumerate(self.squeezes) if earlier.key == key]
        if same:  # squeezed again before stepping back (a split that went on, then an OOM): the newer reading
            self.squeezes[same[0]] = squeeze
        else:
            self.squeezes.append(squeeze)
        self._save()
        return squeeze

    def _oom_again(self, plan: Plan) -> str:
        """An attempt that started with `plan` ran out of memory: when it was stepped back to, hold it off for
        a growing while and say so; '' otherwise. Either way the step back is over."""
        stepped_back, self.stepped_back = self.stepped_back, None
        key = plan_key(plan)
        if stepped_back is None or stepped_back.key != key:
            return ""
        record = after_oom_again(
            self.records.get(key, PlanRecord()), time.time(), self.knobs.backoff, self.knobs.backoff_max
        )
        self.records[key] = record
        self._save()
        return f"it ran out of memory again after a step back: no step back to it for {record.not_before - time.time():.0f} s"

    def split(
        self, number: int, attempt_dir: Path, started: Plan, child_pids: Callable[[], set[int]], managed: int = 0
    ) -> Squeeze | None:
        """A child that halved its micro-batch in process and went on (its `plan.json` changed): when others
        held the card then, remember the squeeze of the plan it started with and return it the first time for
        this attempt (a split again, 4 -> 2 -> 1, only renews the reading). Cheap when nothing changed."""
        try:
            changed = (number, (attempt_dir / PLAN_FILE).stat().st_mtime)
        except OSError:
            return None
        if changed == self.split_seen or not self.knobs.enabled:
            return None
        self.split_seen = changed
        self._oom_again(started)
        card = read_card()
        ours = child_pids()
        # Our child is alive and its share must be known exactly: memory PyTorch does not count (paged
        # optimizer states, workspaces) would pass for another job's. Without NVML listing it, no squeeze.
        if card is None or not any(process.pid in ours and process.used is not None for process in card.processes):
            return None
        others = others_holding(card, our_share(card, ours, None, managed))
        if others < self.min_squeeze:
            return None
        splits = queries.in_process_split_details(self.db, self.run_id, number)
        sizes = parse_oom_message(splits[0].get("error", "")) if splits else {}
        squeeze = self._remember(number, started, sizes, {}, card, others, ours)
        if self.split_reported == number:
            return None
        self.split_reported = number
        return squeeze

    # --- while training on an escalated plan ----------------------------------------------------

    def poll(
        self, number: int, attempt_dir: Path, child_pids: Callable[[], set[int]], managed: int = 0
    ) -> StepBackDecision | None:
        """Every `poll_seconds` once the attempt trains: when a squeezed plan fits again, ask the child to
        stop at the next step boundary (it checkpoints) and return the decision. `managed`: the child's
        CUDA managed bytes (paged optimizer state; see squeeze.our_share)."""
        now = time.monotonic()
        if (
            not (self.knobs.enabled and self.squeezes)
            or self.pending is not None
            or now - self.polled < self.knobs.poll_seconds
        ):
            return None
        self.polled = now
        reserved = self._last_reserved(number)
        if reserved is None:
            return None  # not training yet: its memory is not settled
        card = read_card()
        if card is None:
            return None
        ours = our_share(card, child_pids(), reserved[0], managed)
        decision = choose_step_back(
            self.squeezes,
            card,
            ours,
            self.cap_budget,
            self.safety_margin,
            self.records,
            time.time(),
            self.knobs.max_per_plan,
            self.min_squeeze,
        )
        if decision is not None:
            self.pending = decision
            (attempt_dir / STOP_FILE).touch()
        return decision

    def take(self, number: int) -> tuple[Plan, StepBackDecision, dict[str, Any]]:
        """The child stopped for the pending step back: the plan to restart with, the decision, and the
        detail of the `deescalate` event."""
        decision, self.pending = self.pending, None
        assert decision is not None
        squeeze = decision.squeeze
        self.squeezes = self.squeezes[: decision.index]
        self.records[squeeze.key] = after_step_back(self.records.get(squeeze.key, PlanRecord()))
        self.stepped_back = squeeze
        self._save()
        detail = {
            "reason": decision.reason,
            "squeeze": squeeze.to_dict(),
            "others_now": decision.others_now,
            "budget": decision.budget,
            "tokens_per_s_before_squeeze": squeeze.tokens_per_s,
            "tokens_per_s_squeezed": self.median_tokens_per_s([number]),
            "steps_back_to_this_plan": self.records[squeeze.key].steps_back,
        }
        return Plan.from_dict(squeeze.plan), decision, detail

    def drop_pending(self) -> None:
        """The child ended otherwise (done, failed, stopped by the user) before stepping back."""
        self.pending = None

    # --- measurements from the database ---------------------------------------------------------

    def _attempts_of(self, key: str) -> list[int]:
        return [
            a["attempt"]
            for a in self.db.attempts(self.run_id)
            if plan_key(Plan.from_dict(json.loads(a["plan_json"]))) == key
        ]

    def _peak_reserved(self, attempts: list[int]) -> int | None:
        if not attempts:
            return None
        peaks = [
            a["peak_reserved"] for a in self.db.attempts(self.run_id) if a["attempt"] in attempts and a["peak_reserved"]
        ]
        known = [value for value in [queries.highest_reserved(self.db, self.run_id, attempts), *peaks] if value]
        return max(known) if known else None

    def median_tokens_per_s(self, attempts: list[int]) -> float | None:
        if not attempts:
            return None
        rates = queries.tokens_per_second(self.db, self.run_id, attempts)
        return statistics.median(rates) if rates else None

    def _last_reserved(self, number: int) -> tuple[int | None] | None:
        """(PyTorch's reserved bytes at the attempt's last step,), or None before its first step."""
        return queries.last_step_reserved(self.db, self.run_id, number)

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "squeezes": [squeeze.to_dict() for squeeze in self.squeezes],
                "records": {key: vars(record) for key, record in self.records.items()},
            },
        )
