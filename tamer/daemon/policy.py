"""The supervisor's decisions after each attempt, as pure functions: this side decides, runs nothing.

The supervisor (supervisor.py) runs an attempt (runner.py starts and watches the process), records its
end, then asks `Policy.decide(state, ended, ...)` what to do next and acts on the answer: finish the
run (`Done`, `Fail`, `Stop`), or start the next attempt (`Restart` the same plan after a wait, `Escalate`
to a plan that saves memory, `StepBack` to the faster plan a squeeze had pushed it off). Nothing here
touches the database, the files, the clock or a process: the planner is injected as a callable, the
attempt's facts come in as values, and the bookkeeping comes in and goes out as a `PolicyState`. So
every case is tested in milliseconds (tests/unit/test_policy.py).

What it holds:
- the order of the answers: done; a stop tamer asked for to step back; the user's stop; a failure a
  restart cannot fix (bad config, data, model, a file-size limit); a full disk (wait for space, same
  plan); else the next plan;
- the next plan after an OOM: the planner's pick (planner mode on CUDA: the injected callable), else
  the ladder (strategies/ladder.py); a ladder with nothing left fails the run. An OOM in eval never
  asks the planner and never counts as a failed plan: the ladder halves the eval batch alone;
- for a same-plan restart, the accounting of restarts.py: crashes count toward `max_restarts` (a
  healthy attempt, `healthy_seconds` from its first step to its end, resets that budget) and toward the
  crash-loop guard (the same failure at the same step `crash_loop_limit` times in a row with no
  progress); outside kills count toward neither and wait on their own backoff, which progress resets.
The counters start afresh with each supervisor (`tamer resume` too), as the failed plans do not: those
are the run's whole history, for the planner to exclude.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tamer.daemon.restarts import OUTSIDE_KILL, restart_policy
from tamer.errors import EXIT_FAILED, EXIT_OK, EXIT_STOPPED_INT, EXIT_STOPPED_TERM, EXIT_STORAGE
from tamer.outcome import Outcome
from tamer.plan import DeviceFacts, Plan
from tamer.planner.candidates import plan_key
from tamer.strategies import ladder

Planner = Callable[[tuple[Plan, ...], tuple[dict[str, Any], ...]], Any]
"""(plans that ran out of memory, their OOM hints) -> the planner's Choice (`.plan`, `.reason`), or None
when no plan is predicted to fit with the margin."""


@dataclass(frozen=True)
class Limits:
    """The config's knobs that bound restarts (see RunConfig for each one's meaning)."""

    max_restarts: int
    crash_loop_limit: int
    healthy_seconds: float
    restart_backoff: float
    restart_backoff_max: float
    kill_backoff: float
    kill_backoff_max: float

    @classmethod
    def from_config(cls, config: Any) -> Limits:
        return cls(**{name.name: getattr(config, name.name) for name in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Ended:
    """The attempt that just ended, as the supervisor recorded it."""

    number: int
    outcome: Outcome
    plan: Plan
    """The plan it ended with: a child that halved its micro-batch in process ends with the halved plan."""
    last_step: int | None = None
    """The last optimizer step it completed (None: none)."""
    first_step_at: float | None = None
    ended_at: float | None = None
    reported_exit_code: int | None = None
    """The exit code the child's report asks for (a config, data or model error's)."""


@dataclass(frozen=True)
class PolicyState:
    """The bookkeeping the decisions need, carried from one attempt's end to the next."""

    crash_restarts: int = 0
    """Counted failures since the supervisor started (or since the last healthy attempt's, which counts 1)."""
    outside_kills: int = 0
    """Outside kills in a row, since the last attempt that made progress."""
    best_step: int = -1
    loop_signature: tuple[Any, ...] | None = None
    loop_count: int = 0
    failed_plans: tuple[Plan, ...] = ()
    """Plans that ran out of memory: the planner excludes them."""
    oom_hints: tuple[dict[str, Any], ...] = ()
    """Each training OOM's outcome and plan: the planner steers by what it measured."""


@dataclass(frozen=True)
class Done:
    """The run finished."""

    exit_code: int = EXIT_OK


@dataclass(frozen=True)
class Fail:
    """The run cannot go on: `reason` for the run's failure_reason, `exit_code` for the process."""

    reason: str
    exit_code: int = EXIT_FAILED
    out_of_memory: bool = False
    """Nothing left to try after an OOM: the supervisor adds the highest memory it saw."""


@dataclass(frozen=True)
class Stop:
    """The user stopped the run (or the child stopped on request): `exit_code` 130 after SIGINT, else 143."""

    exit_code: int


@dataclass(frozen=True)
class Restart:
    """The same plan again after `wait_seconds`."""

    plan: Plan
    reason: str
    wait_seconds: float
    counted: bool
    """Whether it counts toward max_restarts and the crash-loop guard (an outside kill does not)."""
    cause: str
    """`crash` or `outside kill` (restarts.py)."""
    accounting: str
    """How it was counted, for the restart event: ` (restart 2 of max_restarts 10)`."""


@dataclass(frozen=True)
class WaitForSpace:
    """The disk is full: wait for space (the supervisor polls it, up to `disk_full_wait`), then the same plan.
    A restart into a full disk would only fail again, and a new plan saves no disk."""

    plan: Plan
    reason: str


@dataclass(frozen=True)
class Escalate:
    """A plan that saves memory, at once: waiting would not make the old one fit."""

    plan: Plan
    applied: list[str]
    skipped: list[tuple[str, str]]
    reason: str


@dataclass(frozen=True)
class StepBack:
    """Back to the faster plan a squeeze pushed the run off, at once (de-escalation)."""

    plan: Plan
    reason: str


