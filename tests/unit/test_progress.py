"""The live output of a run, read from the database: plain lines when not on a terminal (a step line per
interval, every event once) and, on a terminal, event lines above the bar with a status word in setup.
Also what `tamer daemon` prints: lines of its own, then each job's lines from when it started the job."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from rich.console import Console

from tamer.cli.progress import DaemonLines, PlainProgress, RunProgress
from tamer.state.db import Database

RUN_ID = "squad-20260101-000000-beef"


def _with_every(recorded_home, steps: int, seconds: float) -> Database:
    db = Database(recorded_home / "tamer.db", create=False)
    db.update_run(RUN_ID, config_json=json.dumps({"progress_every_steps": steps, "progress_every_seconds": seconds}))
    return db


def test_plain_progress_prints_each_event_once_and_steps_per_interval(recorded_home):
    """Polled twice, PlainProgress prints every event once and a step line for the newest step, unwrapped."""
    db = _with_every(recorded_home, steps=2, seconds=3600)
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.update(db, RUN_ID, 1)
    progress.update(db, RUN_ID, 1)
    lines = stream.getvalue().splitlines()
    assert sum("in_process_split: CUDA OOM in backward at micro-batch 8" in line for line in lines) == 1
    assert sum("checkpoint: checkpoint step 4 saved" in line for line in lines) == 1
    step_lines = [line for line in lines if " step 4/4 loss " in line]
    assert len(step_lines) == 1 and "tok/s mem 500.0 MiB RSS ETA" in step_lines[0]


def test_plain_progress_waits_for_the_interval(recorded_home):
    """After a step line, the next comes only once progress_every_steps more steps are done."""
    db = _with_every(recorded_home, steps=50, seconds=3600)
    stream = io.StringIO()
    progress = PlainProgress(stream)
    progress.printed_step, progress.printed_at = (1, 2), time.time()  # as if step 2 were just printed
    with db.write() as tables:
        tables.execute("DELETE FROM steps WHERE step = 4")
    progress.update(db, RUN_ID, 1)
    assert "step 3/4" not in stream.getvalue()
    progress.printed_at -= 3600  # an interval later the step line is due
    progress.update(db, RUN_ID, 1)
    assert "step 3/4" in stream.getvalue()


def test_terminal_progress_prints_events_above_the_bar(recorded_home):
    """On a terminal the events are lines above the bar, and the bar shows smoothed tok/s at the newest step."""
    db = Database(recorded_home / "tamer.db", create=False)
    console = Console(file=io.StringIO(), force_terminal=True, width=120, record=True)
    with RunProgress(console) as progress:
        progress.update(db, RUN_ID, 1)
    text = console.export_text()
    assert "in_process_split: CUDA OOM in backward" in text
    assert "4/4" in text and "tok/s" in text


def test_terminal_progress_names_the_setup_phase(recorded_home):
    """Before the first step the bar says what the child is doing (from its last event), not `loss -`."""
    db = Database(recorded_home / "tamer.db", create=False)
    with db.write() as tables:
        tables.execute("DELETE FROM steps")
        tables.execute("DELETE FROM events WHERE kind != 'start'")
    console = Console(file=io.StringIO(), force_terminal=True, width=120, record=True)
    with RunProgress(console) as progress:
        progress.update(db, RUN_ID, 1)
    assert "first step (warming up)" in console.export_text()


def test_a_failed_attempt_gets_its_own_line(recorded_home):
    """An attempt that ended in a failure is a line with its outcome, phase, step and message."""
    db = Database(recorded_home / "tamer.db", create=False)
    db.update_attempt(
        RUN_ID, 1, outcome="crash", phase="backward", message="killed by SIGKILL", detail_json=json.dumps({"step": 5})
    )
    stream = io.StringIO()
    PlainProgress(stream).update(db, RUN_ID, 1)
    assert "attempt 1 ended: crash in backward at step 5: killed by SIGKILL" in stream.getvalue()


def test_a_resumed_run_shows_only_what_comes_next(recorded_home):
    """Given the last event id and the time it resumed, the reader prints no earlier event or attempt end."""
    db = Database(recorded_home / "tamer.db", create=False)
    db.update_attempt(RUN_ID, 1, outcome="crash")
    last = max(event["id"] for event in db.events(RUN_ID))
    stream = io.StringIO()
    PlainProgress(stream, last, time.time()).finish(db, RUN_ID)
    assert " ended: " not in stream.getvalue() and "in_process_split" not in stream.getvalue()


def test_a_killed_attempt_line_names_its_heartbeat_phase(recorded_home):
    """A child killed without a report is said to have ended in the phase of its last heartbeat."""
    db = Database(recorded_home / "tamer.db", create=False)
    db.update_attempt(RUN_ID, 1, outcome="crash", phase=None, message="killed by SIGKILL", detail_json="{}")
    folder = recorded_home / "runs" / RUN_ID / "attempts" / "1"
    folder.mkdir(parents=True)
    (folder / "heartbeat").write_text("optimizer 0")
    stream = io.StringIO()
    PlainProgress(stream).update(db, RUN_ID, 1)
    assert "attempt 1 ended: crash in optimizer: killed by SIGKILL" in stream.getvalue()


def test_daemon_lines_show_what_a_job_records_after_the_daemon_starts_it(recorded_home):
    """DaemonLines prints the daemon's own lines as `HH:MM:SS kind: message` and, of a job, the events
    recorded once it follows it: the run's earlier events stay unprinted, as in a resumed `tamer run`."""
    db = Database(recorded_home / "tamer.db", create=False)
    stream = io.StringIO()
    lines = DaemonLines(Console(file=stream, force_terminal=False))
    lines.say("daemon_start", "daemon pid 1 serves /home/me/.tamer; 1 queued")
    with lines.following(db, RUN_ID) as follow:
        db.event(RUN_ID, "daemon_job", "the daemon (pid 1) started its supervisor (pid 2): next in the queue")
        follow()
    printed = stream.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d daemon_start: daemon pid 1 serves /home/me/.tamer; 1 queued", printed[0])
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d daemon_job: the daemon \(pid 1\) started .*", line) for line in printed)
    assert not any("in_process_split" in line or "checkpoint:" in line for line in printed)


