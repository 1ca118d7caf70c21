"""MLflow through its client API (MlflowClient: no global active run), into `tracking.mlflow_uri`: a tracking
server's URL, or by default the file store HOME/mlruns (MLflow 3 keeps the file store in maintenance mode; tamer
sets MLFLOW_ALLOW_FILE_STORE=true for a local folder it writes). `mlflow-skinny` is enough.

One MLflow run per tamer run (experiment `tracking.experiment`, run name = tamer's run id), its id kept in the
database and reused on resume. Parameters: the config, then attempt_N/plan and attempt_N/reason. Metrics:
train/*, memory/*, eval/*, events/<kind>. Tags: tamer.status, tamer.last_event, and one tamer.<kind>.<n> per
plan change or failure (escalations on the run's page).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from tamer.trackers.base import RunContext

BATCH = 500  # metrics per log_batch call (MLflow takes at most 1000)
STATUS = {
    "done": RunStatus.to_string(RunStatus.FINISHED),
    "failed": RunStatus.to_string(RunStatus.FAILED),
    "stopped": RunStatus.to_string(RunStatus.KILLED),
}


def tracking_uri(context: RunContext) -> str:
    """The configured URI, or the file store HOME/mlruns."""
    return context.config.tracking.mlflow_uri or str(context.home / "mlruns")


def _local(uri: str) -> bool:
    return (
        uri.startswith("file:")
        or "://" not in uri
        and not uri.startswith(("databricks", "sqlite:", "postgresql", "mysql"))
    )


class MLflow:
    name = "mlflow"

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.uri = tracking_uri(context)
        if _local(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            Path(self.uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.pending: list[Metric] = []
        self.alerts = 0

    def start(self, external_id: str | None, parameters: dict[str, str], resumed_after: int) -> str | None:
        if external_id:
            self.run_id = external_id
            self.client.update_run(external_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.alerts = sum(
                1 for key in self.client.get_run(external_id).data.tags if re.match(r"tamer\.\w+\.\d+$", key)
            )
            return external_id
        name = self.context.config.tracking.experiment
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id,
            run_name=self.context.run["id"],
            tags={"tamer.run_id": self.context.run["id"], "tamer.recipe": self.context.run["recipe"]},
        )
        self.run_id = run.info.run_id
        self.parameters(parameters)
        return self.run_id

    def parameters(self, values: dict[str, str]) -> None:
        params = [Param(key, value) for key, value in values.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        timestamp = int(wall_time * 1000)
        self.pending += [Metric(key, value, timestamp, step) for key, value in values.items()]

    def event(self, step: int, kind: str, text: str, alert: bool, wall_time: float) -> None:
        self.metrics(step, {f"events/{kind}": 1.0}, wall_time)
        tags = [RunTag("tamer.last_event", text[:5000])]
        if alert:
            self.alerts += 1
            tags.append(RunTag(f"tamer.{kind}.{self.alerts}", text[:5000]))
        self.flush()
        self.client.log_batch(self.run_id, tags=tags)

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, status: str | None) -> None:
        if self.run_id is None:
            return
        self.flush()
        self.client.set_tag(self.run_id, "tamer.status", status or "running")
        if status in STATUS:
            self.client.set_terminated(self.run_id, STATUS[status], end_time=int(time.time() * 1000))


TRACKER = MLflow
