"""The supervisor: spawn the child -> watch it -> classify its exit -> ask the policy -> respawn.

This module is the glue and the record keeper: it runs each attempt through runner.py (which starts,
watches and signals processes), records everything in the database, and acts on what policy.py decides
(which decides and runs nothing): finish the run, restart the same plan after a wait, escalate to a plan
that saves memory, or step back. It never initialises CUDA (device facts come from NVML or a throwaway
probe), so the child gets the whole card, and it outlives every child. Restarts after failures that
escalation cannot fix (crash, hang, a lost child) back off exponentially and are bounded by
`max_restarts`; OOMs restart at once under the ladder's next plan, bounded by the ladder itself. One
supervisor per run: an flock on `runs/<id>/lock`, which the kernel drops when its holder dies, even by
kill -9. A child killed from outside (a SIGKILL/SIGTERM tamer did not send, not the OOM killer) is
restarted for as long as the run is wanted, with its own backoff, and never counts as a crash
(restarts.py). After an OOM that other processes on the card caused, it watches the card and steps back
to the faster plan when their memory is back: a stop at the next step boundary and a restart
(deescalation.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from tamer.config import RunConfig, config_from_dict
from tamer.daemon import policy as policies
from tamer.daemon.card import settled_card
from tamer.daemon.deescalation import Deescalation
from tamer.daemon.mirror import RunMirror
from tamer.daemon.probe import device_facts
from tamer.daemon.result import after_run
from tamer.daemon.runner import CHILD_PROGRAM, AttemptProcess, command, environment
from tamer.errors import EXIT_STOPPED_INT, EXIT_STOPPED_TERM, EXIT_STORAGE, StateError
from tamer.notify.messages import redact_config
from tamer.outcome import Outcome
from tamer.plan import DeviceFacts, Plan
from tamer.planner.calibrate import observations
from tamer.planner.planning import Planner, managed_bytes, workload_of
from tamer.planner.shape import resolve
from tamer.protocol import OUTCOME_FILE, PLAN_FILE, RUN_ENDED, attempt_dir, local_ranks, plan_file
from tamer.recipes import profile
from tamer.state.checkpoints import write_json_atomic
from tamer.state.db import Database
from tamer.state.home import Home
from tamer.state.lock import PidLock
from tamer.strategies import ladder
from tamer.units import format_size

log = structlog.get_logger("tamer.supervisor")
POLL_SECONDS = 0.25
DISK_POLL_SECONDS = 2.0
SPACE_MARGIN = 64 * 2**20
SPACE_WITHOUT_CHECKPOINT = 256 * 2**20


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of `folder` (what an unprivileged writer may use)."""
    return shutil.disk_usage(folder).free


def space_needed(run_dir: Path) -> int:
    """Room the run needs to go on: its largest checkpoint written so far plus a tenth and a margin (256 MiB
    before the first one)."""
    sizes = [
        sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
        for folder in (run_dir / "checkpoints").glob("step-*")
        if folder.is_dir() and not folder.name.endswith(".tmp")
    ]
    return int(max(sizes) * 1.1) + SPACE_MARGIN if sizes else SPACE_WITHOUT_CHECKPOINT


def new_run_id(recipe: str) -> str:
    return f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def create_run(home: Home, config: RunConfig, data_profile: Any = None) -> str:
    """Register a run (status `queued`) and write its folder; returns its id. `data_profile` (the token lengths
    preflight measured, tamer/recipes/profile.py) goes into run.json, where the planner reads it."""
    db = Database(home.db_path)
    config = config.with_threads_fixed()
    run_id = new_run_id(config.recipe)
    run_dir = home.run_dir(run_id)
    (run_dir / "plans").mkdir(parents=True)
    spec = {"run_id": run_id, "db_path": str(home.db_path), "config": config.to_dict()}
    write_json_atomic(
        run_dir / "run.json", {**spec, "data_profile": data_profile.to_dict()} if data_profile is not None else spec
    )
    db.insert_run(
        {
            "id": run_id,
            "recipe": config.recipe,
            "preset": config.preset,
            "status": "queued",
            "config_json": json.dumps(config.to_dict(), sort_keys=True),
            "config_hash": config.config_hash(),
            "run_dir": str(run_dir),
            "created_at": time.time(),
            "steps_done": 0,
            "samples_consumed": 0,
            "gpu_mem_cap": int(config.gpu_mem_cap) if config.gpu_mem_cap else None,
            "host_mem_cap": int(config.host_mem_cap) if config.host_mem_cap else None,
        }
    )
    shape = resolve(config)
    measured = {"data_profile": data_profile.to_dict()} if data_profile is not None else {}
    db.event(
        run_id,
        "created",
        f"run created from preset {config.preset}; {shape.describe()}"
        + (f"; data: {data_profile.describe()}" if data_profile is not None else ""),
        config=redact_config(config.to_dict()),
        shape_origin=shape.origin or None,
        **measured,
    )
    db.close()
    return run_id