def _compile_heavy_attempt(home, steps: int) -> Database:
    """The recorded run's steps replaced: a first step of 78 s (compiling), then `steps - 1` of 0.5 s, of 1,000 total."""
    db = Database(home / "tamer.db", create=False)
    db.update_run(RUN_ID, total_steps=1000)
    with db.write() as tables:
        tables.execute("DELETE FROM steps")
    for step in range(1, steps + 1):
        row = {
            "run_id": RUN_ID,
            "attempt": 1,
            "step": step,
            "samples_consumed": 8 * step,
            "loss": 1.0,
            "lr": 1e-3,
            "grad_norm": 1.0,
            "tokens": 1000,
            "tokens_per_s": None,
            "step_time": 78.0 if step == 1 else 0.5,
            "micro_batch_size": 8,
            "grad_accumulation": 1,
            "wall_time": 1000.0 + 78.0 + 0.5 * (step - 1),
            "sample_ids": "[]",
        }
        db.insert_step(row)
    return db


def test_the_first_steps_warm_up_sets_no_pace(recorded_home):
    """On an attempt's first step (78 s of compiling) there is no ETA, not 1,000 x 78 s, and tok/s is that step's own;
    from the second on, the ETA and tok/s come from the steps after it, also once the first step falls out of the
    smoothing window."""
    from tamer.cli.progress import SMOOTHING_STEPS, step_facts

    db = _compile_heavy_attempt(recorded_home, 1)
    first = step_facts(db, db.run(RUN_ID), 1)
    assert first["eta_seconds"] is None and first["tokens_per_s"] == pytest.approx(1000 / 78)
    db = _compile_heavy_attempt(recorded_home, 3)
    third = step_facts(db, db.run(RUN_ID), 1)
    assert third["eta_seconds"] == pytest.approx(997 * 0.5) and third["tokens_per_s"] == pytest.approx(2000)
    db = _compile_heavy_attempt(recorded_home, SMOOTHING_STEPS + 1)
    later = step_facts(db, db.run(RUN_ID), 1)
    assert later["tokens_per_s"] == pytest.approx(2000) and later["eta_seconds"] == pytest.approx(
        (999 - SMOOTHING_STEPS) * 0.5
    )


def test_tamer_status_gives_no_eta_from_a_first_step_alone(recorded_home):
    """`tamer status` on a running attempt's first step (78 s of compiling) has no ETA; from two steps on, the
    wall clock between them sets it."""
    from tamer.inspect.status import run_status
    from tamer.state.lock import PidLock

    db = _compile_heavy_attempt(recorded_home, 1)
    supervisor = PidLock(Path(db.run(RUN_ID)["run_dir"]) / "lock", "busy")
    supervisor.acquire()  # a live supervisor: a running run without one has no ETA at all
    db.update_run(RUN_ID, status="running", steps_done=1)
    assert run_status(db, RUN_ID)["eta_seconds"] is None
    db = _compile_heavy_attempt(recorded_home, 3)
    db.update_run(RUN_ID, status="running", steps_done=3)
    assert run_status(db, RUN_ID)["eta_seconds"] == pytest.approx(997 * 0.5)
    supervisor.release()
