"""Weights & Biases (`wandb`), in `tracking.wandb_mode`: online, or offline (files under RUN_DIR/wandb for
`wandb sync`); `auto` = WANDB_MODE when set, else online when WANDB_API_KEY is set, else offline. The API key
comes from the environment (or `wandb login`), never from the config.

One W&B run per tamer run: its id is tamer's run id, resumed (`resume="allow"`) by every later session.
Config: the run's config, then attempt_N/plan and attempt_N/reason. History by optimizer step: train/*,
memory/*, eval/*, events/<kind>. Plan changes and failures are W&B alerts too (online: e-mail or Slack per
the account's settings). System metrics are off: the supervisor is not the process that trains.
"""

from __future__ import annotations

import os

import wandb

from tamer.trackers.base import RunContext

EXIT_CODES = {"done": 0, "stopped": 0}


def mode(configured: str) -> str:
    """online or offline, for `tracking.wandb_mode`."""
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandB:
    name = "wandb"

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.run = None
        self.step = 0

    def start(self, external_id: str | None, parameters: dict[str, str], resumed_after: int) -> str | None:
        tracking = self.context.config.tracking
        self.step = resumed_after
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True)
        self.run = wandb.init(
            project=tracking.experiment,
            entity=tracking.wandb_entity,
            id=external_id or self.context.run["id"],
            name=self.context.run["id"],
            dir=str(self.context.run_dir),
            mode=mode(tracking.wandb_mode),
            resume="allow",
            config=parameters,
            settings=settings,
            reinit="create_new",
        )
        return self.run.id

    def parameters(self, values: dict[str, str]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        if step < self.step:  # W&B keeps one row per step, in order: an earlier step is dropped (never drawn twice)
            return
        self.step = step
        self.run.log(values, step=step)

    def event(self, step: int, kind: str, text: str, alert: bool, wall_time: float) -> None:
        self.metrics(max(step, self.step), {f"events/{kind}": 1.0}, wall_time)
        if alert:
            self.run.alert(title=f"tamer {self.context.run['id']}: {kind}", text=text, level=wandb.AlertLevel.WARN)

    def flush(self) -> None:
        return None  # wandb's own service writes (offline) or uploads (online) as it goes

    def finish(self, status: str | None) -> None:
        if self.run is not None:
            self.run.summary["tamer/status"] = status or "running"
            self.run.finish(exit_code=EXIT_CODES.get(status or "", 1))
            wandb.teardown()  # wait for wandb's service to write (offline) or upload everything, and end it


TRACKER = WandB
