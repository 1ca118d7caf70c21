"""The supervisor's policy without processes, torch or a database: each ended attempt is a value, each
decision an action, so crash loops, budgets, the ladder, hangs, lost ranks and outside kills run in milliseconds."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from tamer.daemon.classify import classify, classify_group
from tamer.daemon.policy import (
    Done,
    Ended,
    Escalate,
    Fail,
    Limits,
    PendingStepBack,
    Policy,
    PolicyState,
    Restart,
    StepBack,
    Stop,
    WaitForSpace,
)
from tamer.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_STOPPED_INT, EXIT_STOPPED_TERM, EXIT_STORAGE
from tamer.outcome import Outcome
from tamer.plan import DeviceFacts, Plan
from tamer.planner.candidates import plan_key

GiB = 2**30
CPU = DeviceFacts(kind="cpu", name="cpu", bf16=True, fp16=False)
CUDA = DeviceFacts(
    kind="cuda", name="NVIDIA H100 80GB HBM3", total_memory=80 * GiB, compute_capability=(9, 0), bf16=True, fp16=True
)
LIMITS = Limits(
    max_restarts=10,
    crash_loop_limit=3,
    healthy_seconds=600.0,
    restart_backoff=2.0,
    restart_backoff_max=120.0,
    kill_backoff=5.0,
    kill_backoff_max=600.0,
)
PLAN = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 15.00 GiB of which 1.02 GiB is free."
)


def crash(step: int | None = 3, message: str = "RuntimeError: injected crash", phase: str = "forward") -> Outcome:
    return Outcome("crash", message, phase=phase, step=step, exit_code=10)


def oom(phase: str = "backward") -> Outcome:
    return classify(
        10, {"status": "exception", "exc_type": "OutOfMemoryError", "message": CUDA_OOM, "phase": phase, "step": 3}
    )


def ended(
    outcome: Outcome, number: int = 1, plan: Plan = PLAN, last_step: int | None = 2, ran: float = 10.0, **facts
) -> Ended:
    """An attempt that took its first step at t=1000 and ended `ran` seconds later, at `last_step`."""
    return Ended(number, outcome, plan, last_step=last_step, first_step_at=1000.0, ended_at=1000.0 + ran, **facts)


def run(policy: Policy, attempts: list[Ended], state: PolicyState = PolicyState()) -> tuple[list, PolicyState]:  # noqa: B008 (frozen)
    """Every action after each of `attempts`, in turn, and the state after the last."""
    actions = []
    for attempt in attempts:
        action, state = policy.decide(state, attempt)
        actions.append(action)
    return actions, state


# --- endings -----------------------------------------------------------------------------------------


def test_done_finishes_and_a_config_error_fails_with_its_exit_code():
    """A clean finish is Done; a failure a restart cannot fix fails at once with the exit code the child reported."""
    policy = Policy(LIMITS, CPU, ["gradient_checkpointing"])
    assert policy.decide(PolicyState(), ended(Outcome("done", "finished", retryable=False)))[0] == Done()
    bad = Outcome("config_error", "lr: must be > 0", retryable=False, exit_code=EXIT_CONFIG)
    action, _ = policy.decide(PolicyState(), ended(bad, reported_exit_code=EXIT_CONFIG))
    assert action == Fail("lr: must be > 0", EXIT_CONFIG)
    assert policy.decide(PolicyState(), ended(dataclasses.replace(bad, kind="crash")))[0] == Fail(
        "lr: must be > 0", EXIT_FAILED
    )


def test_a_stop_signal_wins_over_a_crash_and_names_its_exit_code():
    """A crash that ends after the user's stop (say, a SIGTERM during the backoff's attempt) stops the run,
    130 after SIGINT and 143 after SIGTERM, and is not counted."""
    policy = Policy(LIMITS, CPU, [])
    action, state = policy.decide(PolicyState(), ended(crash()), stop_signal=signal.SIGINT)
    assert action == Stop(EXIT_STOPPED_INT) and state.crash_restarts == 0
    assert policy.decide(PolicyState(), ended(crash()), stop_signal=signal.SIGTERM)[0] == Stop(EXIT_STOPPED_TERM)
    assert policy.decide(PolicyState(), ended(Outcome("stopped", "stopped by SIGTERM", retryable=False)))[0] == Stop(
        EXIT_STOPPED_TERM
    )


# --- crashes: the crash-loop guard and the restart budget -------------------------------------------


def test_same_crash_at_the_same_step_fails_after_crash_loop_limit_attempts():
    """Three crashes at step 3 with no progress: two counted restarts with doubling waits, then a crash-loop failure."""
    actions, _ = run(Policy(LIMITS, CPU, []), [ended(crash(), number) for number in (1, 2, 3)])
    assert [type(action) for action in actions] == [Restart, Restart, Fail]
    assert [action.wait_seconds for action in actions[:2]] == [2.0, 4.0]
    assert all(action.counted and action.cause == "crash" and action.plan == PLAN for action in actions[:2])
    assert actions[1].accounting == " (restart 2 of max_restarts 10)"
    assert (
        actions[2].reason
        == "crash loop: crash at step 3 3 times in a row with no progress: RuntimeError: injected crash"
    )


def test_progress_between_crashes_resets_the_crash_loop_guard():
    """The same crash message, but each attempt got further than any before: never a crash loop."""
    actions, state = run(
        Policy(LIMITS, CPU, []),
        [ended(crash(step), number, last_step=step - 1) for number, step in enumerate(range(3, 9), 1)],
    )
    assert (
        all(isinstance(action, Restart) for action in actions) and state.loop_count == 1 and state.crash_restarts == 6
    )


def test_progress_resets_the_crash_loop_guard_when_the_failure_looks_the_same():
    """SIGSEGVs with no report look alike (no step, same message); each after more training is no crash loop."""
    segfault = classify(-signal.SIGSEGV, None, signals_sent=frozenset())
    actions, _ = run(Policy(LIMITS, CPU, []), [ended(segfault, number, last_step=4 * number) for number in range(1, 6)])
    assert segfault.step is None and all(isinstance(action, Restart) for action in actions)
    actions, _ = run(Policy(LIMITS, CPU, []), [ended(segfault, number, last_step=4) for number in range(1, 4)])
    assert isinstance(actions[-1], Fail) and actions[-1].reason.startswith("crash loop: crash 3 times in a row")


def test_a_different_failure_breaks_the_loop_count():
    """Crash, hang, crash at the same step: no two in a row are the same failure, so no crash loop."""
    hang = Outcome(
        "hang", "heartbeat stopped; the supervisor killed it (SIGKILL)", phase="forward", step=3, signal=signal.SIGKILL
    )
    actions, _ = run(Policy(LIMITS, CPU, []), [ended(crash(), 1), ended(hang, 2), ended(crash(), 3)])
    assert all(isinstance(action, Restart) for action in actions)


def test_restart_budget_runs_out_after_max_restarts():
    """Crashes that each progressed (no crash loop) but came close together: max_restarts restarts, then the run fails."""
    policy = Policy(dataclasses.replace(LIMITS, max_restarts=2), CPU, [])
    actions, _ = run(policy, [ended(crash(step), number, last_step=step) for number, step in ((1, 3), (2, 5), (3, 7))])
    assert [type(action) for action in actions] == [Restart, Restart, Fail]
    assert actions[2].reason == "gave up after 2 restarts (max_restarts 2): crash: RuntimeError: injected crash"
    assert actions[2].exit_code == EXIT_FAILED


def test_a_healthy_attempt_resets_the_restart_budget():
    """An attempt that trained healthy_seconds before failing leaves only its own failure on the budget."""
    policy = Policy(dataclasses.replace(LIMITS, max_restarts=2), CPU, [])
    attempts = [
        ended(crash(3), 1, last_step=3),
        ended(crash(5), 2, last_step=5),
        ended(crash(90), 3, last_step=90, ran=600.0),
        ended(crash(92), 4, last_step=92),
    ]
    actions, state = run(policy, attempts)
    assert [type(action) for action in actions] == [Restart, Restart, Restart, Restart]
    assert [action.accounting for action in actions[2:]] == [
        " (restart 1 of max_restarts 2)",
        " (restart 2 of max_restarts 2)",
    ]
    assert actions[2].wait_seconds == 2.0  # the backoff starts over too
    assert isinstance(policy.decide(state, ended(crash(94), 5, last_step=94))[0], Fail)


def test_a_hang_restarts_the_same_plan_and_counts():
    """The watchdog's kill (outcome `hang`) is a counted crash restart of the same plan, never an escalation."""
    hang = classify(-signal.SIGKILL, None, hung=True, signals_sent=frozenset({signal.SIGKILL}))
    assert hang.kind == "hang"
    action, state = Policy(LIMITS, CUDA, ["gradient_checkpointing"]).decide(PolicyState(), ended(hang))
    assert isinstance(action, Restart) and action.plan == PLAN and action.counted and action.wait_seconds == 2.0
    assert action.reason == "restart without escalation: hang" and state.crash_restarts == 1


