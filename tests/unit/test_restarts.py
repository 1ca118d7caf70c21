"""Outside kills against crashes of our code: how the exit is classified and how the restart waits and counts."""

from __future__ import annotations

import signal

from tamer.config import RunConfig
from tamer.daemon.classify import classify
from tamer.daemon.restarts import backoff, restart_policy

NOTHING_SENT: frozenset[int] = frozenset()


def test_sigkill_tamer_did_not_send_is_an_outside_kill():
    """A SIGKILL with no report, no OOM-kill evidence and not sent by tamer is `outside_kill`, retryable, no escalation."""
    outcome = classify(-signal.SIGKILL, None, signals_sent=NOTHING_SENT)
    assert outcome.kind == "outside_kill" and outcome.retryable and not outcome.escalate
    assert "SIGKILL" in outcome.message and "tamer did not send" in outcome.message


def test_sigkill_sent_by_tamer_is_the_users_second_stop():
    """A SIGKILL that tamer itself sent (the user's second Ctrl-C) is a stop, not a crash or an outside kill;
    the same kill after a hang stays a hang."""
    outcome = classify(-signal.SIGKILL, None, signals_sent=frozenset({signal.SIGINT, signal.SIGKILL}))
    assert outcome.kind == "stopped" and not outcome.retryable and "second stop request" in outcome.message
    assert classify(-signal.SIGKILL, None, hung=True, signals_sent=frozenset({signal.SIGKILL})).kind == "hang"


def test_oom_killer_still_wins_over_an_outside_kill():
    """With memory.events' oom_kill risen, a SIGKILL is a host OOM that escalates, never an outside kill."""
    outcome = classify(-signal.SIGKILL, None, oom_killed=True, signals_sent=NOTHING_SENT)
    assert outcome.kind == "host_oom" and outcome.escalate


def test_outside_sigterm_stop_is_an_outside_kill_but_tamers_stop_is_a_stop():
    """A child that checkpointed and stopped on a SIGTERM tamer did not send was killed from outside;
    the same report after tamer's own SIGTERM (or stop file) is a stop."""
    report = {"status": "stopped", "signal": int(signal.SIGTERM), "step": 4}
    outside = classify(143, report, signals_sent=NOTHING_SENT)
    assert outside.kind == "outside_kill" and "checkpointed" in outside.message
    assert classify(143, report, signals_sent=frozenset({signal.SIGTERM})).kind == "stopped"


def test_segfault_and_exceptions_stay_crashes():
    """A SIGSEGV and a Python exception are our code's crashes even when tamer sent nothing."""
    assert classify(-signal.SIGSEGV, None, signals_sent=NOTHING_SENT).kind == "crash"
    report = {"status": "exception", "exc_type": "RuntimeError", "message": "boom", "phase": "forward"}
    assert classify(10, report, signals_sent=NOTHING_SENT).kind == "crash"


def test_without_a_record_of_signals_the_old_reading_holds():
    """Callers that do not say what tamer sent keep SIGKILL = crash and SIGTERM = stopped."""
    assert classify(-signal.SIGKILL, None).kind == "crash"
    assert classify(-signal.SIGTERM, None).kind == "stopped"


def test_backoff_doubles_and_is_capped():
    """The wait doubles with each failure in a row and never exceeds the cap."""
    assert [backoff(count, 5.0, 600.0) for count in (1, 2, 3, 8, 100)] == [5.0, 10.0, 20.0, 600.0, 600.0]
    assert backoff(3, 0.0, 600.0) == 0.0


def test_outside_kills_are_not_counted_and_wait_up_to_ten_minutes():
    """An outside kill waits on its own backoff (capped at kill_backoff_max) and does not count toward giving up."""
    config = RunConfig()
    policy = restart_policy("outside_kill", crash_restarts=0, outside_kills_in_a_row=20, config=config)
    assert (
        not policy.counted
        and policy.wait_seconds == config.kill_backoff_max == 600.0
        and policy.cause == "outside kill"
    )


def test_crashes_are_counted_on_the_restart_backoff():
    """A crash counts and waits restart_backoff doubled per counted restart, capped at restart_backoff_max."""
    config = RunConfig(restart_backoff=2.0, restart_backoff_max=5.0)
    assert restart_policy("crash", crash_restarts=2, outside_kills_in_a_row=0, config=config).wait_seconds == 4.0
    policy = restart_policy("hang", crash_restarts=3, outside_kills_in_a_row=7, config=config)
    assert policy.counted and policy.wait_seconds == 5.0 and policy.cause == "crash"
