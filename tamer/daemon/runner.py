"""One attempt's child process, started, watched and read back: this side runs processes and decides nothing.

The supervisor (supervisor.py) starts each attempt as an `AttemptProcess` (the child module, or torchrun
launching one per process), calls `poll()` from its watch loop (host memory, which rank died first) and
`overdue()` for the heartbeat watchdog, forwards the user's stop with `request_stop(...)`, and once the
process exited reads its outcome back with `finish(...)`: the exit status and the exit report(s)
classified by outcome.py. What to do next is policy.py's decision; what to record is the supervisor's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from tamer.daemon import classify as outcomes
from tamer.outcome import Outcome
from tamer.plan import Plan
from tamer.protocol import (
    CHILD_LOG,
    HEARTBEAT,
    PARENT_PID_VARIABLE,
    STOP_FILE,
    SUPERVISOR_PID_VARIABLE,
    rank_pids,
    read_exit_report,
    read_rank_exit_reports,
)

REMOTE_REPORT_SECONDS = 5.0
"""How long to wait for the exit reports of other machines' ranks to appear in the shared run folder."""
CHILD_PROGRAM = ("-m", "tamer.engine.child")
"""What the interpreter (or torchrun) runs for one attempt; RUN_DIR and ATTEMPT follow."""


def command(
    run_dir: Path, number: int, plan: Plan, config: Any, run_id: str, child_program: Sequence[str] = CHILD_PROGRAM
) -> list[str]:
    """The child's command line: the child module, or torchrun launching one per process."""
    child = [*child_program, str(run_dir), str(number)]
    if plan.world_size == 1:
        return [sys.executable, *child]
    spread = config.distributed
    launcher = [
        sys.executable,
        "-m",
        "tamer.engine.launch",
        "--nproc-per-node",
        str(spread.nproc_per_node),
        "--nnodes",
        str(spread.nnodes),
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.1",
    ]
    if spread.nnodes == 1:
        launcher.append("--standalone")
    else:  # static rendezvous hosted by node 0, so that global rank 0 (rows, checkpoints) runs beside the owning supervisor
        host, _, port = spread.rdzv_endpoint.rpartition(":")
        launcher += ["--node-rank", str(spread.node_rank or 0), "--master-addr", host, "--master-port", port]
    return launcher + child


