"""Predicted vs measured: past attempts on the same model shape and card, and the correction they imply.

    found = observations(db, shape, "NVIDIA H100 80GB HBM3")
    correction_factor(found)   # median measured/predicted of attempts that trained, within [0.8, 1.5]

An attempt's measured peak is the allocator's peak reserved from its exit report (`attempts.peak_reserved`,
written when the child failed) or else the largest `steps.mem_reserved` it logged (the caching
allocator keeps what it reserved, so that is its peak). Attempts that ran out of memory only give a
lower bound (they stopped at the cap), so they are shown but do not set the correction. The
prediction is recomputed from the run's stored config with today's estimator, uncorrected.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamer.config import config_from_dict
from tamer.errors import ConfigError
from tamer.plan import Plan
from tamer.planner.estimate import Estimate, ModelShape, Workload, estimate
from tamer.planner.shape import resolve as resolve_shape
from tamer.recipes import profile
from tamer.state import queries

CORRECTION_RANGE = (0.8, 1.5)
"""A correction outside this range means the estimator is wrong for this setup, not slightly off:
it is clamped, so one odd run cannot make the planner reckless or useless."""

OOM_OUTCOMES = ("cuda_oom", "host_oom")


@dataclass(frozen=True)
class Observation:
    """One past attempt: its plan, the measured peak and today's prediction for it."""

    run_id: str
    attempt: int
    plan: Plan
    outcome: str | None
    phase: str | None
    measured_reserved: int | None
    measured_allocated: int | None
    predicted: Estimate

    @property
    def trained(self) -> bool:
        """Whether the measurement is a real peak (the attempt did not run out of memory)."""
        return self.outcome not in OOM_OUTCOMES and self.measured_reserved is not None

    @property
    def ratio(self) -> float | None:
        """Measured / predicted peak reserved (None without a measurement)."""
        if self.measured_reserved is None or not self.predicted.reserved:
            return None
        return self.measured_reserved / self.predicted.reserved

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "attempt": self.attempt,
            "plan": self.plan.describe(),
            "outcome": self.outcome,
            "phase": self.phase,
            "measured_reserved": self.measured_reserved,
            "measured_allocated": self.measured_allocated,
            "predicted_reserved": self.predicted.reserved,
            "predicted_phase": self.predicted.peak_phase,
            "ratio": self.ratio,
            "trained": self.trained,
        }


def _measured(db: Any, run_id: str, attempt: dict[str, Any]) -> tuple[int | None, int | None]:
    reserved, allocated = attempt.get("peak_reserved"), attempt.get("peak_allocated")
    if reserved is None or allocated is None:
        step_reserved, step_peak = queries.step_memory_peaks(db, run_id, attempt["attempt"])
        reserved = reserved if reserved is not None else step_reserved
        allocated = allocated if allocated is not None else step_peak
    return reserved, allocated


def observations(db: Any, shape: ModelShape, device_name: str) -> list[Observation]:
    """Attempts of past runs whose model has `shape` and that ran on a card named `device_name`."""
    found = []
    for run in db.runs():
        device = json.loads(run["device_json"]) if run.get("device_json") else {}
        if device.get("name") != device_name or not run.get("config_json"):
            continue
        try:
            config = config_from_dict(json.loads(run["config_json"]))
        except ConfigError:
            continue  # written by another version of tamer: not comparable
        if resolve_shape(config).shape != shape:  # another model, or one whose config.json is gone
            continue
        workload = Workload.from_config(config, data=profile.read(Path(run["run_dir"])) if run.get("run_dir") else None)
        for attempt in db.attempts(run["id"]):
            if not attempt.get("plan_json"):
                continue
            plan = Plan.from_dict(json.loads(attempt["plan_json"]))
            reserved, allocated = _measured(db, run["id"], attempt)
            found.append(
                Observation(
                    run_id=run["id"],
                    attempt=attempt["attempt"],
                    plan=plan,
                    outcome=attempt.get("outcome"),
                    phase=attempt.get("phase"),
                    measured_reserved=reserved,
                    measured_allocated=allocated,
                    predicted=estimate(shape, plan, workload),
                )
            )
    return found


def correction_factor(found: list[Observation]) -> float:
    """Median measured/predicted peak over attempts that trained, clamped to CORRECTION_RANGE; 1.0
    when there are none."""
    ratios = [o.ratio for o in found if o.trained and o.ratio is not None]
    if not ratios:
        return 1.0
    low, high = CORRECTION_RANGE
    return min(high, max(low, statistics.median(ratios)))
