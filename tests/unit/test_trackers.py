"""Trackers fed from the database (no training process): the mirror's record shapes, TensorBoard event files
read back with TensorBoard's reader, an MLflow file store, a W&B offline run; one point per step across a
restart that redid steps, a resumed session and a session killed before it saved how far it got; a tracker
that fails mid-run; `tamer sync`; and the one-line error for a tracker that is not installed. Offline only."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from tamer.config import build_config
from tamer.daemon.mirror import RunMirror, TrackerSink, sync
from tamer.daemon.supervisor import create_run
from tamer.errors import ConfigError, StateError
from tamer.notify import settings
from tamer.state import queries
from tamer.state.db import Database
from tamer.state.home import Home
from tamer.trackers import base, records
from tamer.trackers.base import RunContext
from tests.tracker_files import tensorboard_scalars, tensorboard_texts, wandb_records

T0 = 1_800_000_000.0


def home_with_run(tmp_path: Path, trackers: list[str]) -> tuple[Home, str, Database]:
    home = Home.resolve(tmp_path)
    config = build_config("tiny", None, {"trackers": trackers, "device": "cpu", "tracking.wandb_mode": "offline"}, [])
    run_id = create_run(home, config)
    return home, run_id, Database(home.db_path)


def attempt(db: Database, run_id: str, number: int, at: float) -> None:
    db.insert_attempt(
        {
            "run_id": run_id,
            "attempt": number,
            "plan_json": "{}",
            "plan_summary": f"micro-batch {8 // number} x {number}",
            "rungs_applied": "[]",
            "reason": "first plan" if number == 1 else "OOM: +split_micro_batch",
            "pid": 1,
            "started_at": at,
        }
    )
    with db.write() as tables:
        tables["events"].insert(
            {
                "run_id": run_id,
                "attempt": number,
                "time": at,
                "kind": "attempt_start",
                "message": f"attempt {number}",
                "detail_json": None,
            }
        )


def step(db: Database, run_id: str, number: int, at_step: int, loss: float, at: float) -> None:
    db.insert_step(
        {
            "run_id": run_id,
            "attempt": number,
            "step": at_step,
            "samples_consumed": 8 * at_step,
            "loss": loss,
            "lr": 1e-4,
            "grad_norm": 1.5,
            "tokens": 800,
            "tokens_per_s": 400.0,
            "step_time": 2.0,
            "micro_batch_size": 8,
            "grad_accumulation": 1,
            "mem_allocated": None,
            "mem_reserved": 3 * 2**20,
            "mem_peak": None,
            "device_used": None,
            "host_rss": 2**30,
            "wall_time": at,
            "sample_ids": "[]",
        }
    )


def event(db: Database, run_id: str, number: int, kind: str, message: str, at: float) -> None:
    with db.write() as tables:
        tables["events"].insert(
            {"run_id": run_id, "attempt": number, "time": at, "kind": kind, "message": message, "detail_json": None}
        )


def first_attempt(db: Database, run_id: str) -> None:
    """Attempt 1: steps 1-6 (loss 10 - step), a checkpoint at 4, then a CUDA OOM and an escalation."""
    attempt(db, run_id, 1, T0)
    for number in range(1, 7):
        step(db, run_id, 1, number, 10.0 - number, T0 + number)
        if number == 4:
            event(db, run_id, 1, "checkpoint", "checkpoint step 4 saved in 0.1 s", T0 + 4.5)
    event(db, run_id, 1, "escalate", "CUDA OOM in backward: +split_micro_batch", T0 + 7)


def second_attempt(db: Database, run_id: str) -> None:
    """Attempt 2 resumes from step 4: redoes steps 5-6 (loss 20 - step) and goes on to 8; an evaluation and SQuAD scores at 8."""
    attempt(db, run_id, 2, T0 + 8)
    for number in range(5, 9):
        step(db, run_id, 2, number, 20.0 - number, T0 + 4 + number)
    db.insert_eval(
        {
            "run_id": run_id,
            "attempt": 2,
            "step": 8,
            "eval_loss": 2.5,
            "eval_tokens": 10,
            "eval_samples": 4,
            "eval_batch_size": 4,
            "wall_time": T0 + 13,
        }
    )
    db.insert_squad_scores(
        [
            {
                "run_id": run_id,
                "step": 8,
                "attempt": 2,
                "plan": "p",
                "metric": metric,
                "value": value,
                "questions": 4,
                "seconds": 1.0,
                "data": "held-out",
                "wall_time": T0 + 14,
            }
            for metric, value in (("exact_match", 0.25), ("f1", 0.5))
        ]
    )
    db.update_run(run_id, status="done")


def sink(home: Home, run_id: str, db: Database, name: str) -> TrackerSink:
    run = db.run(run_id)
    config = build_config("tiny", None, {"tracking.wandb_mode": "offline"}, [])
    return TrackerSink(name, RunContext(run, config, home.root, Path(run["run_dir"])))


def two_sessions(home: Home, run_id: str, db: Database, name: str) -> None:
    """The first attempt mirrored by one supervisor session, the second by a resumed one."""
    first_attempt(db, run_id)
    session = sink(home, run_id, db, name)
    session.forward(db)
    session.finish("running")
    second_attempt(db, run_id)
    session = sink(home, run_id, db, name)
    session.forward(db)
    session.finish("done")


# --- records -----------------------------------------------------------------------------------------


def test_step_rows_become_metrics_in_mib_without_missing_columns():
    """A step row's measured columns become train/* and memory/* (MiB); unmeasured ones are left out."""
    row = {
        "loss": 2.0,
        "lr": 1e-4,
        "grad_norm": None,
        "tokens_per_s": 100.0,
        "step_time": 0.5,
        "micro_batch_size": 4,
        "attempt": 2,
        "samples_consumed": 16,
        "mem_reserved": 3 * 2**20,
        "mem_allocated": None,
        "host_rss": 2**30,
    }
    values = records.step_metrics(row)
    assert (
        values["train/loss"] == 2.0 and values["memory/reserved_mib"] == 3.0 and values["memory/host_rss_mib"] == 1024.0
    )
    assert "train/grad_norm" not in values and "memory/allocated_mib" not in values and values["train/attempt"] == 2.0


