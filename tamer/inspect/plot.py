"""The picture of a run (`tamer plot`, and the image in `tamer report`): loss and memory against step,
with a vertical marker at each OOM or other failure, escalation and restart.

`plot_data(db, run_id)` computes everything drawn (testable without drawing); `figure(data, width,
height)` draws it with matplotlib (Agg, no pyplot) and returns the Figure.
"""

from __future__ import annotations

import json
from typing import Any

from tamer.inspect.history import RunRows, failures
from tamer.state.db import Database
from tamer.units import format_size

DOTS_PER_INCH = 100
# Marker kind -> how it is drawn; failure kinds not listed (crash, hang, lost...) draw as "failure".
MARKER_GROUPS = {"cuda_oom": "oom", "host_oom": "oom", "escalate": "escalate", "restart": "restart"}
MARKER_STYLES = {  # group -> (colour, line style, legend text)
    "oom": ("#d62728", "-", "out of memory"),
    "failure": ("#8c564b", "-", "other failure (crash, hang, ...)"),
    "escalate": ("#ff7f0e", "--", "escalation (new plan)"),
    "restart": ("#1f77b4", ":", "restart from a checkpoint"),
}
OOM_NAMES = {"cuda_oom": "CUDA OOM", "host_oom": "host OOM"}
MEMORY_SERIES = (  # step column -> legend label; device runs draw the first three, CPU runs host RSS
    ("mem_allocated", "allocated (torch)"),
    ("mem_reserved", "reserved (torch cache)"),
    ("device_used", "device used (NVML, all processes)"),
    ("host_rss", "host RSS"),
)


def plot_data(db: Database, run_id: str) -> dict[str, Any]:
    """The series and markers of a run's plot.

    Returns `{"run_id", "title", "device", "train": {"step", "loss"}, "redone": {"step", "loss"},
    "eval": {"step", "loss"}, "memory": {column: {"label", "step", "bytes"}}, "cap": {"bytes", "label"}
    or None, "markers": [{"step", "kind", "label"}]}`. `train` is one row per step (the latest
    attempt's); `redone` holds the rows a restart threw away.
    """
    rows = RunRows.load(db, run_id)
    run = rows.run
    device = json.loads(run["device_json"] or "{}").get("kind", "cpu")
    effective = db.effective_steps(run["id"])
    kept = {(row["attempt"], row["step"]) for row in effective}
    every_row = db.steps(run["id"])
    redone = [row for row in every_row if (row["attempt"], row["step"]) not in kept]
    evals = db.evals(run["id"])

    wanted = ("mem_allocated", "mem_reserved", "device_used") if device == "cuda" else ("host_rss",)
    memory = {}
    for column, label in MEMORY_SERIES:
        points = [(row["step"], row[column]) for row in effective if row[column] is not None]
        if column in wanted and points:
            memory[column] = {"label": label, "step": [p[0] for p in points], "bytes": [p[1] for p in points]}
    cap = None
    if device == "cuda" and run["gpu_mem_cap"]:
        cap = {"bytes": run["gpu_mem_cap"], "label": f"gpu_mem_cap {format_size(run['gpu_mem_cap'])}"}
    elif device == "cuda":
        total = json.loads(run["device_json"] or "{}").get("total_memory")
        cap = {"bytes": total, "label": f"device total {format_size(total)}"} if total else None

    markers = []
    for failure in failures(db, run["id"]):
        step = failure["step"] if failure["step"] is not None else (failure["next_resumed_from_step"] or 0) + 1
        where = [failure["phase"], f"micro-batch {failure['micro_batch_size']}" if failure["micro_batch_size"] else None]
        where_text = f" ({', '.join(part for part in where if part)})" if any(where) else ""
        name = OOM_NAMES.get(failure["outcome"], failure["outcome"])
        markers.append({"step": step, "kind": failure["outcome"], "label": f"{name} in attempt {failure['attempt']}{where_text}"})
        if failure["rungs_applied"]:
            markers.append({"step": step, "kind": "escalate", "label": "  escalate: +" + ", +".join(failure["rungs_applied"])})
    for attempt in rows.attempts[1:]:
        resumed = rows.resumed_from(attempt["attempt"])
        if resumed is not None:
            markers.append({"step": resumed, "kind": "restart", "label": f"attempt {attempt['attempt']} resumes at step {resumed}"})

    attempts = len(rows.attempts)
    title = (f"{run['id']}  ({run['status']}, {run['steps_done'] or 0}/{run['total_steps'] or '?'} steps, "
             f"{attempts} attempt{'s' if attempts != 1 else ''}, {len([m for m in markers if m['kind'] not in ('escalate', 'restart')])} failures)")
    return {
        "run_id": run["id"],
        "title": title,
        "device": device,
        "train": {"step": [row["step"] for row in effective], "loss": [row["loss"] for row in effective]},
        "redone": {"step": [row["step"] for row in redone], "loss": [row["loss"] for row in redone]},
        "eval": {"step": [row["step"] for row in evals], "loss": [row["eval_loss"] for row in evals]},
        "memory": memory,
        "cap": cap,
        "markers": markers,
    }