# --- several processes -----------------------------------------------------------------------------


def test_a_rank_lost_without_a_report_restarts_the_same_plan_and_loops_like_a_crash():
    """Rank 1 died first without a word, rank 0 then lost its peer: dist_failure blamed on rank 1, a counted
    same-plan restart; the same loss at the same step three times is a crash loop."""
    peer_gone = {
        "status": "exception",
        "exc_type": "DistBackendError",
        "message": "Connection reset by peer",
        "phase": "backward",
        "step": 4,
        "time": 100.0,
    }
    lost = classify_group(1, {0: peer_gone}, 2, died_first=1)
    assert lost.kind == "dist_failure" and lost.rank == 1
    two = PLAN.replace(world_size=2)
    actions, _ = run(
        Policy(LIMITS, CUDA, ["gradient_checkpointing"]),
        [ended(lost, number, plan=two, last_step=3) for number in (1, 2, 3)],
    )
    assert [type(action) for action in actions] == [Restart, Restart, Fail]
    assert (
        actions[0].plan == two
        and actions[0].counted
        and actions[2].reason.startswith("crash loop: dist_failure at step 4 3 times")
    )


def test_an_oom_on_one_rank_escalates_the_whole_group():
    """One rank's CUDA OOM (its peer saw only a reset connection) escalates the group's plan."""
    peer_gone = {
        "status": "exception",
        "exc_type": "DistBackendError",
        "message": "Connection reset by peer",
        "phase": "backward",
        "time": 101.0,
    }
    ran_out = {
        "status": "exception",
        "exc_type": "OutOfMemoryError",
        "message": CUDA_OOM,
        "phase": "backward",
        "time": 100.0,
    }
    outcome = classify_group(1, {0: peer_gone, 1: ran_out}, 2)
    action, _ = Policy(LIMITS, CUDA, ["gradient_checkpointing"]).decide(
        PolicyState(), ended(outcome, plan=PLAN.replace(world_size=2))
    )
    assert isinstance(action, Escalate) and action.plan.gradient_checkpointing and action.plan.world_size == 2