def test_run_parameters_leave_the_notify_section_out():
    """Tracker parameters hold the config flattened, never the notify section (a webhook URL is a secret)."""
    config = build_config("tiny", None, {"notify.webhook": "https://hooks.slack.com/services/SECRET"}, [])
    run = {"id": "r", "config_hash": "h", "config_json": json.dumps(config.to_dict())}
    parameters = records.run_parameters(run)
    assert parameters["learning_rate"] == json.dumps(config.learning_rate) and parameters["lora.r"] == "16"
    assert not any("SECRET" in value for value in parameters.values()) and not any(
        key.startswith("notify") for key in parameters
    )


# --- TensorBoard --------------------------------------------------------------------------------------


def test_tensorboard_has_one_loss_point_per_step_across_a_restart_and_a_resume(tmp_path):
    """Steps 5-6 redone by attempt 2 and a second supervisor session: TensorBoard's reader sees steps 1-8 once each,
    the evaluation and SQuAD scores at step 8, and the events and escalation as text."""
    home, run_id, db = home_with_run(tmp_path, ["tensorboard"])
    two_sessions(home, run_id, db, "tensorboard")
    folder = home.run_dir(run_id) / "tensorboard"
    loss = tensorboard_scalars(folder, "train/loss")
    assert [point for point, _ in loss] == list(range(1, 9))
    assert [value for _, value in loss] == [
        9.0,
        8.0,
        7.0,
        6.0,
        5.0,
        4.0,
        13.0,
        12.0,
    ]  # 5-6 as first trained, 7-8 from attempt 2
    assert tensorboard_scalars(folder, "eval/loss") == [(8, 2.5)] and tensorboard_scalars(folder, "eval/f1") == [
        (8, 0.5)
    ]
    texts = [text for _, text in tensorboard_texts(folder, "events")]
    assert "attempt 1 checkpoint: checkpoint step 4 saved in 0.1 s" in texts and any(
        "escalate" in text for text in texts
    )
    assert [(at, text) for at, text in tensorboard_texts(folder, "escalations")] == [
        (6, "attempt 1 escalate: CUDA OOM in backward: +split_micro_batch")
    ]
    assert any("attempt_2/plan: micro-batch 4 x 2" in text for _, text in tensorboard_texts(folder, "parameters"))


def test_a_session_killed_before_saving_its_cursor_draws_no_point_twice(tmp_path):
    """Points written but not yet counted (the supervisor SIGKILLed between flush and cursor save) are written again
    by the next session, and TensorBoard's reader drops the orphaned copies: one point per step."""
    home, run_id, db = home_with_run(tmp_path, ["tensorboard"])
    attempt(db, run_id, 1, T0)
    for number in range(1, 4):
        step(db, run_id, 1, number, 10.0 - number, T0 + number)
    first = sink(home, run_id, db, "tensorboard")
    first.forward(db)
    for number in range(4, 7):
        step(db, run_id, 1, number, 10.0 - number, T0 + number)
    first.forward(db)
    first.finish("running")
    queries.save_forwarded(
        db, run_id, "tensorboard", time.time(), step=3, event_id=0
    )  # as if the second save never happened
    second = sink(home, run_id, db, "tensorboard")
    second.forward(db)
    second.finish("done")
    assert [point for point, _ in tensorboard_scalars(home.run_dir(run_id) / "tensorboard", "train/loss")] == list(
        range(1, 7)
    )


# --- MLflow -------------------------------------------------------------------------------------------


