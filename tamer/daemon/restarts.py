"""How long to wait before restarting a failed attempt with the same plan, and whether the failure
counts toward giving up. Pure: the policy (policy.py) asks `restart_policy(...)` after each failure
that the ladder did not answer with a new plan, and the supervisor acts on the answer.

Two kinds of failure, two policies:
- a crash of our own code (an exception, SIGSEGV, a hang, a lost rank) counts toward `max_restarts`
  and the crash-loop guard, and waits `restart_backoff` doubling up to `restart_backoff_max`;
- a kill from outside (`outside_kill`: a SIGKILL/SIGTERM tamer did not send and the kernel OOM killer
  did not cause) never gives up while the run is wanted and counts toward neither; it waits
  `kill_backoff` doubling with each such kill in a row, up to `kill_backoff_max` (10 minutes by default).
Host OOM kills are `host_oom` and escalate: they never reach this policy.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTSIDE_KILL = "outside_kill"


@dataclass(frozen=True)
class RestartPolicy:
    """The decision for one restart with the same plan."""

    wait_seconds: float
    counted: bool
    """Whether this failure counts toward max_restarts and the crash-loop guard."""
    cause: str
    """`outside kill` or `crash` (every other failure a restart answers), for events and `tamer history`."""


def backoff(count: int, first: float, longest: float) -> float:
    """`first` doubled for each failure in a row after the first (`count` >= 1), at most `longest`."""
    if count < 1 or first <= 0:
        return 0.0
    return min(longest, first * 2.0 ** min(count - 1, 60))


def restart_policy(kind: str, crash_restarts: int, outside_kills_in_a_row: int, config: object) -> RestartPolicy:
    """The wait and accounting for a same-plan restart after an attempt that ended as `kind`.
    `crash_restarts`: counted failures so far, this one included; `outside_kills_in_a_row`: outside
    kills since the last attempt that made progress, this one included. `config`: a RunConfig."""
    if kind == OUTSIDE_KILL:
        wait = backoff(outside_kills_in_a_row, config.kill_backoff, config.kill_backoff_max)
        return RestartPolicy(wait, counted=False, cause="outside kill")
    return RestartPolicy(
        backoff(crash_restarts, config.restart_backoff, config.restart_backoff_max), counted=True, cause="crash"
    )