class Supervisor:
    """One run's supervision: attempts until it is done, failed or stopped.

    `child_program` is what the interpreter (or torchrun) runs for each attempt, RUN_DIR and ATTEMPT
    appended: the child module by default. Tests pass a fake child script that imports no torch; it is no
    config knob, so a user's run always trains with the real child."""

    def __init__(
        self, home: Home, run_id: str, progress: Any = None, *, child_program: Sequence[str] = CHILD_PROGRAM
    ) -> None:
        self.home = home
        self.db = Database(home.db_path, create=False)
        self.run = self.db.run(run_id)
        self.run_id = self.run["id"]
        self.run_dir = Path(self.run["run_dir"])
        self.config = config_from_dict(json.loads(self.run["config_json"]))
        self.progress = progress
        self.lock = PidLock(
            self.run_dir / "lock",
            f"run {self.run_id} is already supervised by pid {{holder}}; "
            f"wait for it, or stop it with `tamer stop {self.run_id}`",
        )
        self.child_program = child_program
        self.process: AttemptProcess | None = None
        self.stop_signal: int | None = None
        self.stop_requests = 0
        self.shape_source = resolve(self.config)  # the model's shape for the planner: pure arithmetic and a JSON read
        self.planner: Planner | None = None
        self.deescalation = Deescalation(self.db, self.run_id, self.run_dir, self.config, self._predicted_peak)

    # --- the loop -------------------------------------------------------------------------------

    def supervise(self) -> int:
        """Run attempts until the run is done, failed or stopped; returns the exit code."""
        if self.run["status"] == "done":
            raise StateError(f"run {self.run_id} already finished; `tamer show {self.run_id}` has its results")
        self.lock.acquire()
        previous_handlers = self._install_signal_handlers()
        mirror = RunMirror.start(self.home, self.run_id, self.config)  # trackers and notifications, from a thread
        try:
            self._prepare()
            return self._loop()
        finally:
            if mirror is not None:  # the last rows, the ending notification (after evaluation and export)
                asked = self.stop_requests
                mirror.close(lambda: self.stop_requests > asked)  # a stop signal now ends the wait for the last sends
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.lock.release()
            self.db.close()

    def _prepare(self) -> None:
        (self.run_dir / RUN_ENDED).unlink(missing_ok=True)  # resumed: other nodes' followers keep following
        for attempt in self.db.attempts(self.run_id):
            if attempt["ended_at"] is None:  # its supervisor died (kill -9, reboot): the child died with it
                self.db.update_attempt(
                    self.run_id,
                    attempt["attempt"],
                    ended_at=time.time(),
                    outcome="lost",
                    message="the supervisor died while this attempt ran",
                )
                self.db.event(
                    self.run_id,
                    "lost",
                    f"attempt {attempt['attempt']} was lost with its supervisor",
                    attempt=attempt["attempt"],
                )
        if self.run["device_json"]:
            self.facts = DeviceFacts.from_dict(json.loads(self.run["device_json"]))
        else:
            self.facts = device_facts(self.config.device)
            self.db.update_run(self.run_id, device_json=json.dumps(self.facts.to_dict()))
        attempts = self.db.attempts(self.run_id)
        # As the policy does live: an OOM in eval says nothing against the training plan (only the eval batch halves).
        trained_ooms = [a for a in attempts if a["outcome"] in ladder.OOM_KINDS and a["phase"] != "eval"]
        self.state = policies.PolicyState(
            failed_plans=tuple(Plan.from_dict(json.loads(a["plan_json"])) for a in trained_ooms),
            oom_hints=tuple(
                {**json.loads(a["detail_json"] or "{}"), "plan": json.loads(a["plan_json"])} for a in trained_ooms
            ),
        )
        self.policy = policies.Policy(
            policies.Limits.from_config(self.config),
            self.facts,
            ladder.usable_order(self.config, self.facts),
            planner=self._planner_choice if self._planning() else None,
        )
        if attempts:
            self.plan = self._current_plan(attempts[-1])
            self.reason = "resumed by `tamer resume`"
            self.db.event(self.run_id, "resume_run", f"supervisor resumed the run with plan: {self.plan.describe()}")
        else:
            self.plan, self.reason = self._first_plan()
        self.applied: list[str] = list(self.plan.rungs) if not attempts else []
        self.db.update_run(
            self.run_id,
            status="running",
            started_at=self.run["started_at"] or time.time(),
            supervisor_pid=os.getpid(),
            ended_at=None,
            failure_reason=None,
        )

    def _first_plan(self) -> tuple[Plan, str]:
        """The first plan and why, with its peak learning rate when it trains LoRA adapters."""
        plan, reason = self._first_plan_choice()
        if plan.lora and self.config.learning_rate_for(plan) != self.config.learning_rate:
            reason += (
                f"; peak learning rate {self.config.learning_rate_for(plan):g} for LoRA adapters (lora.learning_rate)"
            )
        return plan, reason

    def _first_plan_choice(self) -> tuple[Plan, str]:
        """The config's exact start_plan, else the planner's choice (the fastest plan with the config's start_rungs),
        else the user's batch geometry + start_rungs."""
        if self.config.start_plan is not None:
            start = {
                "eval_batch_size": self.config.eval_batch_size,
                "world_size": self.config.distributed.world_size,
                **self.config.start_plan,
            }
            return Plan.from_dict(start), "start_plan from the config"
        rungs = f" (start_rungs: {', '.join(self.config.start_rungs)})" if self.config.start_rungs else ""
        if not self._planning():
            if self.config.ladder.mode == "planner" and self.facts.kind == "cuda":
                self.db.event(
                    self.run_id,
                    "planner",
                    f"the planner cannot plan this model: {self.shape_source.describe()}; "
                    "starting from the user's plan, escalating by measurement (card order)",
                )
            return ladder.initial_plan(self.config, self.facts), "first plan" + rungs
        choice = self._planner_choice(self.state.failed_plans, self.state.oom_hints)
        if choice is None:
            self.db.event(
                self.run_id,
                "planner",
                "no plan is predicted to fit with the margin: starting from the user's plan"
                f"{rungs}, escalating by measurement (card order)",
            )
            return ladder.initial_plan(
                self.config, self.facts
            ), "first plan" + rungs + " (the planner had no confident fit)"
        return choice.plan, "planner: " + choice.reason + rungs

    def _planning(self) -> bool:
        return self.config.ladder.mode == "planner" and self.facts.kind == "cuda" and self._shape() is not None

    def _shape(self) -> Any:
        """The model's shape for the planner (tamer/planner/shape.py), read once per supervisor; None when unknown."""
        return self.shape_source.shape

    def _planner(self) -> Planner:
        """This run's planner (tamer/planner/planning.py), built once; it reads the past attempts from the database."""
        if self.planner is None:
            shape = self._shape()
            self.planner = Planner.for_run(
                self.config,
                self.facts,
                shape=shape,
                data=profile.read(self.run_dir),
                past=lambda: observations(self.db, shape, self.facts.name),
            )
        return self.planner

    def _planner_choice(self, failed_plans: tuple[Plan, ...], oom_hints: tuple[dict[str, Any], ...]) -> Any:
        """The planner's pick given every OOM so far, or None (no confident fit: the caller falls back); while other
        processes hold part of the card, it fits what they left."""
        planner = self._planner()
        choice = planner.choose(failed_plans, oom_hints, self.deescalation.squeezed_budget or None)
        if choice is not None:
            self.db.event(
                self.run_id,
                "planner",
                choice.reason,
                plan=choice.plan.to_dict(),
                predicted=choice.predicted.to_dict(),
                correction=planner.correction(),
            )
        return choice

    def _current_plan(self, attempt: dict[str, Any]) -> Plan:
        """The plan an attempt ended with: the child may have split its micro-batch in process."""
        updated = attempt_dir(self.run_dir, attempt["attempt"]) / PLAN_FILE
        return (
            Plan.from_dict(json.loads(updated.read_text()))
            if updated.is_file()
            else Plan.from_dict(json.loads(attempt["plan_json"]))
        )

    def _loop(self) -> int:
        """Attempt after attempt, each followed by the policy's action, until one ends the run."""
        while True:
            if self.stop_signal is not None:  # the signal came while waiting to restart
                return self._finish(
                    "stopped", self._stop_exit_code(), f"stopped by the user at step {self._steps_done()}"
                )
            number, outcome, action = self._attempt()
            if isinstance(action, policies.Done):
                code = self._finish("done", action.exit_code, None)
                after_run(self.db, self.run_id, self.run_dir, self.config, lambda: self.stop_signal is not None)
                return code
            if isinstance(action, policies.Stop):
                return self._finish("stopped", action.exit_code, f"stopped by the user at step {self._steps_done()}")
            if isinstance(action, policies.Fail):
                return self._finish(
                    "failed",
                    action.exit_code,
                    action.reason + (f"; {self._peak_text()}" if action.out_of_memory else ""),
                )
            if isinstance(action, policies.WaitForSpace):
                failure = self._wait_for_space(action)
                if failure is not None:
                    return self._finish("failed", EXIT_STORAGE, failure)
            if self.stop_signal is not None:  # it came after the attempt ended
                return self._finish("stopped", self._stop_exit_code(), "stopped by signal during a restart")
            self._sleep(self._restart(number, outcome, action))

    def _attempt(self) -> tuple[int, Outcome, policies.Action]:
        """Run the next attempt to its end, record how it ended, and act on the policy's answer up to the
        restart: (its number, its outcome, the action)."""
        number = self.db.next_attempt_number(self.run_id)
        plan_path = plan_file(self.run_dir, number)
        self.plan = ladder.for_child(self.plan, self.config)
        write_json_atomic(plan_path, self.plan.to_dict())
        started = self.plan  # the child may halve its micro-batch in process: squeezes are of this plan
        returncode, outcome, report, peak_rss = self._run_child(number)
        stats = outcome.memory_stats or {}
        training_oom = outcome.kind == "cuda_oom" and outcome.phase != "eval"
        card = settled_card() if training_oom else None  # what else held the card when ours ran out
        stop_signal, pending = self.stop_signal, self.deescalation.pending
        stepping_back = outcome.kind == "stopped" and stop_signal is None and pending is not None
        message = (
            f"stopped by tamer to step back to a faster plan at step {self._steps_done()}"
            if stepping_back
            else outcome.message
        )
        self.db.update_attempt(
            self.run_id,
            number,
            ended_at=time.time(),
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            outcome=outcome.kind,
            phase=outcome.phase,
            micro_batch_size=outcome.micro_batch_size,
            message=message,
            detail_json=json.dumps(
                {**outcome.to_dict(), "peak_host_rss": peak_rss, "card": card.to_dict() if card else None}, default=str
            ),
            peak_allocated=stats.get("peak_allocated"),
            peak_reserved=stats.get("peak_reserved"),
        )
        log.info(
            "attempt_end",
            run_id=self.run_id,
            attempt=number,
            outcome=outcome.kind,
            phase=outcome.phase,
            message=message,
        )
        write_json_atomic(
            attempt_dir(self.run_dir, number) / OUTCOME_FILE, {"kind": outcome.kind}
        )  # other nodes wait for it
        row = next(a for a in self.db.attempts(self.run_id) if a["attempt"] == number)
        ended = policies.Ended(
            number,
            outcome,
            self._current_plan({"attempt": number, "plan_json": self.plan.to_json()}),
            last_step=row["last_step"],
            first_step_at=row["first_step_at"],
            ended_at=row["ended_at"],
            reported_exit_code=(report or {}).get("exit_code"),
        )
        # A training OOM goes on to the next plan unless the user stopped the run: note first whether others squeezed it.
        on_card = self.deescalation.oom(started, card) if training_oom and stop_signal is None else ""
        step_back = (
            policies.PendingStepBack(Plan.from_dict(pending.squeeze.plan), pending.squeeze.key, pending.reason)
            if pending is not None
            else None
        )
        action, self.state = self.policy.decide(
            self.state,
            ended,
            stop_signal=stop_signal,
            step_back=step_back,
            squeezed=bool(self.deescalation.squeezed_budget),
        )
        if isinstance(action, policies.Done):
            return number, outcome, action
        if isinstance(action, policies.StepBack):
            better, decision, detail = self.deescalation.take(number)
            rate = self.config.learning_rate_change(ended.plan, action.plan)
            self.db.event(
                self.run_id,
                "deescalate",
                f"stepped back to {better.describe()}: {decision.reason}" + (f"; {rate}" if rate else ""),
                attempt=number,
                old_plan=started.to_dict(),
                new_plan=better.to_dict(),
                **detail,
                **self._rates(ended.plan, action.plan),
            )
            self.plan, self.reason, self.applied = action.plan, action.reason + (f"; {rate}" if rate else ""), []
        self.deescalation.drop_pending()
        if isinstance(action, policies.Escalate):
            squeeze = self.deescalation.escalated(number, started, outcome, card) if training_oom else None
            rate = self.config.learning_rate_change(ended.plan, action.plan)
            reason = action.reason + (f"; {rate}" if rate else "")
            self.db.event(
                self.run_id,
                "escalate",
                reason + (f"; {on_card}" if on_card else ""),
                attempt=number,
                applied=action.applied,
                skipped=action.skipped,
                old_plan=ended.plan.to_dict(),
                new_plan=action.plan.to_dict(),
                card=card.to_dict() if card else None,
                squeeze=squeeze.to_dict() if squeeze else None,
                **self._rates(ended.plan, action.plan),
            )
            self.plan, self.reason, self.applied = action.plan, reason, action.applied
        elif isinstance(action, (policies.Restart, policies.WaitForSpace)):
            self.plan, self.reason, self.applied = action.plan, action.reason, []
        return number, outcome, action

    def _rates(self, old: Plan, new: Plan) -> dict[str, float]:
        """The peak learning rates before and after a plan change, for the event's details."""
        return {
            "old_learning_rate": self.config.learning_rate_for(old),
            "new_learning_rate": self.config.learning_rate_for(new),
        }

    def _restart(self, number: int, outcome: Outcome, action: policies.Action) -> float:
        """Record the restart the policy chose (its plan is set): the seconds to wait before it."""
        same_plan = action if isinstance(action, policies.Restart) else None
        seconds = same_plan.wait_seconds if same_plan else 0.0  # a new plan: waiting would not make it fit better
        cause = (
            same_plan.cause
            if same_plan
            else "deescalation"
            if isinstance(action, policies.StepBack)
            else "disk_full"
            if isinstance(action, policies.WaitForSpace)
            else "escalation"
        )
        self.db.event(
            self.run_id,
            "restart",
            f"restarting in {seconds:.1f} s after {outcome.kind}{same_plan.accounting if same_plan else ''}: "
            f"{self.reason}",
            attempt=number,
            wait_seconds=seconds,
            outcome=outcome.kind,
            plan=self.plan.to_dict(),
            cause=cause,
            counted=same_plan.counted if same_plan else False,
        )
        if seconds > 0:
            self.reason = f"{self.reason}; after waiting {seconds:.1f} s"
        if self.progress is not None:  # show the failure and the restart now, not after the backoff
            self.progress.finish(self.db, self.run_id)
        return seconds

    def _wait_for_space(self, action: policies.WaitForSpace) -> str | None:
        """Wait (up to `disk_full_wait`) until the run folder's disk has room for a checkpoint again, telling
        the user why; the run's failure reason if it never comes, None to restart (or when a stop came)."""
        needed, wait = space_needed(self.run_dir), self.config.disk_full_wait
        free = free_bytes(self.run_dir)
        where = f"{format_size(free)} free where the run writes ({self.run_dir}), a checkpoint needs about {format_size(needed)}"
        if free >= needed:
            self.db.event(
                self.run_id,
                "disk_full",
                f"the disk filled up ({action.reason}); {where}: restarting",
                free=free,
                needed=needed,
            )
            return None
        if wait <= 0:
            return f"{action.reason}; {where} (disk_full_wait 0): free space, then `tamer resume {self.run_id}`"
        self.db.event(
            self.run_id,
            "disk_full",
            f"disk full: {where}; waiting up to {wait:.0f} s for space: free some, or `tamer stop {self.run_id}`",
            free=free,
            needed=needed,
            wait_seconds=wait,
        )
        if self.progress is not None:
            self.progress.finish(self.db, self.run_id)
        started = time.monotonic()
        while self.stop_signal is None:
            free = free_bytes(self.run_dir)
            if free >= needed:
                self.db.event(
                    self.run_id,
                    "disk_space",
                    f"{format_size(free)} free again after {time.monotonic() - started:.0f} s: "
                    "restarting on the same plan",
                    free=free,
                    needed=needed,
                )
                return None
            if time.monotonic() - started >= wait:
                return (
                    f"disk full: {format_size(free)} free after waiting {wait:.0f} s (disk_full_wait), a checkpoint needs "
                    f"about {format_size(needed)}; free space, then `tamer resume {self.run_id}`"
                )
            time.sleep(min(DISK_POLL_SECONDS, max(0.0, wait - (time.monotonic() - started))))
        return None

    def _sleep(self, seconds: float) -> None:
        """Wait before a restart, ending early when a stop signal comes (outside-kill waits reach 10 minutes)."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_SECONDS, left))

    def _predicted_peak(self, plan: Plan) -> int | None:
        """The planner's predicted peak reserved bytes for `plan`, when it plans for this run."""
        if not self._planning():
            return None
        return self._planner().predicted_peak(plan)

    def _managed_bytes(self, plan: Plan) -> int:
        """The child's CUDA managed memory by the planner's estimate: a paged optimizer's moments (0 for the
        others, or when the model's shape is unknown)."""
        if self._shape() is None:
            return 0
        return managed_bytes(self._shape(), plan, self._workload())

    def _workload(self) -> Any:
        """What the planner sizes a micro-batch on: this run's data as preflight measured it (chat, instruct, text:
        run.json's data_profile), else SQuAD's figures (tamer/planner/estimate.py)."""
        return workload_of(self.config, profile.read(self.run_dir))

    # --- the child ------------------------------------------------------------------------------

    def _command(self, number: int) -> list[str]:
        return command(self.run_dir, number, self.plan, self.config, self.run_id, self.child_program)

    def _run_child(self, number: int) -> tuple[int, Outcome, dict | None, int]:
        """Run attempt `number` to its end: (exit status, its classified outcome, the report behind it, peak host RSS)."""
        folder = attempt_dir(self.run_dir, number)
        folder.mkdir(parents=True, exist_ok=True)
        spread = self.config.distributed  # several machines: only node 0's ranks are ours to watch and kill
        process = self.process = AttemptProcess(
            self._command(number),
            environment(self.plan, self.config.torch_threads),
            folder,
            self.plan.world_size,
            self.config.watchdog,
            local=local_ranks(0, spread.nproc_per_node) if spread.nnodes > 1 else None,
        )
        self.db.insert_attempt(
            {
                "run_id": self.run_id,
                "attempt": number,
                "plan_json": self.plan.to_json(),
                "plan_summary": self.plan.describe(),
                "rungs_applied": json.dumps(self.applied),
                "reason": self.reason,
                "pid": process.pid,
                "started_at": time.time(),
                "world_size": self.plan.world_size,
            }
        )
        self.db.event(
            self.run_id,
            "attempt_start",
            f"attempt {number} (pid {process.pid}): {self.plan.describe()}",
            attempt=number,
            plan=self.plan.to_dict(),
            reason=self.reason,
        )
        managed = self._managed_bytes(self.plan)
        told_stop = 0  # stop requests already told: each one gets its line at once, not when the child exits
        while (returncode := process.poll()) is None:
            if self.stop_signal is not None and told_stop < self.stop_requests:
                told_stop = self.stop_requests
                self._tell_stop(number, first=told_stop == 1)
            if self.progress is not None:
                self.progress.update(self.db, self.run_id, number)
            squeezed = self.deescalation.split(number, folder, self.plan, process.child_pids, managed)
            if squeezed is not None:
                self.db.event(
                    self.run_id,
                    "squeeze",
                    f"the in-process micro-batch split of attempt {number} was a squeeze: other "
                    f"processes held {format_size(squeezed.others)}; tamer steps back when it passes",
                    attempt=number,
                    squeeze=squeezed.to_dict(),
                )
            if self.stop_signal is None and self.deescalation.poll(number, folder, process.child_pids, managed):
                process.signals_sent.add(signal.SIGTERM)  # the stop file: tamer asked it to stop
                log.info(
                    "deescalate_requested", run_id=self.run_id, attempt=number, reason=self.deescalation.pending.reason
                )
            overdue = process.overdue()
            if overdue is not None:
                silence, deadline, phase = overdue
                self.db.event(
                    self.run_id,
                    "hang",
                    f"no heartbeat for {silence:.0f} s in {phase} (deadline {deadline:.0f} s): killing the child",
                    attempt=number,
                    phase=phase,
                    silence=silence,
                    deadline=deadline,
                )
                process.kill()
            time.sleep(POLL_SECONDS)
        if told_stop < self.stop_requests:  # the child ended before the loop could say so: say it now
            if told_stop == 0:
                self._tell_stop(number, first=True)
            if self.stop_requests > 1:
                self._tell_stop(number, first=False)
        if self.progress is not None:
            self.progress.update(self.db, self.run_id, number)
        self.process = None
        outcome, report = process.finish(returncode)
        return returncode, outcome, report, process.peak_rss

    # --- signals and endings --------------------------------------------------------------------

    def _tell_stop(self, number: int, first: bool) -> None:
        name = signal.Signals(self.stop_signal).name
        if not first:
            message = f"{name} again: killing attempt {number} now, without a checkpoint of this step"
        elif self._training(number):
            message = (
                f"{name}: attempt {number} checkpoints at the end of this step, then the run stops "
                "(send it again to stop at once, without that checkpoint)"
            )
        else:
            message = f"{name}: attempt {number} is still starting (nothing to checkpoint yet): stopping it now"
        self.db.event(self.run_id, "stop_requested", message, attempt=number, signal=name)
        if self.progress is not None:
            self.progress.update(self.db, self.run_id, number)

    def _training(self, number: int) -> bool:
        """Whether attempt `number` reached its training loop (its `start` event; before it, the child stops at once)."""
        return any(event["kind"] == "start" and event["attempt"] == number for event in self.db.events(self.run_id))

    def _install_signal_handlers(self) -> dict[int, Any]:
        def forward(signum: int, frame: Any) -> None:
            first = self.stop_signal is None
            self.stop_signal = signum
            self.stop_requests += 1
            if self.process is not None:  # first signal: a checkpoint at the next step boundary; a second: kill
                self.process.request_stop(first, signum)

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
        write_json_atomic(self.run_dir / RUN_ENDED, {"status": status})  # other nodes' followers end with it
        self.db.update_run(
            self.run_id, status=status, ended_at=time.time(), failure_reason=reason, exit_code=code, supervisor_pid=None
        )
        kind = {"done": "finish", "failed": "failed", "stopped": "stopped"}[status]
        self.db.event(self.run_id, kind, reason or f"run finished: {self._steps_done()} steps")
        return code
