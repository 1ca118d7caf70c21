"""What `tamer run` and `tamer resume` show while a run trains, and what `tamer logs` prints.

The supervisor polls `update(db, run_id, attempt)` a few times a second; everything shown is read
back from the database, so a terminal, a log file and `tamer logs -f` tell the same story:
- on a terminal (`RunProgress`): a bar with smoothed tok/s, memory and ETA, a status word while the
  child sets up (tokenizing, loading the model), and a line above the bar for every event (an OOM with
  its phase and size, the rung applied, a restart and why, a checkpoint saved, an evaluation);
- not on a terminal (`PlainProgress`: piped, nohup, systemd): one plain line every
  `progress_every_seconds` or `progress_every_steps` (config) with step, loss, tok/s, memory and ETA,
  and one line per event, written whole to stderr (stdout carries only the run id).
`tamer daemon` (`DaemonLines`) prints the same for each job it runs, between lines of its own.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column

from tamer import output
from tamer.inspect.history import last_heartbeat
from tamer.inspect.status import supervised, unsupervised_note
from tamer.state import queries
from tamer.state.db import Database
from tamer.units import format_size

# Steps averaged for tok/s and seconds per step: single steps swing (checkpoints, evaluation, shapes).
SMOOTHING_STEPS = 10
# What the child is doing before its first step, after the last event it wrote.
SETUP_STATUS = {
    "attempt_start": "starting (tokenizing)",
    "allocator": "tokenizing",
    "host_mem_cap": "tokenizing",
    "data": "loading the model",
    "resume": "loading the checkpoint",
    "start": "first step (warming up)",
}
DEFAULT_EVERY_SECONDS = 30.0
DEFAULT_EVERY_STEPS = 50


def event_line(event: dict[str, Any]) -> str:
    """One event as one line: `12:37:16 attempt 1 in_process_split: CUDA OOM in backward ...`."""
    attempt = f"attempt {event['attempt']} " if event["attempt"] is not None else ""
    message = " ".join(str(event["message"] or "").split())
    return f"{time.strftime('%H:%M:%S', time.localtime(event['time']))} {attempt}{event['kind']}: {message}"


def step_facts(db: Database, run: dict[str, Any], attempt: int, up_to_step: int | None = None) -> dict[str, Any] | None:
    """The newest step of `attempt` (or its step `up_to_step`), with tok/s and ETA smoothed over the steps before it.

    An attempt's first step carries its warm-up (compiling the layers, allocator growth: 78 s against 0.1 s for
    the next ones, seen with LoRA-wrapped layers), so it never sets the pace: once later steps exist tok/s leaves it
    out and the seconds per step count from its end; on the first step alone tok/s is its own and there is no ETA."""
    rows = queries.recent_steps(
        db, run["id"], attempt, up_to_step if up_to_step is not None else 2**62, SMOOTHING_STEPS + 1
    )
    if not rows:
        return None
    has_first = len(rows) <= SMOOTHING_STEPS  # fewer rows than asked for: the oldest is the attempt's first step
    rows = rows[:SMOOTHING_STEPS]
    newest = rows[0]
    paced = rows[:-1] if has_first and len(rows) > 1 else rows
    timed = sum(row["step_time"] or 0.0 for row in paced)
    speed = sum(row["tokens"] or 0 for row in paced) / timed if timed > 0 else None
    seconds_per_step = (rows[0]["wall_time"] - rows[-1]["wall_time"]) / (len(rows) - 1) if len(rows) > 1 else None
    total = run["total_steps"]
    eta = (total - newest["step"]) * seconds_per_step if total and seconds_per_step else None
    reserved, rss = newest["mem_reserved"], newest["host_rss"]
    size = format_size(reserved if reserved is not None else rss)
    memory = f"{size} reserved" if reserved is not None else (f"{size} RSS" if rss is not None else "-")
    return {**newest, "total": total, "tokens_per_s": speed, "eta_seconds": eta, "memory": memory, "memory_size": size}


def step_line(facts: dict[str, Any]) -> str:
    """One progress line: `12:37:16 step 40/120 loss 9.9931 1,234 tok/s mem 573.4 MiB RSS ETA 3 min 05 s (attempt 1)`."""
    speed = f"{facts['tokens_per_s']:,.0f} tok/s" if facts["tokens_per_s"] else "- tok/s"
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(facts['wall_time']))} step {facts['step']}/{facts['total'] or '?'} "
        f"loss {output.number(facts['loss'])} {speed} mem {facts['memory']} ETA {output.seconds(facts['eta_seconds'])} "
        f"(attempt {facts['attempt']})"
    )


def attempt_end_line(attempt: dict[str, Any], run: dict[str, Any]) -> str:
    """How an attempt ended, as one line: `12:37:16 attempt 2 ended: crash in backward at step 5: killed by SIGKILL`
    (a child killed without a report: the phase of its last heartbeat)."""
    step = json.loads(attempt["detail_json"] or "{}").get("step")
    phase = attempt["phase"] or last_heartbeat(run, attempt["attempt"])
    where = (f" in {phase}" if phase else "") + (f" at step {step}" if step is not None else "")
    message = " ".join(str(attempt["message"] or "").split())
    return (
        f"{time.strftime('%H:%M:%S', time.localtime(attempt['ended_at']))} attempt {attempt['attempt']} ended: "
        f"{attempt['outcome']}{where}" + (f": {message}" if message else "")
    )


class _Reader:
    """What is new in the database since the last look: events after the last one seen, and attempts
    that ended (a failure's own words: outcome, phase, step, message). `after_event_id`: events up to
    it were shown before (a resumed run); attempts that ended before `after_time` likewise."""

    def __init__(self, after_event_id: int = 0, after_time: float = 0.0) -> None:
        self.last_event_id = after_event_id
        self.after_time = after_time
        self.reported_attempts: set[int] = set()
        self.config: dict[str, Any] | None = None

    def new_events(self, db: Database, run_id: str) -> list[dict[str, Any]]:
        events = queries.events_after(db, run_id, self.last_event_id)
        if events:
            self.last_event_id = events[-1]["id"]
        return events

    def new_lines(self, db: Database, run_id: str) -> list[tuple[float, str, dict[str, Any] | None]]:
        """(time, line, the event or None) of everything new, oldest first."""
        lines: list[tuple[float, str, dict[str, Any] | None]] = [
            (event["time"], event_line(event), event) for event in self.new_events(db, run_id)
        ]
        for attempt in db.attempts(run_id):
            number = attempt["attempt"]
            if attempt["ended_at"] is None or number in self.reported_attempts or attempt["ended_at"] < self.after_time:
                continue
            self.reported_attempts.add(number)
            if attempt["outcome"] != "done":
                lines.append((attempt["ended_at"], attempt_end_line(attempt, db.run(run_id)), None))
        return sorted(lines, key=lambda line: line[0])

    def update(self, db: Database, run_id: str, attempt: int) -> None:
        raise NotImplementedError

    def finish(self, db: Database, run_id: str) -> None:
        """The lines of what the supervisor recorded after its child's last poll (the run's end)."""
        attempts = db.attempts(run_id)
        self.update(db, run_id, attempts[-1]["attempt"] if attempts else 0)

    def setting(self, run: dict[str, Any], key: str, default: Any) -> Any:
        if self.config is None:
            self.config = json.loads(run["config_json"] or "{}")
        return self.config.get(key) or default


class PlainProgress(_Reader):
    """Plain lines for logs: every event, and a step line every N seconds or steps."""

    def __init__(self, stream: TextIO | None = None, after_event_id: int = 0, after_time: float = 0.0) -> None:
        super().__init__(after_event_id, after_time)
        self.stream = stream
        self.printed_step: tuple[int, int] | None = None
        self.printed_at = 0.0

    def _write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def update(self, db: Database, run_id: str, attempt: int) -> None:
        run = db.run(run_id)
        for _, line, _ in self.new_lines(db, run_id):
            self._write(line)
        facts = step_facts(db, run, attempt)
        if facts is None or (facts["attempt"], facts["step"]) == self.printed_step:
            return
        every_seconds = float(self.setting(run, "progress_every_seconds", DEFAULT_EVERY_SECONDS))
        every_steps = int(self.setting(run, "progress_every_steps", DEFAULT_EVERY_STEPS))
        last_step = self.printed_step[1] if self.printed_step and self.printed_step[0] == attempt else None
        due = (
            last_step is None
            or facts["step"] - last_step >= every_steps
            or time.time() - self.printed_at >= every_seconds
            or facts["step"] == run["total_steps"]
        )
        if due:
            self._write(step_line(facts))
            self.printed_step, self.printed_at = (facts["attempt"], facts["step"]), time.time()


class RunProgress(_Reader):
    """The terminal's bar; each event printed above it as it arrives."""

    def __init__(self, console: Console, after_event_id: int = 0, after_time: float = 0.0) -> None:
        super().__init__(after_event_id, after_time)
        # Narrow enough for 80 columns; text that still does not fit folds rather than ending in `…`.
        self.progress = Progress(
            TextColumn("[bold]attempt {task.fields[attempt]}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=8),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[status]}", table_column=Column(overflow="fold")),
            TextColumn("ETA {task.fields[eta]}", table_column=Column(overflow="fold")),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=None, attempt="-", status="starting", eta="-")
        self.status = "starting"

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, db: Database, run_id: str, attempt: int) -> None:
        run = db.run(run_id)
        for _, line, event in self.new_lines(db, run_id):
            self.progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
            if event is not None and event["attempt"] == attempt and event["kind"] in SETUP_STATUS:
                self.status = SETUP_STATUS[event["kind"]]
        facts = step_facts(db, run, attempt)
        fields: dict[str, Any] = {"attempt": attempt}
        if facts is None:
            self.progress.update(self.task, total=run["total_steps"], status=self.status, eta="-", **fields)
            return
        speed = f"{facts['tokens_per_s']:,.0f} tok/s" if facts["tokens_per_s"] else "- tok/s"
        status = f"loss {output.number(facts['loss'])}  {speed}  {facts['memory_size']}"
        self.progress.update(
            self.task,
            completed=facts["step"],
            total=run["total_steps"],
            status=status,
            eta=output.seconds(facts["eta_seconds"]),
            **fields,
        )


