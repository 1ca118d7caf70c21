"""The interface every tracker implements, and the checks before a run starts.

A tracker run is opened once per supervisor session (`start`, given the id it returned the first time, so
every attempt and resume of a tamer run lands in one tracker run), fed metrics by optimizer step, parameters
and events in the order they happened, flushed after each batch, and closed with the run's status.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tamer.config import RunConfig
from tamer.errors import ConfigError

MODULES = {
    "tensorboard": ("tamer.trackers.tensorboard", "tensorboard"),
    "mlflow": ("tamer.trackers.mlflow", "mlflow"),
    "wandb": ("tamer.trackers.wandb", "wandb"),
}
"""Tracker name -> (tamer's module for it, the package it needs)."""


@dataclass(frozen=True)
class RunContext:
    """What a tracker needs to know of the run: its runs row, its config, the home and the run folder."""

    run: dict[str, Any]
    config: RunConfig
    home: Path
    run_dir: Path


class Tracker(Protocol):
    name: str

    def start(self, external_id: str | None, parameters: dict[str, str], resumed_after: int) -> str | None:
        """Open (or reopen) the tracker run; its id to store, if the tracker has one. `resumed_after`: the last step
        written by an earlier session (0 for a new run)."""

    def parameters(self, values: dict[str, str]) -> None:
        """Record parameters (the plan of a new attempt)."""

    def metrics(self, step: int, values: dict[str, float], wall_time: float) -> None:
        """Record metric values at an optimizer step."""

    def event(self, step: int, kind: str, text: str, alert: bool, wall_time: float) -> None:
        """Record an event at the step it happened after; `alert` for plan changes and failures."""

    def flush(self) -> None:
        """Make everything recorded so far durable (called before the forwarding cursor is saved)."""

    def finish(self, status: str | None) -> None:
        """Close the tracker run; `status` is the run's (done, failed, stopped; running when supervision ends early)."""


def missing(names: list[str]) -> list[str]:
    """The trackers among `names` whose package is not installed."""
    return [name for name in names if importlib.util.find_spec(MODULES[name][1]) is None]


def check_installed(config: RunConfig) -> None:
    """A ConfigError, before the run starts, for a configured tracker whose package is not installed."""
    absent = missing(config.trackers)
    if absent:
        extras = ",".join(absent)
        raise ConfigError(
            f"trackers: {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} configured but not installed; "
            f"pip install 'tamer[{extras}]', or drop {'it' if len(absent) == 1 else 'them'} from trackers"
        )


def open_tracker(name: str, context: RunContext) -> Tracker:
    """A tracker instance for the run (imports the tracker's package: tens of milliseconds to seconds)."""
    module = importlib.import_module(MODULES[name][0])
    return module.TRACKER(context)