# --- outside kills ----------------------------------------------------------------------------------


def test_outside_kills_are_never_counted_and_back_off_on_their_own():
    """Five outside kills at the load with no progress (more than crash_loop_limit and max_restarts allow):
    restarts with kill_backoff doubling to its cap, none counted."""
    policy = Policy(
        dataclasses.replace(LIMITS, max_restarts=1, crash_loop_limit=2, kill_backoff=0.2, kill_backoff_max=1.0), CPU, []
    )
    killed = classify(-signal.SIGKILL, None, signals_sent=frozenset())
    actions, state = run(policy, [ended(killed, number, last_step=None) for number in range(1, 6)])
    assert all(
        isinstance(action, Restart) and not action.counted and action.cause == "outside kill" for action in actions
    )
    assert [action.wait_seconds for action in actions] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert state.crash_restarts == 0 and state.loop_count == 0
    assert actions[2].accounting.startswith(" (outside kill 3 in a row; not counted")


def test_progress_resets_the_outside_kill_backoff():
    """An outside kill after the run got further than ever waits the first backoff again."""
    policy = Policy(LIMITS, CPU, [])
    killed = classify(-signal.SIGKILL, None, signals_sent=frozenset())
    actions, _ = run(
        policy, [ended(killed, 1, last_step=4), ended(killed, 2, last_step=4), ended(killed, 3, last_step=9)]
    )
    assert [action.wait_seconds for action in actions] == [5.0, 10.0, 5.0]


def test_an_outside_kill_between_crashes_does_not_reset_the_crash_count():
    """Outside kills leave the crash budget alone: crash, outside kill, crash is restart 2 of the budget."""
    killed = classify(-signal.SIGKILL, None, signals_sent=frozenset())
    actions, state = run(Policy(LIMITS, CPU, []), [ended(crash(), 1), ended(killed, 2), ended(crash(), 3)])
    assert actions[2].accounting == " (restart 2 of max_restarts 10)" and state.loop_count == 2


# --- the ladder -------------------------------------------------------------------------------------


