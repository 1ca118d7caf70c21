"""The queue and the daemon behind `tamer submit`, `daemon`, `queue`, `cancel` and `stop`.

`tamer submit` registers a run (status `queued`) and appends it to the `queue` table. `tamer daemon`
works down the queue one job at a time, oldest first (one GPU, one job), each job in its own process,
`python -m tamer resume RUN`, whose supervisor runs the attempts: a crash of one job cannot take the
daemon down. All state is in SQLite, so the daemon survives its own restart: on start it first resumes
the queue's runs still marked `running` whose run lock is free (their supervisor died with the previous
daemon) from their newest checkpoint, then goes on down the queue. Only submitted runs are the
daemon's; a run started with `tamer run` is continued with `tamer resume`.

Processes and signals: daemon -> supervisor (`tamer resume`, new session, PR_SET_PDEATHSIG) -> child
(new session, PR_SET_PDEATHSIG).
- SIGTERM/SIGINT to the daemon is forwarded as SIGTERM to the job's supervisor, whose child checkpoints
  at the next step boundary; the run ends `stopped` and the daemon exits 143/130. A second signal is
  forwarded too, and the supervisor then kills its child without a checkpoint. A stopped run is not
  resumed by the next daemon: `tamer resume RUN` continues it.
- kill -9 of the daemon: the kernel kills the supervisor (PDEATHSIG), which takes its child with it, so
  no unwatched process keeps the GPU busy and none races the next daemon for it; the run stays
  `running` and the next daemon resumes it from its checkpoint.
- The job has its own session, so a Ctrl-C on the daemon's terminal reaches the supervisor once,
  through the daemon, not twice (which would kill the child before it checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import structlog

from tamer.config import RunConfig
from tamer.daemon.queue_notify import QueueWatch
from tamer.daemon.supervisor import create_run
from tamer.errors import (
    ERROR_BY_EXIT_CODE,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_STOPPED_INT,
    EXIT_STOPPED_TERM,
    ConfigError,
    LockedError,
    StateError,
    TamerError,
)
from tamer.notify import settings as notify_settings
from tamer.protocol import die_with_parent
from tamer.state import queries
from tamer.state.db import Database
from tamer.state.home import Home
from tamer.state.lock import PidLock, lock_holder

log = structlog.get_logger("tamer.daemon")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
WAIT_SECONDS = 0.2  # polling interval while waiting on a run's status or a lock
START_TIMEOUT_SECONDS = 60.0  # how long `--detach` and `cancel` wait for a starting process to take its lock
SUPERVISOR_LOG = "supervisor.log"  # in the run folder: stdout and stderr of a daemon's or a detached supervisor
DAEMON_LOG = "daemon.log"  # in the home: stdout and stderr of a detached daemon
DAEMON_JSON_LOG = "daemon.jsonl"  # in the home: the daemon's structlog JSON lines
FOLLOW_SECONDS = 0.5  # how often the daemon prints what its running job recorded

SYSTEMD_UNIT = """\
# tamer's queue daemon as a systemd user service. Install:
#   tamer daemon --print-systemd-unit > ~/.config/systemd/user/tamer.service
#   systemctl --user enable --now tamer
#   loginctl enable-linger $USER    # keep it running while you are logged out
[Unit]
Description=tamer queue daemon ({home})
After=network-online.target

[Service]
Type=simple
Environment=TAMER_HOME={home}
Environment=PYTHONUNBUFFERED=1
ExecStart={python} -m tamer daemon --home {home}
Restart=on-failure
RestartSec=30
# A restart cannot fix these: 2 config, 3 data, 4 model, 5 state error, 6 another daemon holds this home.
RestartPreventExitStatus=2 3 4 5 6
# Stopped by a signal after the running job checkpointed.
SuccessExitStatus=130 143
# SIGTERM to the daemon alone, which forwards it to the job's supervisor once; systemd's default
# (SIGTERM to every process at once) would signal the supervisor twice and kill the child before
# it checkpoints. Whatever is left after TimeoutStopSec gets SIGKILL.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=600

