"""What happened to a run, computed from the database: every failure with what it cost and what the
ladder did about it (`failures`, behind `tamer history`), and a run's timeline with its settled plan
and totals (`timeline`, for `tamer show` and `tamer report`).

Definitions (also in docs/looking-back.md):
- time lost to a failure: from the failed attempt's end until training first gets past the step the
  failed attempt had reached (restart, setup, redone steps), cut at the next failure or stop so that
  no second is counted twice;
- steps lost: steps the failed attempt completed that a later attempt redid from a checkpoint;
- time training: the first computation of each optimizer step (`step_time`); a redone step is lost time.
An OOM the child recovered from itself (`in_process_split`: micro-batch halved, same step retried) is a
failure too, with its own row: its time lost is its step's work up to the retry (steps lost 0), and
the plan in force from then on is the split one.
Pure queries, no torch.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamer.errors import ConfigError
from tamer.outcome import parse_oom_message
from tamer.plan import Plan
from tamer.protocol import HEARTBEAT, HEARTBEAT_PHASES, IN_STEP_PHASES, OUTCOME_KINDS, attempt_dir
from tamer.state import queries
from tamer.state.db import Database

# Outcomes that are not failures: shown by `tamer history` only when asked for with --kind.
NOT_FAILURES = ("done", "stopped")
IN_PROCESS_SPLIT = "in_process_split"
# The outcome of an in-process split: the child catches only torch.OutOfMemoryError there.
IN_PROCESS_OUTCOME = "cuda_oom"
SNAPSHOT_VIEWER_HINT = (
    "view a memory snapshot by dropping the file on https://pytorch.org/memory_viz, or offline: "
    "python -m torch.cuda._memory_viz trace_plot SNAPSHOT -o snapshot.html"
)
_SINCE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)\s*$")
_SINCE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> float:
    """Seconds in `30m`, `12h`, `2d` or `1w`; a ConfigError otherwise."""
    match = _SINCE.match(text)
    if not match:
        raise ConfigError(f"--since '{text}': not a duration; write a number and a unit: 30m, 12h, 2d or 1w")
    return float(match.group(1)) * _SINCE_SECONDS[match.group(2)]


def parse_kinds(text: str) -> list[str]:
    """Outcome kinds from `cuda_oom,host_oom`; a ConfigError names an unknown one."""
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in OUTCOME_KINDS]
    if unknown or not kinds:
        raise ConfigError(
            f"--kind '{text}': unknown outcome {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(OUTCOME_KINDS)}"
        )
    return kinds


def _json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


@dataclass
class RunRows:
    """One run's rows, loaded once: attempts in order, steps in wall-clock order, events with parsed detail."""

    run: dict[str, Any]
    attempts: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @classmethod
    def load(cls, db: Database, run_id: str) -> RunRows:
        run = db.run(run_id)
        steps = queries.step_timeline(db, run["id"])
        events = [{**event, "detail": _json(event["detail_json"])} for event in db.events(run["id"])]
        return cls(run, db.attempts(run["id"]), steps, events)

    def event(self, kind: str, attempt: int) -> dict[str, Any] | None:
        """The detail of the last event of `kind` written by `attempt`."""
        matches = [event["detail"] for event in self.events if event["kind"] == kind and event["attempt"] == attempt]
        return matches[-1] if matches else None

    def resumed_from(self, attempt: int) -> int | None:
        """The checkpoint step `attempt` resumed from: 0 when it started afresh, None before it started training."""
        resume = self.event("resume", attempt)
        if resume is not None:
            return int(resume["step"])
        return 0 if self.event("start", attempt) is not None else None


def last_heartbeat(run: dict[str, Any], attempt: int) -> str | None:
    """The phase rank 0 of `attempt` last reported in its heartbeat file (`phase first_step`), if any:
    what a child killed without a word (SIGKILL) was doing."""
    try:
        phase = (attempt_dir(Path(run["run_dir"]), attempt) / HEARTBEAT).read_text().split()[0]
    except (OSError, IndexError, TypeError):
        return None
    return phase if phase in HEARTBEAT_PHASES else None