def environment(plan: Plan, torch_threads: int | None) -> dict[str, str]:
    """The child's environment: ours, the plan's variables, and who its supervisor is."""
    env = {**os.environ, **plan.env, SUPERVISOR_PID_VARIABLE: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    if torch_threads:  # also what torchrun would otherwise set to 1 for its ranks, with a warning
        env["OMP_NUM_THREADS"] = str(torch_threads)
    env.pop(PARENT_PID_VARIABLE, None)
    return env


class AttemptProcess:
    """One attempt's child process (with torchrun, the launcher and its ranks), from start to exit."""

    def __init__(
        self,
        command_line: list[str],
        env: dict[str, str],
        attempt_dir: Path,
        world_size: int,
        watchdog: Any,
        local: range | None = None,
        log_name: str = CHILD_LOG,
    ) -> None:
        """`local`: the global ranks this machine runs (all of them unless the run spans several nodes):
        only those are watched and killed here, the other nodes' pid files name processes elsewhere."""
        self.attempt_dir = attempt_dir
        self.world_size = world_size
        self.local = local if local is not None else range(world_size)
        self.watchdog = watchdog
        self.signals_sent: set[int] = set()
        """Signals tamer sent this child (a stop file counts as SIGTERM): any other kill came from outside."""
        self.peak_rss = 0
        self.hung = False
        self.events_before = outcomes.read_memory_events()
        with open(attempt_dir / log_name, "ab") as child_log:
            self.popen = subprocess.Popen(
                command_line, stdout=child_log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.pid = self.popen.pid
        self.started = time.time()
        self.ranks = RankWatch(attempt_dir, self.local) if world_size > 1 else None

    def poll(self) -> int | None:
        """The exit status once it exited, else None after noting its memory and its ranks."""
        returncode = self.popen.poll()
        if returncode is None:
            self.peak_rss = max(self.peak_rss, _rss(self.pid))
            if self.ranks is not None:
                self.ranks.poll()
        return returncode

    def overdue(self) -> tuple[float, float, str] | None:
        """(silence, deadline, phase) the first time the stalest heartbeat passes its phase's deadline, else None."""
        if self.hung:
            return None
        silence, deadline, phase = self._silence()
        if silence <= deadline:
            return None
        self.hung = True
        return silence, deadline, phase

    def child_pids(self) -> set[int]:
        """The child and its descendants (torchrun's ranks), as NVML would list them outside a container."""
        try:
            process = psutil.Process(self.pid)
            return {process.pid, *(descendant.pid for descendant in process.children(recursive=True))}
        except psutil.Error:
            return set()

    def kill(self) -> None:
        """SIGKILL the child, and with torchrun every rank too (they run in sessions of their own)."""
        self.signals_sent.add(signal.SIGKILL)
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        _kill_ranks(self.attempt_dir, signal.SIGKILL, self.local)

    def request_stop(self, first: bool, signum: int = signal.SIGTERM) -> None:
        """The user's stop: the first passes the user's signal on (a checkpoint at the next step boundary), a second kills."""
        if self.popen.poll() is not None:
            return
        if self.world_size > 1:  # ranks learn it from the stop file, all after the same step
            if first:
                (self.attempt_dir / STOP_FILE).touch()
            else:
                self.kill()
        else:
            sent = signum if first else signal.SIGKILL
            self.signals_sent.add(sent)
            os.kill(self.pid, sent)

    def finish(self, returncode: int) -> tuple[Outcome, dict | None]:
        """After the exit: its classified outcome and the report behind it."""
        if self.world_size > 1:
            _kill_ranks(
                self.attempt_dir, signal.SIGKILL, self.local
            )  # none should be left; never leave one holding a GPU
            oom_killed = returncode != 0 and outcomes.detect_oom_kill(self.events_before, outcomes.read_memory_events())
            reports = read_rank_exit_reports(self.attempt_dir)
            deadline = time.monotonic() + REMOTE_REPORT_SECONDS
            while len(self.local) < self.world_size and len(reports) < self.world_size and time.monotonic() < deadline:
                time.sleep(0.1)  # other nodes' reports reach the shared folder a little later (or never: a lost node)
                reports = read_rank_exit_reports(self.attempt_dir)
            outcome = outcomes.classify_group(
                returncode,
                reports,
                self.world_size,
                oom_killed=oom_killed,
                hung=self.hung,
                stop_requested=(self.attempt_dir / STOP_FILE).exists(),
                died_first=self.ranks.finish() if self.ranks else None,
            )
            return outcome, reports.get(outcome.rank) if outcome.rank is not None else None
        oom_killed = returncode == -signal.SIGKILL and outcomes.detect_oom_kill(
            self.events_before, outcomes.read_memory_events()
        )
        report = read_exit_report(self.attempt_dir)
        outcome = outcomes.classify(
            returncode, report, oom_killed=oom_killed, hung=self.hung, signals_sent=frozenset(self.signals_sent)
        )
        return outcome, report

    def _silence(self) -> tuple[float, float, str]:
        """(seconds since the stalest rank's last heartbeat, the deadline for its phase, the phase)."""
        beats = sorted(self.attempt_dir.glob(f"{HEARTBEAT}*")) or [self.attempt_dir / HEARTBEAT]
        worst = (0.0, 1.0, "load")
        for heartbeat in beats:
            try:
                stamp = heartbeat.stat().st_mtime
                phase, first_step = (heartbeat.read_text().split() + ["load", "1"])[:2]
            except (OSError, ValueError):
                stamp, phase, first_step = self.started, "load", "1"
            silence = time.time() - max(stamp, self.started)
            deadline = self.watchdog.deadline(phase, first_step == "1")
            if silence / deadline > worst[0] / worst[1]:
                worst = (silence, deadline, phase)
        return worst


def _rss(pid: int) -> int:
    """Resident memory of the child and its descendants (torchrun's ranks)."""
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for descendant in process.children(recursive=True):
            try:
                total += descendant.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


class RankWatch:
    """Which rank of a torchrun attempt exited first, seen from the supervisor's poll loop (the ranks
    are torchrun's children, so their exit statuses never reach us): names a rank lost without a report."""

    def __init__(self, attempt_dir: Path, local: range) -> None:
        self.attempt_dir = attempt_dir
        self.local = local
        self.pids: dict[int, int] = {}
        self.died_first: int | None = None

    def poll(self) -> None:
        if self.died_first is not None:
            return
        self.pids = {
            **{rank: pid for rank, pid in rank_pids(self.attempt_dir).items() if rank in self.local},
            **self.pids,
        }
        dead = []
        for rank, pid in sorted(self.pids.items()):
            try:
                alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                alive = False
            if not alive:
                dead.append(rank)
        if len(dead) == 1:
            self.died_first = dead[0]
        elif dead:  # several between two polls: torchrun logged the first it saw fail
            self.died_first = self.first_failure_logged()
            self.pids.clear()

    def first_failure_logged(self) -> int | None:
        """The local rank of torchrun's first `failed (exitcode: N) local_rank: R` line in child.log."""
        try:
            text = (self.attempt_dir / CHILD_LOG).read_text(errors="replace")
        except OSError:
            return None
        match = re.search(r"failed \(exitcode: -?\d+\) local_rank: (\d+)", text)
        return int(match.group(1)) if match else None

    def finish(self) -> int | None:
        """After the attempt: the first rank seen to exit, else the one torchrun logged."""
        if self.died_first is None:
            self.poll()
        return self.died_first if self.died_first is not None else self.first_failure_logged()


def _kill_ranks(attempt_dir: Path, signum: int, local: range) -> None:
    """Signal every rank of a torchrun attempt on this machine that is still alive."""
    for rank, pid in rank_pids(attempt_dir).items():
        if rank not in local:
            continue
        try:
            if psutil.Process(pid).cmdline()[-1:] == [attempt_dir.name]:  # still that rank, not a reused pid
                os.kill(pid, signum)
        except (OSError, psutil.Error):
            pass
