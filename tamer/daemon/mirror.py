"""The mirror: what the database holds about a run, forwarded to trackers and turned into notifications,
from a thread of the supervisor (never the training child, and no torch).

    mirror = RunMirror.start(home, run_id, config)   # None when nothing is configured
    ...                                               # the supervisor's loop, untouched
    mirror.close()                                    # last rows, the ending notification, trackers closed

Every second the thread reads the rows added since it last looked: steps, evaluations, SQuAD scores and
events, in the order they were written, and hands them to each tracker in `trackers`; then it saves how far
each tracker got (the `forwarded` table, with the tracker's own run id), so a resumed run continues the same
tracker run and a step is drawn once (a step redone after a restart is not drawn again). Escalations and
steps back become notifications as they happen, so does a stall (no step for `notify.stalled_minutes`); the
run's end (finished with loss, EM/F1 and where the model is; failed with what to do; stopped) is sent at
close, after the evaluation and export. A tracker that fails is an event (`tracker_failed`) and is dropped
for the rest of the session; training goes on. `sync` writes a run into a tracker after the fact.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from tamer.config import NotifyConfig, RunConfig, config_from_dict
from tamer.errors import ConfigError, StateError, TamerError
from tamer.notify import messages
from tamer.notify.sender import Notifier
from tamer.notify.settings import home_notify
from tamer.protocol import HEARTBEAT, HELD_OUT, attempt_dir
from tamer.state import checkpoints, queries
from tamer.state.db import Database
from tamer.state.home import Home
from tamer.state.lock import lock_holder
from tamer.trackers import records
from tamer.trackers.base import RunContext, Tracker, open_tracker

log = structlog.get_logger("tamer.mirror")
POLL_SECONDS = 1.0
NOTIFY_SINK = "notify"
CLOSE_SECONDS = 60.0  # how long close() waits for the thread to finish a batch a slow tracker holds


class TrackerSink:
    """One tracker and how far it got (its row of the `forwarded` table)."""

    def __init__(self, name: str, context: RunContext) -> None:
        self.name = name
        self.context = context
        self.tracker: Tracker | None = None
        self.written = 0  # rows and events written this session

    def forward(self, db: Database) -> None:
        """Write every row and event added since the cursor, in the order they were recorded, then flush and
        move the cursor."""
        run_id = self.context.run["id"]
        cursor = queries.forwarded(db, run_id, self.name) or {}
        step, eval_step = cursor.get("step") or 0, cursor.get("eval_step") or 0
        score_id, event_id = cursor.get("score_id") or 0, cursor.get("event_id") or 0
        if self.tracker is None:
            self.tracker = open_tracker(self.name, self.context)
            external = self.tracker.start(cursor.get("external_id"), records.run_parameters(self.context.run), step)
            queries.save_forwarded(db, run_id, self.name, time.time(), external_id=external)
        items: list[tuple[float, int, str, dict[str, Any]]] = []
        items += [(row["wall_time"] or 0.0, 0, "step", row) for row in queries.new_steps(db, run_id, step)]
        items += [(row["wall_time"] or 0.0, 1, "eval", row) for row in queries.new_evals(db, run_id, eval_step)]
        items += [(row["wall_time"] or 0.0, 2, "score", row) for row in queries.new_squad_scores(db, run_id, score_id)]
        items += [(row["time"] or 0.0, 3, "event", row) for row in queries.events_after(db, run_id, event_id)]
        if not items:
            return
        attempts = {row["attempt"]: row for row in db.attempts(run_id)}
        for wall_time, _, kind, row in sorted(items, key=lambda item: (item[0], item[1])):
            if kind == "step":
                self.tracker.metrics(row["step"], records.step_metrics(row), wall_time)
                step = max(step, row["step"])
            elif kind == "eval":
                self.tracker.metrics(row["step"], records.eval_metrics(row), wall_time)
                eval_step = max(eval_step, row["step"])
            elif kind == "score":
                self.tracker.metrics(row["step"], records.score_metrics(row), wall_time)
                score_id = max(score_id, row["id"])
            else:
                event_id = max(event_id, row["id"])
                if not records.mirrored(row):
                    continue
                if row["kind"] == "attempt_start" and row["attempt"] in attempts:
                    self.tracker.parameters(records.attempt_parameters(attempts[row["attempt"]]))
                self.tracker.event(step, row["kind"], records.event_text(row), row["kind"] in records.ALERTS, wall_time)
            self.written += 1
        self.tracker.flush()  # durable first, then the cursor: a kill between them repeats rows, never loses them
        queries.save_forwarded(
            db, run_id, self.name, time.time(), step=step, eval_step=eval_step, score_id=score_id, event_id=event_id
        )

    def finish(self, status: str | None) -> None:
        if self.tracker is not None:
            self.tracker.finish(status)


def _scores(db: Database, run_id: str) -> dict[str, Any] | None:
    """The latest held-out SQuAD pass: exact_match, f1, questions, step; None when never evaluated."""
    rows = [row for row in db.squad_scores(run_id) if row["data"] == HELD_OUT]
    if not rows:
        return None
    latest = rows[-1]
    same = {
        row["metric"]: row["value"]
        for row in rows
        if row["step"] == latest["step"] and row["wall_time"] == latest["wall_time"]
    }
    if not {"exact_match", "f1"} <= same.keys():
        return None
    return {
        "exact_match": same["exact_match"],
        "f1": same["f1"],
        "questions": latest["questions"],
        "step": latest["step"],
    }


def model_location(db: Database, run_id: str, run_dir: Path) -> str | None:
    """Where the model is: the newest export still on disk, else the newest valid checkpoint, else None."""
    for event in reversed(db.events(run_id)):
        if event["kind"] == "export":
            path = json.loads(event["detail_json"] or "{}").get("path")
            if path and Path(path).is_dir():
                return path
    checkpoint, _ = checkpoints.newest_valid(run_dir)
    return str(checkpoint.path) if checkpoint else None


class RunMirror:
    """A run's trackers and notifications, fed by a thread (see the module docstring)."""

    def __init__(
        self,
        home: Home,
        run_id: str,
        config: RunConfig,
        notify_configs: list[NotifyConfig],
        *,
        poll_seconds: float = POLL_SECONDS,
        clock: Any = time.time,
    ) -> None:
        self.home = home
        self.db = Database(home.db_path, create=False)
        self.run = self.db.run(run_id)
        self.run_id = run_id
        self.run_dir = Path(self.run["run_dir"])
        self.poll_seconds = poll_seconds
        self.clock = clock
        context = RunContext(self.run, config, home.root, self.run_dir)
        self.sinks = [TrackerSink(name, context) for name in config.trackers]
        self.notifier = Notifier(home.db_path, notify_configs, str(home.root), str(self.run_dir))
        stalls = [
            notify.stalled_minutes
            for notify in notify_configs
            if "stalled" in notify.events and notify.has_targets and notify.stalled_minutes is not None
        ]
        self.stalled_minutes = min(stalls) if stalls else None
        self.progress_at = clock()  # the newest step's time, or when supervision began
        self.stall_told = False
        if queries.forwarded(self.db, run_id, NOTIFY_SINK) is None:  # notify what happens from now on, not the past
            queries.save_forwarded(
                self.db, run_id, NOTIFY_SINK, clock(), event_id=queries.last_event_id(self.db, run_id)
            )
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"tamer-mirror {run_id}", daemon=True)

    @classmethod
    def start(cls, home: Home, run_id: str, config: RunConfig, **options: Any) -> RunMirror | None:
        """The started mirror of a run, or None when it has no tracker and no notification target (the home's
        notify.yaml included). Nothing here raises: a bad notify.yaml is an event, and the run goes on."""
        configs = [config.notify]
        try:
            shared = home_notify(home.root)
            if shared is not None:
                configs.append(shared)
        except ConfigError as error:
            _record(
                home,
                run_id,
                "notify_failed",
                f"the home's notify config is unusable ({error}); this run sends only its own notifications",
            )
        configs = [notify for notify in configs if notify.has_targets]
        if not configs and not config.trackers:
            return None
        try:
            mirror = cls(home, run_id, config, configs, **options)
        except (TamerError, OSError) as error:
            _record(
                home,
                run_id,
                "tracker_failed",
                f"the mirror could not start ({error}); training goes on without trackers and notifications",
            )
            return None
        mirror.thread.start()
        return mirror

    def _loop(self) -> None:
        while not self.stopping.wait(self.poll_seconds):
            self.pump()

    def pump(self) -> None:
        """One pass: every tracker, then the notifications of new events and a stall."""
        for sink in list(self.sinks):
            try:
                sink.forward(self.db)
            except Exception as error:  # noqa: BLE001 - a tracker never stops training
                self.sinks.remove(sink)
                text = f"{type(error).__name__}: {error}".strip()
                self.db.event(
                    self.run_id,
                    "tracker_failed",
                    f"{sink.name} stopped mirroring this run ({text[:300]}); training goes on; "
                    f"`tamer sync {self.run_id} --to {sink.name}` writes the rest later",
                    tracker=sink.name,
                    error=text,
                )
                log.warning("tracker_failed", tracker=sink.name, error=text)
        try:
            self._notify_events()
            self._check_stall()
        except Exception as error:  # noqa: BLE001 - the database is busy or gone: the next pass tries again
            log.warning("notify_pump_failed", error=str(error))

    def _notify_events(self) -> None:
        cursor = queries.forwarded(self.db, self.run_id, NOTIFY_SINK) or {}
        events = queries.events_after(self.db, self.run_id, cursor.get("event_id") or 0)
        if not events:
            return
        run = self.db.run(self.run_id)
        for event in events:
            notification = messages.from_event(event, run["status"], run["steps_done"])
            if notification is not None:
                self.notifier.notify(notification)
        queries.save_forwarded(self.db, self.run_id, NOTIFY_SINK, self.clock(), event_id=events[-1]["id"])

    def _check_stall(self) -> None:
        if self.stalled_minutes is None:
            return
        newest = queries.last_step_time(self.db, self.run_id)
        if newest is not None and newest > self.progress_at:
            self.progress_at, self.stall_told = newest, False
        if self.stall_told or self.clock() - self.progress_at < self.stalled_minutes * 60:
            return
        run = self.db.run(self.run_id)
        if run["status"] != "running":
            return
        self.stall_told = True
        self.notifier.notify(
            messages.stalled(self.run_id, (self.clock() - self.progress_at) / 60, run["steps_done"], self._phase())
        )

    def _phase(self) -> str | None:
        """The phase the newest attempt's child last wrote in its heartbeat file."""
        number = queries.last_attempt_number(self.db, self.run_id)
        try:
            return (attempt_dir(self.run_dir, number) / HEARTBEAT).read_text().split()[0] if number else None
        except (OSError, IndexError):
            return None

    def close(self, should_stop: Any = lambda: False) -> None:
        """Stop the thread, forward what is left, send the ending notification and close the trackers; waits a
        bounded time for the sends, less if `should_stop()` turns true (never raises)."""
        self.stopping.set()
        if self.thread.ident is not None:
            self.thread.join(CLOSE_SECONDS)
        hung = self.thread.is_alive()  # a tracker waits on a server that does not answer: it dies with the process
        db = Database(self.home.db_path, create=False) if hung else self.db  # the thread may still use its connection
        try:
            if hung:
                db.event(
                    self.run_id,
                    "tracker_failed",
                    f"a tracker did not finish within {CLOSE_SECONDS:.0f} s of the run's end; "
                    f"`tamer sync {self.run_id}` writes what it missed",
                )
            else:
                self.pump()
            run = db.run(self.run_id)
            if run["status"] in messages.ENDINGS:
                self.notifier.notify(
                    messages.run_ended(run, _scores(db, self.run_id), model_location(db, self.run_id, self.run_dir))
                )
            for sink in [] if hung else self.sinks:
                try:
                    sink.finish(run["status"])
                except Exception as error:  # noqa: BLE001 - a tracker never fails the run
                    db.event(
                        self.run_id,
                        "tracker_failed",
                        f"{sink.name} failed as it closed: {type(error).__name__}: {error}",
                        tracker=sink.name,
                    )
        except Exception as error:  # noqa: BLE001 - the database is gone: nothing more to tell
            log.warning("mirror_close_failed", error=str(error))
        finally:
            self.notifier.close(should_stop=should_stop)
            db.close()