def where_it_ended(rows: RunRows, attempt: dict[str, Any]) -> tuple[str | None, int | None, int]:
    """(phase, step, last step reached) of an ended attempt: from its report, else from its last
    heartbeat. The step is None when it never began training (killed while loading)."""
    detail = _json(attempt["detail_json"])
    failed = attempt["outcome"] not in NOT_FAILURES
    phase = attempt["phase"] or (last_heartbeat(rows.run, attempt["attempt"]) if failed else None)
    reached = attempt["last_step"] if attempt["last_step"] is not None else (attempt["resumed_from_step"] or 0)
    if detail.get("step") is not None:
        return phase, detail["step"], reached
    began = rows.event("start", attempt["attempt"]) is not None or rows.event("resume", attempt["attempt"]) is not None
    if phase == "load" or not began:
        return phase, None, reached
    # In-step phases: the failed step was under way; after the others the last completed step is the one meant.
    return phase, reached + 1 if phase in IN_STEP_PHASES or phase is None else reached, reached


def _is_failure(attempt: dict[str, Any], kinds: list[str] | None) -> bool:
    if attempt["ended_at"] is None or attempt["outcome"] is None:
        return False
    return attempt["outcome"] in kinds if kinds else attempt["outcome"] not in NOT_FAILURES


def _micro_batch_in_force(rows: RunRows, attempt: dict[str, Any]) -> int | None:
    """The micro-batch an attempt was running when it ended without saying (a SIGKILL): its plan's,
    or the last one it split down to in process."""
    split = splits(rows, attempt)
    plan = split[-1][1] if split else json.loads(attempt["plan_json"] or "{}")
    return plan.get("micro_batch_size")


def _failure(rows: RunRows, attempt: dict[str, Any], now: float) -> dict[str, Any]:
    """One failed attempt: where it failed, what came next, and what it cost."""
    number = attempt["attempt"]
    detail = _json(attempt["detail_json"])
    later = [other for other in rows.attempts if other["attempt"] > number]
    next_attempt = later[0] if later else None
    escalation = rows.event("escalate", number)
    if escalation is not None:
        applied = list(escalation.get("applied") or [])
    else:
        applied = json.loads(next_attempt["rungs_applied"] or "[]") if next_attempt else []
    if next_attempt is None:
        recovery = "pending" if rows.run["status"] == "running" else f"none (run {rows.run['status']})"
    else:
        recovery = "escalated" if applied else "restarted with the same plan"

    own_steps = {row["step"] for row in rows.steps if row["attempt"] == number}
    redone = {row["step"] for row in rows.steps if row["attempt"] > number and row["step"] in own_steps}

    failed_at = attempt["ended_at"]
    phase, step, reached = where_it_ended(rows, attempt)
    # The next failure or stop ends this failure's window: its own row counts the time after it.
    cut = next(
        (other["ended_at"] for other in later if other["ended_at"] is not None and other["outcome"] != "done"), None
    )
    progress = next(
        (row["wall_time"] for row in rows.steps if row["wall_time"] > failed_at and row["step"] > reached), None
    )
    recovered_at = progress if progress is not None and (cut is None or progress <= cut) else None
    window_end = recovered_at or cut or rows.run["ended_at"] or now
    snapshot = rows.event("memory_snapshot", number)
    restart = rows.event("restart", number) or {}
    return {
        "run_id": rows.run["id"],
        "attempt": number,
        "in_process": False,
        "failed_at": failed_at,
        "outcome": attempt["outcome"],
        "phase": phase,
        # The step it failed in: from its report, else from its heartbeat; None before training began.
        "step": step,
        "reached_step": reached,
        "micro_batch_size": attempt["micro_batch_size"] or _micro_batch_in_force(rows, attempt),
        "tried_to_allocate": (detail.get("sizes") or {}).get("tried_to_allocate"),
        "peak_allocated": attempt["peak_allocated"],
        "peak_reserved": attempt["peak_reserved"],
        "peak_host_rss": detail.get("peak_host_rss"),
        "recovery": recovery,
        # Same-plan restarts: `outside kill` (never counted toward giving up) or `crash`, and the wait before it.
        "restart_cause": restart.get("cause"),
        "waited_seconds": restart.get("wait_seconds"),
        "rungs_applied": applied,
        "next_plan": next_attempt["plan_summary"] if next_attempt else None,
        "next_resumed_from_step": rows.resumed_from(next_attempt["attempt"]) if next_attempt else None,
        "steps_lost": len(redone),
        "time_lost_seconds": max(0.0, window_end - failed_at),
        "recovered_at": recovered_at,
        "message": attempt["message"],
        "memory_snapshot": snapshot.get("path") if snapshot else None,
    }