class DaemonLines:
    """What `tamer daemon` prints on stderr: a line for what the daemon itself does (`12:00:01 daemon_start:
    ...`) and, while a job runs, the job's event and progress lines as `tamer run` prints them: above a bar
    on a terminal, plain lines otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, kind: str, message: str) -> None:
        self.console.print(
            f"{time.strftime('%H:%M:%S')} {kind}: {message}", highlight=False, markup=False, soft_wrap=True
        )

    @contextlib.contextmanager
    def following(self, db: Database, run_id: str) -> Iterator[Callable[[], None]]:
        """Within, each call of the function it gives prints what the run recorded since it was entered."""
        after = (max((event["id"] for event in db.events(run_id)), default=0), time.time())

        def newest_attempt() -> int:
            attempts = db.attempts(run_id)
            return attempts[-1]["attempt"] if attempts else 0

        if not self.console.is_terminal:
            plain = PlainProgress(self.console.file, *after)
            yield lambda: plain.update(db, run_id, newest_attempt())
            return
        with RunProgress(self.console, *after) as bar:
            yield lambda: bar.update(db, run_id, newest_attempt())


def follow(
    db: Database, run_id: str, stream: TextIO, keep_following: bool, poll_seconds: float = 1.0, every_steps: int = 1
) -> None:
    """`tamer logs`: the run's events and step lines in time order, then (with keep_following) new ones
    as they come until the run is no longer running or queued."""
    reader = _Reader()
    printed_step: tuple[int, int] | None = None
    while True:
        run = db.run(run_id)
        items: list[tuple[float, str]] = [(moment, line) for moment, line, _ in reader.new_lines(db, run_id)]
        after = printed_step or (0, 0)
        rows = queries.steps_after(db, run_id, after[0], after[1])
        for row in rows:
            if row["step"] % every_steps and row["step"] != run["total_steps"]:
                continue
            facts = step_facts(db, run, row["attempt"], row["step"])
            items.append((facts["wall_time"], step_line(facts)))
        if rows:
            printed_step = (rows[-1]["attempt"], rows[-1]["step"])
        for _, line in sorted(items, key=lambda item: item[0]):
            stream.write(line + "\n")
        stream.flush()
        if not keep_following or run["status"] not in ("running", "queued", "created"):
            return
        if supervised(run) is False:  # nothing more will come: say so rather than wait in silence
            stream.write(f"{unsupervised_note(run)}\n")
            stream.flush()
            return
        time.sleep(poll_seconds)