[Install]
WantedBy=default.target
"""


def systemd_unit(home: Home) -> str:
    """The unit file that runs `tamer daemon` for `home` under this Python."""
    return SYSTEMD_UNIT.format(home=home.root, python=sys.executable)


# --- locks ------------------------------------------------------------------------------------------


def daemon_lock_path(home: Home) -> Path:
    return home.root / "daemon.lock"


def daemon_pid(home: Home) -> int | None:
    """The pid of the daemon serving `home`, None when there is none."""
    return lock_holder(daemon_lock_path(home))


def supervisor_pid(run: dict[str, Any]) -> int | None:
    """The pid of the live supervisor holding `run` (its run lock), None when no supervisor holds it."""
    return lock_holder(Path(run["run_dir"]) / "lock")


# --- the queue --------------------------------------------------------------------------------------


def submit(home: Home, config: RunConfig, data_profile: Any = None) -> tuple[str, int]:
    """Register a run and append it to the queue; returns its id and its place among the waiting (1 = next)."""
    run_id = create_run(home, config, data_profile)
    db = Database(home.db_path)
    try:
        queries.enqueue(db, run_id, time.time())
        db.event(run_id, "submitted", "added to the queue")
        return run_id, queries.queue_position(db, run_id) or 0
    finally:
        db.close()


def queue_listing(db: Database) -> list[dict[str, Any]]:
    """Running runs (submitted or not), then the waiting ones in the order the daemon will start them."""
    rows = [{**run, "position": None} for run in queries.running_runs(db)]
    rows += [{**run, "position": index} for index, run in enumerate(queries.waiting_runs(db), 1)]
    return [
        {
            "position": r["position"],
            "id": r["id"],
            "status": r["status"],
            "steps_done": r["steps_done"] or 0,
            "total_steps": r["total_steps"],
            "submitted_at": r["submitted_at"],
            "supervisor_pid": r["supervisor_pid"],
        }
        for r in rows
    ]


def cancel(home: Home, run_id: str, timeout: float) -> dict[str, Any]:
    """A waiting run becomes `cancelled` (never started); a running one is stopped like `stop()`.
    Returns the run's final row."""
    db = Database(home.db_path, create=False)
    try:
        run = db.run(run_id)
        run_id = run["id"]
        if run["status"] == "queued":
            if queries.cancel_unclaimed(db, run_id, time.time()):
                db.event(run_id, "cancelled", "cancelled before it started; the daemon will not start it")
                return db.run(run_id)
            # The daemon is starting it this moment: wait until its supervisor holds it, then stop it.
            run = _wait_while(db, run_id, "queued", START_TIMEOUT_SECONDS)
        if run["status"] != "running":
            raise ConfigError(f"run {run_id} is already {run['status']}; only a queued or running run can be cancelled")
    finally:
        db.close()
    return stop(home, run_id, timeout)


def stop(home: Home, run_id: str, timeout: float) -> dict[str, Any]:
    """SIGTERM to the run's supervisor (its child checkpoints at the next step boundary and exits), then
    wait up to `timeout` seconds for the run to leave `running`. Returns the run's final row."""
    db = Database(home.db_path, create=False)
    try:
        run = db.run(run_id)
        run_id = run["id"]
        if run["status"] == "queued":
            raise ConfigError(f"run {run_id} is queued, not running; `tamer cancel {run_id}` takes it off the queue")
        if run["status"] != "running":
            raise ConfigError(f"run {run_id} is already {run['status']}; there is nothing to stop")
        pid = supervisor_pid(run)
        if pid is None:
            raise _unsupervised(run_id)
        os.kill(pid, signal.SIGTERM)
        db.event(
            run_id,
            "stop_requested",
            f"SIGTERM sent to supervisor pid {pid}: checkpoint at the next step boundary, then stop",
        )
        deadline = time.monotonic() + timeout
        while (run := db.run(run_id))["status"] == "running":
            if supervisor_pid(run) is None and db.run(run_id)["status"] == "running":
                raise _unsupervised(run_id)  # it died meanwhile (or was dying: a thread still held its lock)
            if time.monotonic() >= deadline:
                raise TamerError(
                    f"run {run_id} still running {timeout:.0f} s after SIGTERM to its supervisor (pid {pid}); "
                    f"wait longer, or `kill -TERM {pid}` again to end the attempt without a checkpoint"
                )
            time.sleep(WAIT_SECONDS)
        return run
    finally:
        db.close()


def _unsupervised(run_id: str) -> StateError:
    return StateError(
        f"run {run_id} is marked running but no supervisor holds it (it died: kill -9 or a reboot); "
        f"`tamer resume {run_id}` continues it from its newest checkpoint"
    )