def splits(rows: RunRows, attempt: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The in-process splits of `attempt`, oldest first, each as (its event, the plan dict in force after it)."""
    plan = json.loads(attempt["plan_json"] or "{}")
    out = []
    for event in rows.events:
        if event["kind"] != IN_PROCESS_SPLIT or event["attempt"] != attempt["attempt"]:
            continue
        old, new = int(event["detail"]["old_micro_batch"]), int(event["detail"]["new_micro_batch"])
        plan = {
            **plan,
            "micro_batch_size": new,
            "grad_accumulation": int(plan.get("grad_accumulation", 1)) * old // new,
            "rungs": [*plan.get("rungs", []), "split_micro_batch"],
        }
        out.append((event, plan))
    return out


def describe_plan(plan: dict[str, Any], fallback: str | None) -> str | None:
    """A plan dict as `Plan.describe()` words; `fallback` when the dict is not a whole plan."""
    try:
        return Plan.from_dict(plan).describe()
    except TypeError:
        return fallback


def _in_process_failures(rows: RunRows, attempt: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per OOM the child recovered from by halving its micro-batch: where, what it tried to
    allocate, and the work of the step thrown away (its start until the retry began)."""
    number = attempt["attempt"]
    own_steps = [row for row in rows.steps if row["attempt"] == number]
    out = []
    for event, plan_after in splits(rows, attempt):
        detail = event["detail"]
        step = int(detail["step"])
        failed_at = float(detail.get("failed_at") or event["time"])
        done = next((row for row in own_steps if row["step"] == step), None)
        before = [row["wall_time"] for row in own_steps if row["step"] < step]
        if done is not None and done["step_time"] is not None:
            started = done["wall_time"] - done["step_time"]
        else:
            started = max(before) if before else failed_at
        error = detail.get("error") or ""
        out.append(
            {
                "run_id": rows.run["id"],
                "attempt": number,
                "in_process": True,
                "failed_at": failed_at,
                "outcome": IN_PROCESS_OUTCOME,
                "phase": detail.get("phase"),
                "step": step,
                "reached_step": step - 1,
                "micro_batch_size": detail["old_micro_batch"],
                "tried_to_allocate": parse_oom_message(error).get("tried_to_allocate"),
                "peak_allocated": None,
                "peak_reserved": None,
                "peak_host_rss": None,
                "recovery": "split in process",
                "rungs_applied": ["split_micro_batch"],
                "next_plan": describe_plan(plan_after, None),
                "next_resumed_from_step": None,
                "steps_lost": 0,
                "time_lost_seconds": max(0.0, event["time"] - started),
                "recovered_at": done["wall_time"] if done is not None else None,
                "message": event["message"],
                "memory_snapshot": None,
            }
        )
    return out


def _all_failures(rows: RunRows, now: float, kinds: list[str] | None) -> list[dict[str, Any]]:
    """The failed attempts and the in-process recoveries of one run, oldest first."""
    found = [_failure(rows, attempt, now) for attempt in rows.attempts if _is_failure(attempt, kinds)]
    if kinds is None or IN_PROCESS_OUTCOME in kinds:
        for attempt in rows.attempts:
            found.extend(_in_process_failures(rows, attempt))
    return sorted(found, key=lambda row: row["failed_at"])


def failures(
    db: Database, run_id: str | None = None, since_seconds: float | None = None, kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every failed attempt (or every attempt ending in one of `kinds`) of one run or of all runs,
    oldest first, ended within the last `since_seconds` if given."""
    now = time.time()
    run_ids = [db.run(run_id)["id"]] if run_id else [run["id"] for run in db.runs()]
    rows_out: list[dict[str, Any]] = []
    for each_run in run_ids:
        rows = RunRows.load(db, each_run)
        rows_out.extend(
            row
            for row in _all_failures(rows, now, kinds)
            if since_seconds is None or row["failed_at"] >= now - since_seconds
        )
    return sorted(rows_out, key=lambda row: row["failed_at"])


def _median_rate(rows: RunRows, attempt: int) -> float | None:
    rates = sorted(
        row["tokens"] / row["step_time"]
        for row in rows.steps
        if row["attempt"] == attempt and row["tokens"] and row["step_time"]
    )
    return rates[len(rates) // 2] if rates else None


def deescalations_of(rows: RunRows) -> list[dict[str, Any]]:
    """Each step back to a faster plan: when, from which attempt to which, why, and tokens/s on the
    squeezed plan against the plan stepped back to (its gain, once the next attempt has trained)."""
    found = []
    for event in (event for event in rows.events if event["kind"] == "deescalate"):
        detail, stopped = event["detail"], event["attempt"]
        following = next((a for a in rows.attempts if a["attempt"] > stopped), None)
        during = _median_rate(rows, stopped)
        after = _median_rate(rows, following["attempt"]) if following else None
        found.append(
            {
                "run_id": rows.run["id"],
                "time": event["time"],
                "attempt": stopped,
                "next_attempt": following["attempt"] if following else None,
                "from_plan": next((a["plan_summary"] for a in rows.attempts if a["attempt"] == stopped), None),
                "to_plan": following["plan_summary"] if following else None,
                "reason": detail.get("reason"),
                "tokens_per_s_before_squeeze": detail.get("tokens_per_s_before_squeeze"),
                "tokens_per_s_squeezed": during,
                "tokens_per_s_after": after,
                "gain": after / during if after and during else None,
            }
        )
    return found


def deescalations(db: Database, run_id: str | None = None, since_seconds: float | None = None) -> list[dict[str, Any]]:
    """Every step back (de-escalation) of one run or of all runs, oldest first."""
    now = time.time()
    run_ids = [db.run(run_id)["id"]] if run_id else [run["id"] for run in db.runs()]
    found = [row for each in run_ids for row in deescalations_of(RunRows.load(db, each))]
    return sorted(
        (row for row in found if since_seconds is None or row["time"] >= now - since_seconds),
        key=lambda row: row["time"],
    )


def timeline(db: Database, run_id: str) -> dict[str, Any]:
    """A run from start to end: attempts with their plans and outcomes, the failures with their cost,
    the settled plan (the last attempt's, as its steps ran after any in-process split), totals, and final and best validation loss."""
    now = time.time()
    rows = RunRows.load(db, run_id)
    run = rows.run
    failure_rows = _all_failures(rows, now, None)
    plans_after = {attempt["attempt"]: splits(rows, attempt) for attempt in rows.attempts}
    attempts = [
        {
            "attempt": attempt["attempt"],
            "started_at": attempt["started_at"],
            "ended_at": attempt["ended_at"],
            "seconds": (attempt["ended_at"] or now) - attempt["started_at"],
            "plan_summary": attempt["plan_summary"],
            # The plan its last steps ran with: the one it started with unless it split in process.
            "plan_at_end": (
                describe_plan(plans_after[attempt["attempt"]][-1][1], attempt["plan_summary"])
                if plans_after[attempt["attempt"]]
                else attempt["plan_summary"]
            ),
            "splits_in_process": [
                {
                    "step": event["detail"]["step"],
                    "phase": event["detail"].get("phase"),
                    "micro_batch_size": plan["micro_batch_size"],
                    "grad_accumulation": plan["grad_accumulation"],
                }
                for event, plan in plans_after[attempt["attempt"]]
            ],
            "rungs_applied": json.loads(attempt["rungs_applied"] or "[]"),
            "reason": attempt["reason"],
            "resumed_from_step": rows.resumed_from(attempt["attempt"]),
            "last_step": attempt["last_step"],
            "outcome": attempt["outcome"],
            "phase": where_it_ended(rows, attempt)[0] if attempt["ended_at"] is not None else attempt["phase"],
            "micro_batch_size": attempt["micro_batch_size"],
            "message": attempt["message"],
        }
        for attempt in rows.attempts
    ]

    first_computation: dict[int, dict[str, Any]] = {}
    latest: dict[int, dict[str, Any]] = {}
    for row in rows.steps:
        first_computation.setdefault(row["step"], row)
        if row["step"] not in latest or row["attempt"] >= latest[row["step"]]["attempt"]:
            latest[row["step"]] = row
    wall = ((run["ended_at"] or now) - run["started_at"]) if run["started_at"] else 0.0
    # A step retried in process timed its thrown-away work too: that part is lost, not training.
    thrown_away = sum(
        row["time_lost_seconds"] for row in failure_rows if row["in_process"] and row["recovered_at"] is not None
    )
    training = max(0.0, sum(row["step_time"] or 0.0 for row in first_computation.values()) - thrown_away)
    lost = sum(row["time_lost_seconds"] for row in failure_rows)
    totals = {
        "attempts": len(attempts),
        "failures": len(failure_rows),
        "recovered_in_process": sum(1 for row in failure_rows if row["in_process"]),
        "steps": len(latest),
        "total_steps": run["total_steps"],
        "samples": run["samples_consumed"],
        "tokens": sum(row["tokens"] or 0 for row in latest.values()),
        "steps_redone": len(rows.steps) - len(latest),
        "wall_seconds": wall,
        "training_seconds": training,
        "lost_seconds": lost,
        # Setup, tokenizing, checkpoints and evaluation: neither training nor lost.
        "other_seconds": max(0.0, wall - training - lost),
    }

    settled = None
    if rows.attempts:
        last = rows.attempts[-1]
        plan = json.loads(last["plan_json"])
        summary = last["plan_summary"]
        if plans_after[last["attempt"]]:
            plan = plans_after[last["attempt"]][-1][1]
            summary = describe_plan(plan, summary)
        settled = {
            "attempt": last["attempt"],
            "summary": summary,
            "rungs": plan.get("rungs", []),
            "settled": run["status"] == "done",
            "plan": plan,
        }
    # A run that ended (a crash-loop give-up, a stop) and was then resumed (`tamer resume`, the daemon):
    # each ending with the resume that followed it, which the run's final status alone would hide.
    endings = {"failed": "failed", "stopped": "stopped", "finish": "done"}
    reopened = []
    for index, event in enumerate(rows.events):
        if event["kind"] in endings:
            resume = next((later for later in rows.events[index + 1 :] if later["kind"] == "resume_run"), None)
            if resume is not None:
                reopened.append(
                    {
                        "status": endings[event["kind"]],
                        "ended_at": event["time"],
                        "reason": event["message"],
                        "resumed_at": resume["time"],
                    }
                )
    best = queries.best_eval(db, run["id"])
    return {
        "run": {
            key: run[key]
            for key in (
                "id",
                "recipe",
                "preset",
                "status",
                "created_at",
                "started_at",
                "ended_at",
                "total_steps",
                "steps_done",
                "failure_reason",
            )
        },
        "attempts": attempts,
        "resumed_after": reopened,
        "failures": failure_rows,
        "deescalations": deescalations_of(rows),
        "settled_plan": settled,
        "totals": totals,
        "final_loss": run["final_loss"],
        "final_eval_loss": run["final_eval_loss"],
        "best_eval_loss": run["best_eval_loss"],
        "best_eval_step": best["step"] if best else None,
    }
