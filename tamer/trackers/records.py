"""Database rows as tracker records (pure): metric names and values per optimizer step, evaluation and SQuAD
pass; the text of an event; the run's config and each attempt's plan as parameters.

Metric names: train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/step_time,
train/micro_batch_size, train/attempt, train/samples; memory/allocated_mib, memory/reserved_mib,
memory/peak_mib, memory/device_used_mib, memory/host_rss_mib; eval/loss, eval/exact_match, eval/f1;
events/<kind> (1 at the step where an event happened).
"""

from __future__ import annotations

import json
from typing import Any

from tamer.protocol import HELD_OUT

MIB = 2**20
STEP_METRICS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "step_time": "train/step_time",
    "micro_batch_size": "train/micro_batch_size",
    "attempt": "train/attempt",
    "samples_consumed": "train/samples",
}
MEMORY_METRICS = {
    "mem_allocated": "memory/allocated_mib",
    "mem_reserved": "memory/reserved_mib",
    "mem_peak": "memory/peak_mib",
    "device_used": "memory/device_used_mib",
    "host_rss": "memory/host_rss_mib",
}
ALERTS = {"escalate", "deescalate", "failed", "hang", "in_process_split", "squeeze", "lost"}
"""Event kinds a tracker shows as an alert or tag, besides the text every event gets: plan changes and failures."""
NOT_MIRRORED = ("notify_", "tracker_")
"""Event kinds about the mirror itself, kept out of the trackers."""
PARAMETER_LIMIT = 500  # characters of a parameter value (MLflow's file store takes 6000; W&B and TensorBoard more)


def step_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The metrics of one step row (memory in MiB); columns the step did not measure are left out."""
    values = {name: float(row[column]) for column, name in STEP_METRICS.items() if row.get(column) is not None}
    values.update({name: row[column] / MIB for column, name in MEMORY_METRICS.items() if row.get(column) is not None})
    return values


def eval_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The validation loss of one evals row."""
    return {"eval/loss": float(row["eval_loss"])} if row.get("eval_loss") is not None else {}


def score_metrics(row: dict[str, Any]) -> dict[str, float]:
    """One squad_scores row (exact_match or f1 on the held-out questions) as eval/<metric>; other data sets are
    named after their file: eval/<metric>/<file>."""
    name = (
        f"eval/{row['metric']}" if row["data"] == HELD_OUT else f"eval/{row['metric']}/{row['data'].rsplit('/', 1)[-1]}"
    )
    return {name: float(row["value"])}


def mirrored(event: dict[str, Any]) -> bool:
    """Whether a tracker gets this event (not the mirror's own records)."""
    return not event["kind"].startswith(NOT_MIRRORED)


def event_text(event: dict[str, Any]) -> str:
    """One line per event: `attempt N kind: message`."""
    attempt = f"attempt {event['attempt']} " if event.get("attempt") else ""
    return f"{attempt}{event['kind']}: {event['message']}"


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[f"{prefix}{key}"] = text[:PARAMETER_LIMIT]
    return flat


def run_parameters(run: dict[str, Any]) -> dict[str, str]:
    """The run's config as flat `key.sub: value` parameters (the notify section left out: it may hold a webhook URL),
    with the run id and recipe."""
    config = {key: value for key, value in json.loads(run["config_json"]).items() if key != "notify"}
    return {"run_id": run["id"], "config_hash": run["config_hash"], **_flat(config)}


def attempt_parameters(attempt: dict[str, Any]) -> dict[str, str]:
    """An attempt's plan and why it was chosen, as parameters `attempt_N/plan` and `attempt_N/reason`."""
    number = attempt["attempt"]
    return {
        f"attempt_{number}/plan": (attempt["plan_summary"] or "")[:PARAMETER_LIMIT],
        f"attempt_{number}/reason": (attempt["reason"] or "")[:PARAMETER_LIMIT],
    }