def _wait_while(db: Database, run_id: str, status: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run = db.run(run_id)
    while run["status"] == status and time.monotonic() < deadline:
        time.sleep(WAIT_SECONDS)
        run = db.run(run_id)
    return run


# --- the daemon -------------------------------------------------------------------------------------


class Daemon:
    """Runs the queue's jobs one after another; see the module docstring."""

    def __init__(
        self,
        home: Home,
        poll_seconds: float = 5.0,
        exit_when_empty: bool = False,
        lines: Any = None,
        notify_config: Path | None = None,
    ) -> None:
        self.home = home
        # the queue's notify config (a bad one is a config error now, not at the first send); jobs get it through the environment
        self.notify_config = notify_config.resolve() if notify_config else None
        self.watch = QueueWatch(home, notify_settings.home_notify(home.root, self.notify_config))
        self.poll_seconds = poll_seconds
        self.exit_when_empty = exit_when_empty
        self.lines = lines  # what people read (tamer/cli/progress.py's DaemonLines), or None; structlog logs either way
        self.lock = PidLock(
            daemon_lock_path(home),
            f"a tamer daemon (pid {{holder}}) already serves {home.root}; one daemon per home: "
            "stop it first (kill -TERM {holder}, or systemctl --user stop tamer)",
        )
        self.job: subprocess.Popen | None = None
        self.stop_signal: int | None = None

    def serve(self) -> int:
        """Work until the queue is empty (`exit_when_empty`) or a signal; returns the exit code."""
        self.lock.acquire()
        self.db = Database(self.home.db_path)
        previous_handlers = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            self._release_stale_claims()
            log.info("daemon_start", home=str(self.home.root), pid=os.getpid())
            self._say(
                "daemon_start",
                f"daemon pid {os.getpid()} serves {self.home.root}; {len(queries.waiting_runs(self.db))} queued",
            )
            for run_id in self._orphans():
                self._run_job(run_id, "resumed: its supervisor died with the previous daemon")
            while self.stop_signal is None:
                if (run_id := self._claim_next()) is not None:
                    self._run_job(run_id, "next in the queue")
                else:
                    self.watch.empty(self.db)
                    if self.exit_when_empty:
                        break
                    self._idle()
        finally:
            self.watch.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.db.close()
            self.lock.release()
        log.info("daemon_end", signal=self.stop_signal)
        self._say(
            "daemon_end",
            "the queue is empty" if self.stop_signal is None else f"stopped by {signal.Signals(self.stop_signal).name}",
        )
        if self.stop_signal is None:
            return EXIT_OK
        return EXIT_STOPPED_INT if self.stop_signal == signal.SIGINT else EXIT_STOPPED_TERM

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        if self.job is not None and self.job.returncode is None:
            os.kill(self.job.pid, signal.SIGTERM)  # a second one makes the supervisor kill its child at once

    def _release_stale_claims(self) -> None:
        """A run claimed but still `queued` was being started when the previous daemon died: it waits again."""
        queries.release_stale_claims(self.db)

    def _orphans(self) -> list[str]:
        return [run["id"] for run in queries.running_queued_runs(self.db) if supervisor_pid(run) is None]

    def _claim_next(self) -> str | None:
        return queries.claim_next(self.db, time.time())

    def _idle(self) -> None:
        deadline = time.monotonic() + self.poll_seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(WAIT_SECONDS, self.poll_seconds))

    def _say(self, kind: str, message: str) -> None:
        if self.lines is not None:
            self.lines.say(kind, message)

    def _following(self, run_id: str) -> AbstractContextManager[Callable[[], None]]:
        """Within, calling what it gives prints what the job recorded since (nothing without `lines`)."""
        return self.lines.following(self.db, run_id) if self.lines is not None else contextlib.nullcontext(lambda: None)

    def _run_job(self, run_id: str, why: str) -> None:
        log_path = self.home.run_dir(run_id) / SUPERVISOR_LOG
        with self._following(run_id) as follow:
            # Stop signals wait until self.job is set, so one that comes while the job starts still reaches it.
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                if self.stop_signal is not None:
                    self._unclaim(run_id)
                    return
                queries.set_queue_daemon(self.db, run_id, os.getpid())
                with open(log_path, "ab") as output:
                    self.job = subprocess.Popen(
                        [sys.executable, "-m", "tamer", "resume", run_id, "--home", str(self.home.root)],
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=_job_setup(os.getpid()),
                        env={
                            **os.environ,
                            "PYTHONUNBUFFERED": "1",
                            **({notify_settings.ENVIRONMENT: str(self.notify_config)} if self.notify_config else {}),
                        },
                    )
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            self.db.event(
                run_id,
                "daemon_job",
                f"the daemon (pid {os.getpid()}) started its supervisor (pid {self.job.pid}): {why}",
            )
            log.info("job_start", run_id=run_id, pid=self.job.pid, why=why)
            code = self._wait(follow)
            self.job = None
            self._after_job(run_id, code, log_path)
            self.watch.job_done(run_id)
            follow()
        run = self.db.run(run_id)
        self._say(
            "job_end",
            f"run {run_id} {run['status']} at step {run['steps_done'] or 0}/{run['total_steps'] or '?'}; "
            f"its supervisor exited with code {code}",
        )

    def _wait(self, follow: Callable[[], None]) -> int:
        """The job's exit code, once it exits; meanwhile, what it records is printed (follow)."""
        while True:
            try:
                return self.job.wait(timeout=FOLLOW_SECONDS)
            except subprocess.TimeoutExpired:
                follow()

    def _after_job(self, run_id: str, code: int, log_path: Path) -> None:
        run = self.db.run(run_id)
        log.info("job_end", run_id=run_id, exit_code=code, status=run["status"], steps_done=run["steps_done"])
        if run["status"] == "queued" and self.stop_signal is not None:
            self._unclaim(run_id)  # stopped before its supervisor took it: the next daemon starts it
        elif run["status"] == "queued":
            reason = f"its supervisor (`tamer resume`) exited with code {code} before it started; {log_path} says why"
            self.db.update_run(run_id, status="failed", ended_at=time.time(), failure_reason=reason)
            self.db.event(run_id, "failed", reason)
            self.watch.never_started(self.db.run(run_id))
        elif run["status"] == "running" and supervisor_pid(run) is None:
            self.db.event(
                run_id,
                "daemon_job",
                f"its supervisor exited with code {code} and left the run running; "
                f"the next daemon start resumes it, or `tamer resume {run_id}`",
            )

    def _unclaim(self, run_id: str) -> None:
        queries.unclaim(self.db, run_id)


