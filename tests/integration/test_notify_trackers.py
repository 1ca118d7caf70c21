"""Being told and trackers with real tiny runs, offline: a run whose supervisor is SIGKILLed mid-run and
resumed writes one TensorBoard loss point per optimizer step, one MLflow run with params, metrics and tags,
and W&B offline runs under its id, and a local webhook hears that it finished; the daemon's --notify-config
tells of its job's end and of the empty queue."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.integration.runs import TINY, pid_alive, query, start, tamer, wait_for
from tests.receivers import webhook
from tests.tracker_files import tensorboard_scalars, tensorboard_texts

pytestmark = pytest.mark.slow
TRACKED = [
    "--set",
    "trackers=[tensorboard,mlflow,wandb]",
    "--set",
    "tracking.wandb_mode=offline",
    "--set",
    "checkpoint_every=4",
    "--set",
    "restart_backoff=0",
]


def test_a_killed_and_resumed_run_draws_each_step_once_and_tells_the_webhook(tmp_path, monkeypatch):
    """Supervisor SIGKILLed at step 5 (its child dies with it), `tamer resume` redoes step 5 from checkpoint 4 (saves every 4 steps) and
    finishes: TensorBoard has steps 1-8 once each, MLflow one FINISHED run with the config and both attempts' plans,
    W&B an offline run per session under the tamer run id, and the webhook got `finished` with the final loss."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    with webhook() as receiver:
        process, run_id = start(
            "run",
            "squad",
            *TINY,
            *TRACKED,
            "--max-steps",
            "8",
            "--set",
            f"notify.webhook={receiver.url}",
            home=tmp_path,
        )
        wait_for(
            tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda rows: (rows[0][0] or 0) >= 5
        )
        child = query(tmp_path, "SELECT pid FROM attempts WHERE run_id = ? AND attempt = 1", (run_id,))[0][0]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        resumed = tamer("resume", run_id, home=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    redone = query(tmp_path, "SELECT count(*) FROM steps WHERE run_id = ? AND attempt = 2 AND step <= ?", (run_id, 5))[
        0
    ][0]
    assert redone >= 1  # the resumed attempt trained again steps the first had drawn
    folder = tmp_path / "runs" / run_id / "tensorboard"
    assert [point for point, _ in tensorboard_scalars(folder, "train/loss")] == list(range(1, 9))
    assert any("resume_run" in text for _, text in tensorboard_texts(folder, "events"))

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked to
    client = MlflowClient(tracking_uri=str(tmp_path / "mlruns"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "tamer"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == run_id and run.data.tags["tamer.status"] == "done"
    assert run.data.params["max_steps"] == "8" and {"attempt_1/plan", "attempt_2/plan"} <= run.data.params.keys()
    assert {point.step for point in client.get_metric_history(run.info.run_id, "train/loss")} == set(range(1, 9))
    assert "events/resume_run" in run.data.metrics
    assert len(list((tmp_path / "runs" / run_id / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))) == 2

    assert receiver.events() == ["finished"]
    body = receiver.bodies[0]
    final_loss = query(tmp_path, "SELECT final_loss FROM runs WHERE id = ?", (run_id,))[0][0]
    assert (
        body["run_id"] == run_id and body["facts"]["final_loss"] == final_loss and f"{final_loss:.4f}" in body["text"]
    )
    assert "checkpoints/step-8" in body["facts"]["model_path"]
    kinds = [kind for (kind,) in query(tmp_path, "SELECT kind FROM events WHERE run_id = ?", (run_id,))]
    assert "notify_sent" in kinds and "tracker_failed" not in kinds
    shown = tamer("show", run_id, home=tmp_path)
    assert "notify_sent" in shown.stdout and "finished sent to webhook" in shown.stdout and "secret" not in shown.stdout


def test_the_daemon_tells_of_its_jobs_and_the_empty_queue(tmp_path):
    """`tamer daemon --notify-config FILE --exit-when-empty`: the job's supervisor sends `finished` (the file reaches
    it through the environment), then the daemon sends `queue_empty` naming the run."""
    with webhook() as receiver:
        (tmp_path / "queue-notify.yaml").write_text(f"webhook: {receiver.url}\n")
        submitted = tamer("submit", "squad", *TINY, "--max-steps", "2", home=tmp_path)
        assert submitted.returncode == 0, submitted.stderr
        run_id = submitted.stdout.split()[0]
        served = tamer(
            "daemon",
            "--exit-when-empty",
            "--poll",
            "0.2",
            "--notify-config",
            str(tmp_path / "queue-notify.yaml"),
            home=tmp_path,
        )
        assert served.returncode == 0, served.stderr
    assert receiver.events() == ["finished", "queue_empty"]
    assert receiver.bodies[0]["run_id"] == run_id and receiver.bodies[1]["message"].startswith(
        f"{run_id}: done, step 2/2"
    )