def test_mlflow_file_store_has_params_metrics_and_tags_in_one_run(tmp_path):
    """Both sessions write one MLflow run (its id kept in the database): config and attempt plans as params, one
    loss per step, SQuAD scores, an escalation tag, the status, and the run FINISHED."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    home, run_id, db = home_with_run(tmp_path, ["mlflow"])
    two_sessions(home, run_id, db, "mlflow")
    client = MlflowClient(tracking_uri=str(home.root / "mlruns"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "tamer"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == queries.forwarded(db, run_id, "mlflow")["external_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == run_id and run.data.params["attempt_2/reason"] == "OOM: +split_micro_batch"
    assert run.data.params["effective_batch_size"] == "8"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(point.step for point in history) == list(range(1, 9))
    assert run.data.metrics["eval/exact_match"] == 0.25 and run.data.metrics["eval/loss"] == 2.5
    assert run.data.tags["tamer.escalate.1"] == "attempt 1 escalate: CUDA OOM in backward: +split_micro_batch"
    assert run.data.tags["tamer.status"] == "done"


# --- W&B ----------------------------------------------------------------------------------------------


def test_wandb_offline_directory_has_the_run_once_per_step(tmp_path):
    """Offline W&B: the run folder holds runs whose id is tamer's run id (one per session, resumed), whose history
    has each step's loss once, the escalation as an alert, and the attempt plans in the config."""
    pytest.importorskip("wandb")
    home, run_id, db = home_with_run(tmp_path, ["wandb"])
    two_sessions(home, run_id, db, "wandb")
    files = sorted((home.run_dir(run_id) / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2
    rows = [record for path in files for record in wandb_records(path)]
    assert {record.run.run_id for record in rows if record.WhichOneof("record_type") == "run"} == {run_id}
    steps = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in rows
        if record.WhichOneof("record_type") == "history"
    ]
    loss_steps = [row["_step"] for row in steps if "train/loss" in row]
    assert loss_steps == list(range(1, 9))
    assert [record.alert.title for record in rows if record.WhichOneof("record_type") == "alert"] == [
        f"tamer {run_id}: escalate"
    ]
    configs = [
        item.key or "/".join(item.nested_key)
        for record in rows
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    ]
    assert "attempt_2/plan" in configs


# --- failures and sync --------------------------------------------------------------------------------


def test_a_tracker_that_fails_mid_run_is_an_event_and_the_others_go_on(tmp_path, monkeypatch):
    """A tracker raising while it writes is dropped with a `tracker_failed` event; TensorBoard keeps mirroring."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    home, run_id, db = home_with_run(tmp_path, ["tensorboard", "mlflow"])
    config = build_config("tiny", None, {"trackers": ["tensorboard", "mlflow"]}, [])

    class Broken:
        name = "mlflow"

        def start(self, *args):
            return "x"

        def __getattr__(self, name):  # parameters, metrics, event...: the server is gone
            def fail(*args):
                raise ConnectionError("tracking server went away")

            return fail

    real_open = base.open_tracker
    monkeypatch.setattr(
        "tamer.daemon.mirror.open_tracker",
        lambda name, context: Broken() if name == "mlflow" else real_open(name, context),
    )
    mirror = RunMirror(home, run_id, config, [])
    first_attempt(db, run_id)
    mirror.pump()
    second_attempt(db, run_id)
    mirror.pump()
    mirror.close()
    (failed,) = [e for e in db.events(run_id) if e["kind"] == "tracker_failed"]
    assert failed["message"].startswith(
        "mlflow stopped mirroring this run (ConnectionError: tracking server went away)"
    )
    assert f"tamer sync {run_id} --to mlflow" in failed["message"]
    assert len(tensorboard_scalars(home.run_dir(run_id) / "tensorboard", "train/loss")) == 8


def test_sync_writes_a_finished_run_once(tmp_path):
    """`sync` writes every row of a run that never used the tracker; a second sync finds nothing new."""
    home, run_id, db = home_with_run(tmp_path, [])
    first_attempt(db, run_id)
    second_attempt(db, run_id)
    assert sync(home, run_id, ["tensorboard"])["tensorboard"] > 8
    assert sync(home, run_id, ["tensorboard"]) == {"tensorboard": 0}
    assert len(tensorboard_scalars(home.run_dir(run_id) / "tensorboard", "train/loss")) == 8


def test_sync_refuses_a_tracker_the_live_supervisor_writes(tmp_path):
    """A running run whose supervisor holds its lock and mirrors into TensorBoard cannot be synced into TensorBoard."""
    from tamer.state.lock import PidLock

    home, run_id, db = home_with_run(tmp_path, ["tensorboard"])
    db.update_run(run_id, status="running")
    lock = PidLock(home.run_dir(run_id) / "lock", "held")
    lock.acquire()
    try:
        with pytest.raises(StateError, match="mirrors it into tensorboard"):
            sync(home, run_id, ["tensorboard"])
    finally:
        lock.release()


def test_a_configured_tracker_that_is_not_installed_is_a_config_error(monkeypatch):
    """trackers: [mlflow] without mlflow installed is one line naming the extra to install."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "mlflow" else real(name, *args)
    )
    config = build_config("tiny", None, {"trackers": ["tensorboard", "mlflow"]}, [])
    with pytest.raises(
        ConfigError, match=r"^trackers: mlflow is configured but not installed; pip install 'tamer\[mlflow\]'"
    ):
        base.check_installed(config)
    base.check_installed(build_config("tiny", None, {"trackers": ["tensorboard"]}, []))
    with pytest.raises(ConfigError, match="listed twice"):
        build_config("tiny", None, {"trackers": ["tensorboard", "tensorboard"]}, [])