def _record(home: Home, run_id: str, kind: str, message: str) -> None:
    try:
        db = Database(home.db_path, create=False)
        try:
            db.event(run_id, kind, message)
        finally:
            db.close()
    except TamerError:
        log.warning(kind, message=message)


def sync(home: Home, run_id: str, names: list[str]) -> dict[str, int]:
    """Write a run into the trackers `names` after the fact (what they have not been sent yet: all of it for a
    tracker the run never used); the rows and events written per tracker. A tracker the run's live supervisor
    mirrors is refused (it is being written)."""
    db = Database(home.db_path, create=False)
    try:
        run = db.run(run_id)
        config = config_from_dict(json.loads(run["config_json"]))
        live = [
            name
            for name in names
            if name in config.trackers
            and run["status"] == "running"
            and lock_holder(Path(run["run_dir"]) / "lock") is not None
        ]
        if live:
            raise StateError(
                f"run {run['id']} is running and its supervisor mirrors it into {', '.join(live)} as it goes; "
                "sync another tracker, or wait for the run to end"
            )
        context = RunContext(run, config, home.root, Path(run["run_dir"]))
        written = {}
        for name in names:
            sink = TrackerSink(name, context)
            sink.forward(db)
            sink.finish(run["status"])
            written[name] = sink.written
        return written
    finally:
        db.close()