def _job_setup(daemon: int) -> Any:
    """In the job process before exec: take the stop signals back and die with the daemon (see the docstring)."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        die_with_parent(daemon)

    return setup


# --- running in the background ----------------------------------------------------------------------


def detach_daemon(home: Home, poll_seconds: float, exit_when_empty: bool, notify_config: Path | None = None) -> int:
    """Start `tamer daemon` in its own session with its output in HOME/daemon.log; returns its pid once it
    holds the daemon lock."""
    holder = daemon_pid(home)
    if holder is not None:
        raise LockedError(f"a tamer daemon (pid {holder}) already serves {home.root}; one daemon per home")
    command = [sys.executable, "-m", "tamer", "daemon", "--home", str(home.root), "--poll", str(poll_seconds)]
    command += ["--notify-config", str(notify_config.resolve())] if notify_config else []
    log_path = home.root / DAEMON_LOG
    process = _spawn(command + (["--exit-when-empty"] if exit_when_empty else []), log_path)
    _await_lock(process, daemon_lock_path(home), "the daemon", log_path)
    return process.pid


def detach_run(home: Home, run_id: str) -> int:
    """Start the run's supervisor (`tamer resume RUN`) in its own session, output in the run folder's
    supervisor.log; returns its pid once it holds the run. For `tamer run --detach`."""
    log_path = home.run_dir(run_id) / SUPERVISOR_LOG
    process = _spawn([sys.executable, "-m", "tamer", "resume", run_id, "--home", str(home.root)], log_path)
    _await_lock(process, home.run_dir(run_id) / "lock", f"the supervisor of {run_id}", log_path)
    return process.pid


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as output:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _await_lock(process: subprocess.Popen, lock_path: Path, what: str, log_path: Path) -> None:
    """Wait until the background process holds its lock (it started) or exits (if it failed, say so)."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        code = process.poll()
        if code == 0:
            return
        if code is not None:
            error = LockedError if code == EXIT_LOCKED else ERROR_BY_EXIT_CODE.get(code, TamerError)
            raise error(f"{what} exited with code {code} as it started; {log_path} says why")
        if lock_holder(lock_path) == process.pid:
            return
        time.sleep(WAIT_SECONDS / 2)