def test_training_oom_escalates_at_once_and_is_not_counted():
    """A CUDA OOM in backward climbs a rung with no wait, leaving the restart budget alone."""
    action, state = Policy(LIMITS, CUDA, ["gradient_checkpointing", "split_micro_batch"]).decide(
        PolicyState(), ended(oom())
    )
    assert (
        isinstance(action, Escalate)
        and action.applied == ["gradient_checkpointing"]
        and action.plan.gradient_checkpointing
    )
    assert action.reason.startswith("cuda_oom in backward at micro-batch 8: applied gradient_checkpointing")
    assert state.crash_restarts == 0 and state.failed_plans == ()  # the ladder alone keeps no failed plans


def test_exhausted_ladder_fails_with_what_was_tried():
    """An OOM with every rung of the order applied fails the run, flagged for the memory peak, naming what was tried."""
    policy = Policy(LIMITS, CUDA, ["gradient_checkpointing"])
    first, _ = policy.decide(PolicyState(), ended(oom()))
    action, _ = policy.decide(PolicyState(), ended(oom(), 2, plan=first.plan))
    assert isinstance(action, Fail) and action.out_of_memory and action.exit_code == EXIT_FAILED
    assert action.reason == (
        "out of memory and nothing left to try: cuda_oom in backward at micro-batch 8: no rung left to apply "
        "(already applied: gradient_checkpointing)"
    )


def test_eval_oom_halves_only_the_eval_batch_and_never_asks_the_planner():
    """An OOM during eval halves the eval batch and leaves training alone, even in planner mode; at 1 the run fails."""
    asked = []
    policy = Policy(LIMITS, CUDA, ["gradient_checkpointing"], planner=lambda failed, hints: asked.append(failed))
    action, state = policy.decide(PolicyState(), ended(oom(phase="eval")))
    assert isinstance(action, Escalate) and action.applied == ["eval_batch_size"]
    assert action.plan == PLAN.replace(eval_batch_size=4) and asked == [] and state.failed_plans == ()
    action, _ = policy.decide(state, ended(oom(phase="eval"), 2, plan=PLAN.replace(eval_batch_size=1)))
    assert isinstance(action, Fail) and action.out_of_memory and "eval batch is already 1" in action.reason


@dataclasses.dataclass
class Pick:
    plan: Plan
    reason: str


def test_the_planner_steers_after_a_training_oom_and_learns_what_failed():
    """In planner mode a training OOM asks the injected planner, with every plan that failed and its hint."""
    seen = []
    better = PLAN.replace(micro_batch_size=2, grad_accumulation=4, rungs=["split_micro_batch", "split_micro_batch"])

    def planner(failed, hints):
        seen.append((failed, hints))
        return Pick(better, "micro-batch 2 x 4 fits")

    earlier = PLAN.replace(micro_batch_size=16)
    action, state = Policy(LIMITS, CUDA, ["gradient_checkpointing"], planner=planner).decide(
        PolicyState(failed_plans=(earlier,)), ended(oom())
    )
    assert (
        isinstance(action, Escalate)
        and action.plan == better
        and action.applied == ["split_micro_batch", "split_micro_batch"]
    )
    assert action.reason == "cuda_oom in backward: planner: micro-batch 2 x 4 fits"
    ((failed, hints),) = seen
    assert failed == (earlier, PLAN) and hints[0]["plan"] == PLAN.to_dict() and hints[0]["kind"] == "cuda_oom"
    assert state.failed_plans == failed


def test_a_squeezed_oom_teaches_the_planner_no_hint_and_no_fit_falls_back_to_the_ladder():
    """When others squeezed the card, the OOM's measurement is no hint; a planner with no confident fit leaves it to the ladder."""
    policy = Policy(LIMITS, CUDA, ["gradient_checkpointing"], planner=lambda failed, hints: None)
    action, state = policy.decide(PolicyState(), ended(oom()), squeezed=True)
    assert isinstance(action, Escalate) and action.applied == ["gradient_checkpointing"]
    assert state.failed_plans == (PLAN,) and state.oom_hints == ()


# --- de-escalation ----------------------------------------------------------------------------------