Action = Done | Fail | Stop | Restart | WaitForSpace | Escalate | StepBack


@dataclass(frozen=True)
class PendingStepBack:
    """A step back decided while the attempt trained (deescalation.py): the child was asked to stop."""

    plan: Plan
    key: str
    """plan_key of that plan: its OOM no longer excludes it."""
    reason: str


@dataclass(frozen=True)
class Policy:
    """The run's fixed inputs to every decision."""

    limits: Limits
    facts: DeviceFacts
    order: list[str]
    """The ladder's rung order (config ladder.order)."""
    planner: Planner | None = None
    """The planner, when it steers this run (planner mode on CUDA); None: the ladder alone."""

    def decide(
        self,
        state: PolicyState,
        ended: Ended,
        *,
        stop_signal: int | None = None,
        step_back: PendingStepBack | None = None,
        squeezed: bool = False,
    ) -> tuple[Action, PolicyState]:
        """What to do after `ended`, and the bookkeeping after it. `stop_signal`: the signal the user
        stopped the supervisor with, if any; `step_back`: the step back in progress; `squeezed`: other
        processes held the card at this OOM (its measurement says nothing of the plan: no hint)."""
        outcome = ended.outcome
        if outcome.kind == "done":
            return Done(), state
        if outcome.kind == "stopped" and stop_signal is None and step_back is not None:
            kept = dataclasses.replace(
                state,
                failed_plans=tuple(plan for plan in state.failed_plans if plan_key(plan) != step_back.key),
                oom_hints=tuple(
                    hint for hint in state.oom_hints if plan_key(Plan.from_dict(hint["plan"])) != step_back.key
                ),
            )
            return StepBack(step_back.plan, f"de-escalated: {step_back.reason}"), kept
        if outcome.kind == "stopped" or stop_signal is not None:
            return Stop(EXIT_STOPPED_INT if stop_signal == signal.SIGINT else EXIT_STOPPED_TERM), state
        if outcome.kind == "file_too_large":
            return Fail(outcome.message, EXIT_STORAGE), state
        if not outcome.retryable:
            return Fail(outcome.message, ended.reported_exit_code or EXIT_FAILED), state
        if outcome.kind == "disk_full":
            return WaitForSpace(ended.plan, outcome.message), state
        decision, state = self._next_plan(state, ended, squeezed)
        if decision.plan is None:
            return Fail(f"out of memory and nothing left to try: {decision.reason}", out_of_memory=True), state
        if decision.escalated or decision.applied:
            return Escalate(decision.plan, decision.applied, decision.skipped, decision.reason), state
        return self._restart(state, ended, decision)

    def _next_plan(self, state: PolicyState, ended: Ended, squeezed: bool) -> tuple[ladder.LadderDecision, PolicyState]:
        """After an OOM the planner steers (when it plans and has a confident fit), else the ladder."""
        outcome, plan = ended.outcome, ended.plan
        if outcome.escalate and outcome.phase != "eval" and self.planner is not None:
            hints = state.oom_hints if squeezed else (*state.oom_hints, {**outcome.to_dict(), "plan": plan.to_dict()})
            state = dataclasses.replace(state, failed_plans=(*state.failed_plans, plan), oom_hints=hints)
            choice = self.planner(state.failed_plans, state.oom_hints)
            if choice is not None:
                applied = [rung for rung in choice.plan.rungs if rung not in plan.rungs] or ["planner"]
                return ladder.LadderDecision(
                    plan=choice.plan,
                    applied=applied,
                    escalated=True,
                    reason=f"{outcome.kind} in {outcome.phase}: planner: {choice.reason}",
                ), state
        return ladder.next_plan(plan, outcome, self.facts, self.order), state

    def _restart(self, state: PolicyState, ended: Ended, decision: ladder.LadderDecision) -> tuple[Action, PolicyState]:
        """The same plan again: count it, guard against a crash loop and an exhausted budget, pick the wait."""
        outcome, limits = ended.outcome, self.limits
        reached = ended.last_step or -1
        progressed = reached > state.best_step
        state = dataclasses.replace(state, best_step=max(state.best_step, reached))
        if outcome.kind == OUTSIDE_KILL:
            state = dataclasses.replace(state, outside_kills=1 if progressed else state.outside_kills + 1)
        else:
            healthy = ended.first_step_at and ended.ended_at - ended.first_step_at >= limits.healthy_seconds
            # A healthy attempt leaves this failure only: the budget is for failures close together.
            signature = (outcome.kind, outcome.step, outcome.phase, outcome.message[:120])
            state = dataclasses.replace(
                state,
                crash_restarts=1 if healthy else state.crash_restarts + 1,
                loop_signature=signature,
                loop_count=1 if progressed or signature != state.loop_signature else state.loop_count + 1,
            )
            if state.loop_count >= limits.crash_loop_limit:
                where = f" at step {outcome.step}" if outcome.step is not None else ""
                return Fail(
                    f"crash loop: {outcome.kind}{where} {state.loop_count} times in a row with no progress: {outcome.message}"
                ), state
            if state.crash_restarts > limits.max_restarts:
                return Fail(
                    f"gave up after {state.crash_restarts - 1} restarts (max_restarts {limits.max_restarts}): "
                    f"{outcome.kind}: {outcome.message}"
                ), state
        restart = restart_policy(outcome.kind, state.crash_restarts, state.outside_kills, limits)
        if restart.counted:
            accounting = f" (restart {state.crash_restarts} of max_restarts {limits.max_restarts})"
        else:
            accounting = f" (outside kill {state.outside_kills} in a row; not counted toward max_restarts or the crash-loop guard)"
        return Restart(
            decision.plan, decision.reason, restart.wait_seconds, restart.counted, restart.cause, accounting
        ), state
