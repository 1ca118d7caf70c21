"""The supervisor: spawn the child -> watch it -> classify its exit -> ask the ladder -> respawn.

It never initialises CUDA (device facts come from NVML or a throwaway probe), so the child gets the
whole card, and it outlives every child. Restarts after failures that escalation cannot fix (crash,
hang, a lost child) back off exponentially through tenacity and are bounded by `max_restarts`;
OOMs restart at once under the ladder's next plan, bounded by the ladder itself. One supervisor per
run: an flock on `runs/<id>/lock`, which the kernel drops when its holder dies, even by kill -9.
A child killed from outside (a SIGKILL/SIGTERM tamer did not send, not the OOM killer) is restarted
for as long as the run is wanted, with its own backoff, and never counts as a crash (restarts.py).
After an OOM that other processes on the card caused, it watches the card and steps back to the faster
plan when their memory is back: a stop at the next step boundary and a restart (deescalation.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import structlog
import tenacity

from tamer.config import RunConfig, config_from_dict
from tamer.daemon import outcome as outcomes
from tamer.daemon.card import settled_card
from tamer.daemon.deescalation import Deescalation
from tamer.daemon.probe import device_facts
from tamer.daemon.result import after_run
from tamer.daemon.restarts import OUTSIDE_KILL, RestartPolicy, restart_policy
from tamer.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED_INT,
    EXIT_STOPPED_TERM,
    StateError,
)
from tamer.plan import DeviceFacts, Plan
from tamer.protocol import STOP_FILE
from tamer.planner.candidates import plan_key
from tamer.state.checkpoints import write_json_atomic
from tamer.state.db import Database
from tamer.state.home import Home
from tamer.state.lock import PidLock
from tamer.strategies import ladder
from tamer.units import format_size

log = structlog.get_logger("tamer.supervisor")
POLL_SECONDS = 0.25


class AttemptFailed(Exception):
    """An attempt ended in a failure the supervisor restarts from (or was stopped to step back)."""

    def __init__(self, outcome: outcomes.Outcome, escalated: bool, attempt: int | None = None) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome
        self.escalated = escalated
        self.attempt = attempt


def new_run_id(recipe: str) -> str:
    return f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_run(home: Home, config: RunConfig) -> str:
    """Register a run (status `queued`) and write its folder; returns its id."""
    db = Database(home.db_path)
    config = config.with_threads_fixed()
    run_id = new_run_id(config.recipe)
    run_dir = home.run_dir(run_id)
    (run_dir / "plans").mkdir(parents=True)
    write_json_atomic(run_dir / "run.json", {"run_id": run_id, "db_path": str(home.db_path), "config": config.to_dict()})
    db.insert_run({
        "id": run_id, "recipe": config.recipe, "preset": config.preset, "status": "queued",
        "config_json": json.dumps(config.to_dict(), sort_keys=True), "config_hash": config.config_hash(),
        "run_dir": str(run_dir), "created_at": time.time(), "steps_done": 0, "samples_consumed": 0,
        "gpu_mem_cap": int(config.gpu_mem_cap) if config.gpu_mem_cap else None,
        "host_mem_cap": int(config.host_mem_cap) if config.host_mem_cap else None,
    })
    db.event(run_id, "created", f"run created from preset {config.preset}", config=config.to_dict())
    db.close()
    return run_id


class Supervisor:
    def __init__(self, home: Home, run_id: str, progress: Any = None) -> None:
        self.home = home
        self.db = Database(home.db_path, create=False)
        self.run = self.db.run(run_id)
        self.run_id = self.run["id"]
        self.run_dir = Path(self.run["run_dir"])
        self.config = config_from_dict(json.loads(self.run["config_json"]))
        self.progress = progress
        self.lock = PidLock(self.run_dir / "lock", f"run {self.run_id} is already supervised by pid {{holder}}; "
                                                   f"wait for it, or stop it with `tamer stop {self.run_id}`")
        self.child: subprocess.Popen | None = None
        self.stop_signal: int | None = None
        self.crash_restarts = 0
        self.failure_reason: str | None = None
        self.loop_signature: tuple | None = None
        self.loop_count = 0
        self.best_step = -1
        self.outside_kills = 0
        self.signals_sent: set[int] = set()
        self.restart: RestartPolicy | None = None
        self.deescalation = Deescalation(self.db, self.run_id, self.run_dir, self.config, self._predicted_peak)

    # --- the loop -------------------------------------------------------------------------------

    def supervise(self) -> int:
        """Run attempts until the run is done, failed or stopped; returns the exit code."""
        if self.run["status"] == "done":
            raise StateError(f"run {self.run_id} already finished; `tamer show {self.run_id}` has its results")
        self.lock.acquire()
        previous_handlers = self._install_signal_handlers()
        try:
            self._prepare()
            return self._loop()
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.lock.release()
            self.db.close()

    def _prepare(self) -> None:
        for attempt in self.db.attempts(self.run_id):
            if attempt["ended_at"] is None:  # its supervisor died (kill -9, reboot): the child died with it
                self.db.update_attempt(self.run_id, attempt["attempt"], ended_at=time.time(), outcome="lost",
                                       message="the supervisor died while this attempt ran")
                self.db.event(self.run_id, "lost", f"attempt {attempt['attempt']} was lost with its supervisor", attempt=attempt["attempt"])
        if self.run["device_json"]:
            self.facts = DeviceFacts.from_dict(json.loads(self.run["device_json"]))
        else:
            self.facts = device_facts(self.config.device)
            self.db.update_run(self.run_id, device_json=json.dumps(self.facts.to_dict()))
        attempts = self.db.attempts(self.run_id)
        self.failed_plans = [Plan.from_dict(json.loads(a["plan_json"])) for a in attempts if a["outcome"] in ladder.OOM_KINDS]
        self.oom_hints = [{**json.loads(a["detail_json"] or "{}"), "plan": json.loads(a["plan_json"])}
                          for a in attempts if a["outcome"] in ladder.OOM_KINDS and a["phase"] != "eval"]
        if attempts:
            self.plan = self._current_plan(attempts[-1])
            self.reason = "resumed by `tamer resume`"
            self.db.event(self.run_id, "resume_run", f"supervisor resumed the run with plan: {self.plan.describe()}")
        else:
            self.plan, self.reason = self._first_plan()
        self.applied: list[str] = list(self.plan.rungs) if not attempts else []
        self.db.update_run(self.run_id, status="running", started_at=self.run["started_at"] or time.time(),
                           supervisor_pid=os.getpid(), ended_at=None, failure_reason=None)

    def _first_plan(self) -> tuple[Plan, str]:
        """The config's exact start_plan, else the planner's choice, else the user's batch geometry + start_rungs."""
        if self.config.start_plan is not None:
            start = {"eval_batch_size": self.config.eval_batch_size, "world_size": self.config.distributed.world_size, **self.config.start_plan}
            return Plan.from_dict(start), "start_plan from the config"
        if self.config.start_rungs or not self._planning():
            return ladder.initial_plan(self.config, self.facts), "first plan" + (
                f" (start_rungs: {', '.join(self.config.start_rungs)})" if self.config.start_rungs else "")
        choice = self._planner_choice()
        if choice is None:
            self.db.event(self.run_id, "planner", "no plan is predicted to fit with the margin: starting from the user's plan, "
                          "escalating by measurement (card order)")
            return ladder.initial_plan(self.config, self.facts), "first plan (the planner had no confident fit)"
        return choice.plan, "planner: " + choice.reason

    def _planning(self) -> bool:
        return self.config.ladder.mode == "planner" and self.facts.kind == "cuda" and bool(self.config.architecture)

    def _planner_choice(self) -> Any:
        """The planner's pick given every OOM so far, or None (no confident fit: the caller falls back)."""
        from tamer.planner.calibrate import correction_factor, observations
        from tamer.planner.candidates import PlannerPolicy, choose, device_budget, plan_key, shape_of
        from tamer.planner.estimate import Workload

        policy = PlannerPolicy.from_config(self.config)
        shape = shape_of(self.config)
        correction = correction_factor(observations(self.db, shape, self.facts.name))
        budget = device_budget(self.facts.total_memory, self.config.gpu_mem_cap)
        if self.deescalation.squeezed_budget:  # other processes hold part of the card: fit what they left
            budget = min(budget, self.deescalation.squeezed_budget)
        choice = choose(self.config, self.facts, budget, policy,
                        exclude={plan_key(plan) for plan in self.failed_plans}, oom_hint=self.oom_hints or None,
                        workload=Workload.from_config(self.config, supervised_per_sequence=policy.supervised_per_sequence),
                        correction=correction)
        if choice is not None:
            self.db.event(self.run_id, "planner", choice.reason, plan=choice.plan.to_dict(), predicted=choice.predicted.to_dict(),
                          correction=correction)
        return choice

    def _next_plan(self, outcome: outcomes.Outcome) -> ladder.LadderDecision:
        """After an OOM the planner steers (when planning and it has a confident fit), else the ladder."""
        if outcome.escalate and outcome.phase != "eval" and self._planning():
            self.failed_plans.append(self.plan)
            if not self.deescalation.squeezed_budget:  # a squeeze says nothing of the plan's estimate: the budget shrinks instead
                self.oom_hints.append({**outcome.to_dict(), "plan": self.plan.to_dict()})
            choice = self._planner_choice()
            if choice is not None:
                applied = [rung for rung in choice.plan.rungs if rung not in self.plan.rungs] or ["planner"]
                return ladder.LadderDecision(plan=choice.plan, applied=applied, reason=f"{outcome.kind} in {outcome.phase}: planner: {choice.reason}",
                                             escalated=True)
        return ladder.next_plan(self.plan, outcome, self.facts, self.config.ladder.order)

    def _current_plan(self, attempt: dict[str, Any]) -> Plan:
        """The plan an attempt ended with: the child may have split its micro-batch in process."""
        updated = self.run_dir / "attempts" / str(attempt["attempt"]) / "plan.json"
        return Plan.from_dict(json.loads(updated.read_text())) if updated.is_file() else Plan.from_dict(json.loads(attempt["plan_json"]))

    def _loop(self) -> int:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(AttemptFailed),
            stop=lambda state: self.crash_restarts > self.config.max_restarts or self.stop_signal is not None,
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_restart,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._attempt()
        except AttemptFailed as failure:
            if self.stop_signal is not None:
                return self._finish("stopped", self._stop_exit_code(), "stopped by signal during a restart")
            return self._finish("failed", EXIT_FAILED,
                                f"gave up after {self.crash_restarts - 1} restarts (max_restarts {self.config.max_restarts}): "
                                f"{failure.outcome.kind}: {failure.outcome.message}")
        raise AssertionError("unreachable")

    def _wait(self, retry_state: tenacity.RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, AttemptFailed) and failure.escalated or self.restart is None:
            return 0.0  # a new plan: waiting would not make it fit better
        return self.restart.wait_seconds

    def _sleep(self, seconds: float) -> None:
        """Wait before a restart, ending early when a stop signal comes (outside-kill waits reach 10 minutes)."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_SECONDS, left))

    def _before_restart(self, retry_state: tenacity.RetryCallState) -> None:
        seconds = retry_state.next_action.sleep if retry_state.next_action else 0.0
        failure = retry_state.outcome.exception()
        restart = self.restart if not failure.escalated else None
        accounting = ""
        if restart is not None and not restart.counted:
            accounting = f" (outside kill {self.outside_kills} in a row; not counted toward max_restarts or the crash-loop guard)"
        elif restart is not None:
            accounting = f" (restart {self.crash_restarts} of max_restarts {self.config.max_restarts})"
        self.db.event(self.run_id, "restart", f"restarting in {seconds:.1f} s after {failure.outcome.kind}{accounting}: {self.reason}",
                      attempt=failure.attempt, wait_seconds=seconds, outcome=failure.outcome.kind, plan=self.plan.to_dict(),
                      cause=restart.cause if restart else "deescalation" if self.reason.startswith("de-escalated") else "escalation",
                      counted=restart.counted if restart else False)
        if seconds > 0:
            self.reason = f"{self.reason}; after waiting {seconds:.1f} s"
        self.restart = None
        if self.progress is not None:  # show the failure and the restart now, not after the backoff
            self.progress.finish(self.db, self.run_id)

    def _attempt(self) -> int:
        if self.stop_signal is not None:  # the signal came while waiting to restart
            return self._finish("stopped", self._stop_exit_code(), f"stopped by the user at step {self._steps_done()}")
        number = self.db.next_attempt_number(self.run_id)
        plan_path = self.run_dir / "plans" / f"attempt-{number}.json"
        self.plan = ladder.for_child(self.plan, self.config)
        write_json_atomic(plan_path, self.plan.to_dict())
        started = self.plan  # the child may halve its micro-batch in process: squeezes are of this plan
        returncode, outcome, report, peak_rss = self._run_child(number)
        stats = outcome.memory_stats or {}
        training_oom = outcome.kind == "cuda_oom" and outcome.phase != "eval"
        card = settled_card() if training_oom else None  # what else held the card when ours ran out
        stepping_back = outcome.kind == "stopped" and self.stop_signal is None and self.deescalation.pending is not None
        message = f"stopped by tamer to step back to a faster plan at step {self._steps_done()}" if stepping_back else outcome.message
        self.db.update_attempt(
            self.run_id, number, ended_at=time.time(), exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None, outcome=outcome.kind, phase=outcome.phase,
            micro_batch_size=outcome.micro_batch_size, message=message,
            detail_json=json.dumps({**outcome.to_dict(), "peak_host_rss": peak_rss, "card": card.to_dict() if card else None}, default=str),
            peak_allocated=stats.get("peak_allocated"), peak_reserved=stats.get("peak_reserved"),
        )
        log.info("attempt_end", run_id=self.run_id, attempt=number, outcome=outcome.kind, phase=outcome.phase, message=message)
        if outcome.kind == "done":
            code = self._finish("done", EXIT_OK, None)
            after_run(self.db, self.run_id, self.run_dir, self.config, lambda: self.stop_signal is not None)
            return code
        if stepping_back:
            self._step_back(number, outcome)
        self.deescalation.drop_pending()
        if outcome.kind == "stopped" or self.stop_signal is not None:
            return self._finish("stopped", self._stop_exit_code(), f"stopped by the user at step {self._steps_done()}")
        if not outcome.retryable:
            code = (report or {}).get("exit_code") or EXIT_FAILED
            return self._finish("failed", code, outcome.message)
        self.plan = self._current_plan({"attempt": number, "plan_json": self.plan.to_json()})
        on_card = self.deescalation.oom(started, card) if training_oom else ""
        decision = self._next_plan(outcome)
        if decision.plan is None:
            peak = self._peak_text()
            return self._finish("failed", EXIT_FAILED, f"out of memory and nothing left to try: {decision.reason}; {peak}")
        if decision.escalated or decision.applied:
            squeeze = self.deescalation.escalated(number, started, outcome, card) if training_oom else None
            self.db.event(self.run_id, "escalate", decision.reason + (f"; {on_card}" if on_card else ""), attempt=number,
                          applied=decision.applied, skipped=decision.skipped, old_plan=self.plan.to_dict(), new_plan=decision.plan.to_dict(),
                          card=card.to_dict() if card else None, squeeze=squeeze.to_dict() if squeeze else None)
        else:
            loop = self._count_restart(number, outcome)
            if loop:
                return self._finish("failed", EXIT_FAILED, loop)
        self.plan, self.reason, self.applied = decision.plan, decision.reason, decision.applied
        raise AttemptFailed(outcome, escalated=bool(decision.applied), attempt=number)

    def _step_back(self, number: int, outcome: outcomes.Outcome) -> None:
        """The child stopped at a step boundary for a step back: restart at once under the better plan."""
        better, decision, detail = self.deescalation.take(number)
        self.failed_plans = [plan for plan in self.failed_plans if plan_key(plan) != decision.squeeze.key]
        self.oom_hints = [hint for hint in self.oom_hints if plan_key(Plan.from_dict(hint["plan"])) != decision.squeeze.key]
        self.db.event(self.run_id, "deescalate", f"stepped back to {better.describe()}: {decision.reason}", attempt=number,
                      old_plan=self.plan.to_dict(), new_plan=better.to_dict(), **detail)
        self.plan, self.reason, self.applied = better, f"de-escalated: {decision.reason}", []
        self.restart = None
        raise AttemptFailed(outcome, escalated=True, attempt=number)

    def _predicted_peak(self, plan: Plan) -> int | None:
        """The planner's predicted peak reserved bytes for `plan`, when it plans for this run."""
        if not self._planning():
            return None
        from tamer.planner.calibrate import correction_factor, observations
        from tamer.planner.candidates import shape_of
        from tamer.planner.estimate import Workload, estimate

        shape = shape_of(self.config)
        workload = Workload.from_config(self.config, supervised_per_sequence=self.config.planner.supervised_per_sequence)
        correction = correction_factor(observations(self.db, shape, self.facts.name))
        return estimate(shape, plan, workload).with_correction(correction).reserved

    def _count_restart(self, number: int, outcome: outcomes.Outcome) -> str | None:
        """Account for a same-plan restart and decide its wait (self.restart); why to give up, or None.
        An outside kill counts only toward its own backoff, which progress resets."""
        attempt = next(a for a in self.db.attempts(self.run_id) if a["attempt"] == number)
        loop = None
        if outcome.kind == OUTSIDE_KILL:
            progressed = (attempt["last_step"] or -1) > self.best_step
            self.best_step = max(self.best_step, attempt["last_step"] or -1)
            self.outside_kills = 1 if progressed else self.outside_kills + 1
        else:
            self.crash_restarts += 1
            loop = self._crash_loop(attempt, outcome)
        self.restart = restart_policy(outcome.kind, self.crash_restarts, self.outside_kills, self.config)
        return loop

    def _crash_loop(self, attempt: dict[str, Any], outcome: outcomes.Outcome) -> str | None:
        """Why to give up now, or None: the same failure at the same step `crash_loop_limit` times in a
        row with no progress. Also resets the restart budget after a healthy attempt."""
        if attempt["first_step_at"] and attempt["ended_at"] - attempt["first_step_at"] >= self.config.healthy_seconds:
            self.crash_restarts = 1  # this failure only: the budget is for failures close together
        progressed = (attempt["last_step"] or -1) > self.best_step
        self.best_step = max(self.best_step, attempt["last_step"] or -1)
        signature = (outcome.kind, outcome.step, outcome.phase, outcome.message[:120])
        self.loop_count = 1 if progressed or signature != self.loop_signature else self.loop_count + 1
        self.loop_signature = signature
        if self.loop_count >= self.config.crash_loop_limit:
            where = f" at step {outcome.step}" if outcome.step is not None else ""
            return (f"crash loop: {outcome.kind}{where} {self.loop_count} times in a row with no progress: {outcome.message}")
        return None

    # --- the child ------------------------------------------------------------------------------

    def _command(self, number: int) -> list[str]:
        """The child's command line: the child module, or torchrun launching one per process."""
        child = ["-m", "tamer.engine.child", str(self.run_dir), str(number)]
        if self.plan.world_size == 1:
            return [sys.executable, *child]
        spread = self.config.distributed
        launcher = [sys.executable, "-m", "tamer.engine.launch", "--nproc-per-node", str(spread.nproc_per_node),
                    "--nnodes", str(spread.nnodes), "--max-restarts", "0", "--monitor-interval", "0.1"]
        if spread.nnodes == 1:
            launcher.append("--standalone")
        elif spread.node_rank is not None:  # static rendezvous: rank 0's node is the master
            host, _, port = spread.rdzv_endpoint.rpartition(":")
            launcher += ["--node-rank", str(spread.node_rank), "--master-addr", host, "--master-port", port]
        else:
            launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", spread.rdzv_endpoint, "--rdzv-id", spread.rdzv_id or self.run_id]
        return launcher + child

    def _run_child(self, number: int) -> tuple[int, outcomes.Outcome, dict | None, int]:
        """Run attempt `number` to its end: (exit status, its classified outcome, the report behind it, peak host RSS)."""
        attempt_dir = self.run_dir / "attempts" / str(number)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        self.attempt_dir = attempt_dir
        env = {**os.environ, **self.plan.env, "TAMER_SUPERVISOR_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if self.config.torch_threads:  # also what torchrun would otherwise set to 1 for its ranks, with a warning
            env["OMP_NUM_THREADS"] = str(self.config.torch_threads)
        env.pop("TAMER_PARENT_PID", None)
        self.signals_sent = set()
        events_before = outcomes.read_memory_events()
        with open(attempt_dir / "child.log", "ab") as child_log:
            self.child = subprocess.Popen(self._command(number), stdout=child_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.db.insert_attempt({
            "run_id": self.run_id, "attempt": number, "plan_json": self.plan.to_json(), "plan_summary": self.plan.describe(),
            "rungs_applied": json.dumps(self.applied), "reason": self.reason, "pid": self.child.pid,
            "started_at": time.time(), "world_size": self.plan.world_size,
        })
        self.db.event(self.run_id, "attempt_start", f"attempt {number} (pid {self.child.pid}): {self.plan.describe()}",
                      attempt=number, plan=self.plan.to_dict(), reason=self.reason)
        peak_rss = 0
        hung = False
        started = time.time()
        ranks = RankWatch(attempt_dir) if self.plan.world_size > 1 else None
        while (returncode := self.child.poll()) is None:
            peak_rss = max(peak_rss, _rss(self.child.pid))
            if ranks is not None:
                ranks.poll()
            if self.progress is not None:
                self.progress.update(self.db, self.run_id, number)
            squeezed = self.deescalation.split(number, attempt_dir, self.plan, self._child_pids)
            if squeezed is not None:
                self.db.event(self.run_id, "squeeze", f"the in-process micro-batch split of attempt {number} was a squeeze: other "
                              f"processes held {format_size(squeezed.others)}; tamer steps back when it passes", attempt=number,
                              squeeze=squeezed.to_dict())
            if self.stop_signal is None and self.deescalation.poll(number, attempt_dir, self._child_pids):
                self.signals_sent.add(signal.SIGTERM)  # the stop file: tamer asked it to stop
                log.info("deescalate_requested", run_id=self.run_id, attempt=number, reason=self.deescalation.pending.reason)
            silence, deadline, phase = self._silence(attempt_dir, started)
            if silence > deadline and not hung:
                hung = True
                self.db.event(self.run_id, "hang", f"no heartbeat for {silence:.0f} s in {phase} (deadline {deadline:.0f} s): killing the child",
                              attempt=number, phase=phase, silence=silence, deadline=deadline)
                self._kill_child(attempt_dir)
            time.sleep(POLL_SECONDS)
        if self.progress is not None:
            self.progress.update(self.db, self.run_id, number)
        self.child = None
        if self.plan.world_size > 1:
            _kill_ranks(attempt_dir, signal.SIGKILL)  # none should be left; never leave one holding a GPU
            oom_killed = returncode != 0 and outcomes.detect_oom_kill(events_before, outcomes.read_memory_events())
            reports = {}
            for path in attempt_dir.glob("exit-rank*.json"):
                reports[int(path.stem.removeprefix("exit-rank"))] = json.loads(path.read_text())
            outcome = outcomes.classify_group(returncode, reports, self.plan.world_size, oom_killed=oom_killed, hung=hung,
                                              stop_requested=(attempt_dir / STOP_FILE).exists(), died_first=ranks.finish() if ranks else None)
            return returncode, outcome, reports.get(outcome.rank) if outcome.rank is not None else None, peak_rss
        oom_killed = returncode == -signal.SIGKILL and outcomes.detect_oom_kill(events_before, outcomes.read_memory_events())
        report_path = attempt_dir / "exit.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        outcome = outcomes.classify(returncode, report, oom_killed=oom_killed, hung=hung, signals_sent=frozenset(self.signals_sent))
        return returncode, outcome, report, peak_rss

    def _child_pids(self) -> set[int]:
        """The child and its descendants (torchrun's ranks), as NVML would list them outside a container."""
        if self.child is None:
            return set()
        try:
            process = psutil.Process(self.child.pid)
            return {process.pid, *(descendant.pid for descendant in process.children(recursive=True))}
        except psutil.Error:
            return set()

    def _kill_child(self, attempt_dir: Path) -> None:
        """SIGKILL the child, and with torchrun every rank too (they run in sessions of their own)."""
        self.signals_sent.add(signal.SIGKILL)
        if self.child is not None and self.child.poll() is None:
            os.kill(self.child.pid, signal.SIGKILL)
        _kill_ranks(attempt_dir, signal.SIGKILL)

    def _silence(self, attempt_dir: Path, started: float) -> tuple[float, float, str]:
        """(seconds since the stalest rank's last heartbeat, the deadline for its phase, the phase)."""
        beats = sorted(attempt_dir.glob("heartbeat*")) or [attempt_dir / "heartbeat"]
        worst = (0.0, 1.0, "load")
        for heartbeat in beats:
            try:
                stamp = heartbeat.stat().st_mtime
                phase, first_step = (heartbeat.read_text().split() + ["load", "1"])[:2]
            except (OSError, ValueError):
                stamp, phase, first_step = started, "load", "1"
            silence = time.time() - max(stamp, started)
            deadline = self.config.watchdog.deadline(phase, first_step == "1")
            if silence / deadline > worst[0] / worst[1]:
                worst = (silence, deadline, phase)
        return worst

    # --- signals and endings --------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        def forward(signum: int, frame: Any) -> None:
            first = self.stop_signal is None
            self.stop_signal = signum
            if self.child is not None and self.child.poll() is None:
                # First signal: the child checkpoints at the next step boundary. A second: kill it.
                if self.plan.world_size > 1:  # ranks learn it from the stop file, all after the same step
                    if first:
                        (self.attempt_dir / STOP_FILE).touch()
                    else:
                        self._kill_child(self.attempt_dir)
                else:
                    self.signals_sent.add(signal.SIGTERM if first else signal.SIGKILL)
                    os.kill(self.child.pid, signal.SIGTERM if first else signal.SIGKILL)

        return {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _stop_exit_code(self) -> int:
        return EXIT_STOPPED_INT if self.stop_signal == signal.SIGINT else EXIT_STOPPED_TERM

    def _steps_done(self) -> int:
        return self.db.run(self.run_id)["steps_done"] or 0

    def _peak_text(self) -> str:
        peaks = [a["peak_reserved"] or 0 for a in self.db.attempts(self.run_id)]
        rss = [json.loads(a["detail_json"] or "{}").get("peak_host_rss") or 0 for a in self.db.attempts(self.run_id)]
        if any(peaks):
            return f"highest GPU memory reserved: {format_size(max(peaks))}"
        return f"highest host memory (RSS): {format_size(max(rss or [0]))}"

    def _finish(self, status: str, code: int, reason: str | None) -> int:
        self.db.update_run(self.run_id, status=status, ended_at=time.time(), failure_reason=reason, exit_code=code, supervisor_pid=None)
        kind = {"done": "finish", "failed": "failed", "stopped": "stopped"}[status]
        self.db.event(self.run_id, kind, reason or f"run finished: {self._steps_done()} steps")
        self.failure_reason = reason
        return code


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

    def __init__(self, attempt_dir: Path) -> None:
        self.attempt_dir = attempt_dir
        self.pids: dict[int, int] = {}
        self.died_first: int | None = None

    def poll(self) -> None:
        if self.died_first is not None:
            return
        self.pids = {**rank_pids(self.attempt_dir), **self.pids}
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
            text = (self.attempt_dir / "child.log").read_text(errors="replace")
        except OSError:
            return None
        match = re.search(r"failed \(exitcode: -?\d+\) local_rank: (\d+)", text)
        return int(match.group(1)) if match else None

    def finish(self) -> int | None:
        """After the attempt: the first rank seen to exit, else the one torchrun logged."""
        if self.died_first is None:
            self.poll()
        return self.died_first if self.died_first is not None else self.first_failure_logged()


def rank_pids(attempt_dir: Path) -> dict[int, int]:
    """rank -> pid of a torchrun attempt's ranks, from the `pid-rank<r>` files they write at start."""
    pids = {}
    for path in attempt_dir.glob("pid-rank*"):
        try:
            pids[int(path.name.removeprefix("pid-rank"))] = int(path.read_text())
        except ValueError:  # being written
            continue
    return pids


def _kill_ranks(attempt_dir: Path, signum: int) -> None:
    """Signal every rank of a torchrun attempt that is still alive."""
    for pid in rank_pids(attempt_dir).values():
        try:
            if psutil.Process(pid).cmdline()[-1:] == [attempt_dir.name]:  # still that rank, not a reused pid
                os.kill(pid, signum)
        except (OSError, psutil.Error):
            pass