def test_a_stop_for_a_step_back_returns_to_the_faster_plan_and_forgets_its_oom():
    """The child stopped because tamer asked (no user signal): step back at once, and the plan's OOM no
    longer excludes it from the planner; with a user signal the same stop ends the run."""
    squeezed_plan = PLAN.replace(micro_batch_size=16)
    other = PLAN.replace(micro_batch_size=32)
    state = PolicyState(
        failed_plans=(squeezed_plan, other), oom_hints=({"plan": squeezed_plan.to_dict()}, {"plan": other.to_dict()})
    )
    pending = PendingStepBack(squeezed_plan, plan_key(squeezed_plan), "gone: pid 4242")
    stopped = Outcome("stopped", "stopped on request", retryable=False)
    action, after = Policy(LIMITS, CUDA, []).decide(state, ended(stopped), step_back=pending)
    assert action == StepBack(squeezed_plan, "de-escalated: gone: pid 4242")
    assert after.failed_plans == (other,) and after.oom_hints == ({"plan": other.to_dict()},)
    assert Policy(LIMITS, CUDA, []).decide(state, ended(stopped), step_back=pending, stop_signal=signal.SIGTERM)[
        0
    ] == Stop(EXIT_STOPPED_TERM)


@pytest.mark.parametrize("kind", ["crash", "hang", "lost", "dist_failure"])
def test_every_same_plan_failure_counts(kind):
    """Each failure a restart answers (not an outside kill) counts toward the budget and waits restart_backoff."""
    action, state = Policy(LIMITS, CPU, []).decide(PolicyState(), ended(Outcome(kind, "gone")))
    assert (
        isinstance(action, Restart)
        and action.counted
        and state.crash_restarts == 1
        and action.wait_seconds == LIMITS.restart_backoff
    )


# --- a full disk, a file-size limit ----------------------------------------------------------------------


SAFETENSORS_FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


@pytest.mark.parametrize(
    "report",
    [
        {
            "status": "exception",
            "exc_type": "OSError",
            "message": "[Errno 28] No space left on device",
            "errno": 28,
            "phase": "load",
        },
        {"status": "exception", "exc_type": "SafetensorError", "message": SAFETENSORS_FULL, "phase": "checkpoint"},
        {
            "status": "exception",
            "exc_type": "OperationalError",
            "message": "database or disk is full",
            "phase": "forward",
        },
        {
            "status": "exception",
            "exc_type": "RuntimeError",
            "message": "PytorchStreamWriter failed writing file data/3: file write failed",
            "disk_free": 4096,
            "phase": "checkpoint",
        },
    ],
)
def test_a_full_disk_waits_for_space_on_the_same_plan_and_is_never_a_crash(report):
    """ENOSPC in any of its spellings (or an unexplained write failure on a nearly full disk) is `disk_full`:
    the policy waits for space and restarts the plan, it neither escalates nor counts a crash."""
    outcome = classify(10, report, signals_sent=frozenset())
    assert outcome.kind == "disk_full" and outcome.message.startswith("the disk is full")
    action, state = Policy(LIMITS, CPU, ["split_micro_batch"]).decide(PolicyState(), ended(outcome))
    assert isinstance(action, WaitForSpace) and action.plan == PLAN and state.crash_restarts == 0


def test_an_unexplained_write_failure_with_room_left_stays_a_crash():
    """A write failure on a disk with room left is not blamed on the disk."""
    report = {"status": "exception", "exc_type": "RuntimeError", "message": "file write failed", "disk_free": 50 * GiB}
    assert classify(10, report).kind == "crash"


def test_a_file_size_limit_fails_the_run_at_once_and_says_so():
    """EFBIG (ulimit -f) is `file_too_large`: not retried, the run fails with exit 7 and names the limit and the fix."""
    report = {
        "status": "exception",
        "exc_type": "OSError",
        "message": "[Errno 27] File too large",
        "errno": 27,
        "file_size_limit": 4 * 2**20,
        "phase": "checkpoint",
    }
    outcome = classify(10, report, signals_sent=frozenset())
    assert outcome.kind == "file_too_large" and not outcome.retryable
    assert "4.0 MiB, ulimit -f" in outcome.message and "ulimit -f unlimited" in outcome.message
    action, _ = Policy(LIMITS, CPU, ["split_micro_batch"]).decide(PolicyState(), ended(outcome))
    assert isinstance(action, Fail) and action.exit_code == EXIT_STORAGE


def test_an_allocator_failure_under_an_address_space_cap_is_a_host_oom():
    """oneDNN's 'could not create a primitive' under host_mem_cap is a host OOM that escalates; without the cap it is a crash."""
    report = {
        "status": "exception",
        "exc_type": "RuntimeError",
        "message": "could not create a primitive",
        "phase": "forward",
    }
    assert classify(10, {**report, "address_space_capped": True}).kind == "host_oom"
    assert classify(10, report).kind == "crash"