def _memory_unit(values: list[float]) -> tuple[str, float]:
    largest = max(values, default=0)
    return ("GiB", 1024**3) if largest >= 1024**3 else ("MiB", 1024**2)


def figure(data: dict[str, Any], width: int = 1200, height: int = 800) -> Any:
    """The matplotlib Figure of `plot_data`'s output, `width` x `height` pixels at 100 dpi."""
    # A bare Figure draws through Agg without pyplot: no global backend state, no display needed.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DOTS_PER_INCH, height / DOTS_PER_INCH), dpi=DOTS_PER_INCH, layout="constrained")
    loss_axes, memory_axes = fig.subplots(2, 1, sharex=True)
    fig.suptitle(data["title"], fontsize="medium")

    loss_axes.plot(data["train"]["step"], data["train"]["loss"], color="#2ca02c", marker=".", label="train loss")
    if data["redone"]["step"]:
        loss_axes.plot(data["redone"]["step"], data["redone"]["loss"], linestyle="none", marker="x", color="#7f7f7f",
                       label="steps lost (redone after a restart)")
    if data["eval"]["step"]:
        loss_axes.plot(data["eval"]["step"], data["eval"]["loss"], color="#9467bd", marker="o", label="validation loss")
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)

    everything = [value for series in data["memory"].values() for value in series["bytes"]]
    unit, scale = _memory_unit(everything + ([data["cap"]["bytes"]] if data["cap"] else []))
    for series in data["memory"].values():
        memory_axes.plot(series["step"], [value / scale for value in series["bytes"]], marker=".", label=series["label"])
    if data["cap"]:
        memory_axes.axhline(data["cap"]["bytes"] / scale, color="black", linestyle="-.", label=data["cap"]["label"])
    if not data["memory"]:
        memory_axes.text(0.5, 0.5, "no memory readings", transform=memory_axes.transAxes, ha="center", color="gray")
    memory_axes.set_ylabel(f"memory ({unit})")
    memory_axes.set_xlabel("optimizer step")
    memory_axes.grid(alpha=0.3)

    memory_axes.set_ylim(bottom=0)  # memory is judged against zero and the cap, not its wiggles
    marker_handles = _draw_markers(loss_axes, memory_axes, data["markers"])
    loss_axes.legend(loc="upper right", fontsize="small")
    memory_axes.legend(handles=memory_axes.get_legend_handles_labels()[0] + marker_handles, loc="lower right", fontsize="small")
    return fig


def _draw_markers(loss_axes: Any, memory_axes: Any, markers: list[dict[str, Any]]) -> list[Any]:
    """A vertical line per marker on both axes; at each step, the labels stacked in one box on the loss
    axes. Returns legend handles for the kinds of line drawn."""
    from matplotlib.lines import Line2D

    by_step: dict[float, list[dict[str, Any]]] = {}
    for marker in markers:
        by_step.setdefault(marker["step"], []).append(marker)
    for step, group in sorted(by_step.items()):
        for marker in group:
            colour, style, _ = MARKER_STYLES[MARKER_GROUPS.get(marker["kind"], "failure")]
            for axes in (loss_axes, memory_axes):
                axes.axvline(step, color=colour, linestyle=style, linewidth=1.2, alpha=0.8)
        text = "\n".join(marker["label"] for marker in group)
        colour = MARKER_STYLES[MARKER_GROUPS.get(group[0]["kind"], "failure")][0]
        # Labels in the right half open to the left of their line, so they stay inside the figure.
        left, right = loss_axes.get_xlim()
        to_left = step > (left + right) / 2
        loss_axes.annotate(text, xy=(step, 1.0), xycoords=("data", "axes fraction"), xytext=(-4 if to_left else 4, -4),
                           textcoords="offset points", va="top", ha="right" if to_left else "left", fontsize="x-small", color=colour,
                           bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": colour, "alpha": 0.85})
    drawn = {MARKER_GROUPS.get(marker["kind"], "failure") for marker in markers}
    return [Line2D([], [], color=colour, linestyle=style, label=text)
            for group, (colour, style, text) in MARKER_STYLES.items() if group in drawn]
