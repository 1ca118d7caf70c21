"""The picture of a run (`tamer plot`, and the image in `tamer report`): loss and memory against step,
with a vertical marker at each OOM or other failure, escalation, step back (de-escalation) and restart.

`plot_data(db, run_id)` computes everything drawn (testable without drawing); `figure(data, width,
height)` draws it with matplotlib (Agg, no pyplot) and returns the Figure.
"""

from __future__ import annotations

import json
from typing import Any

from tamer.inspect.history import RunRows, deescalations_of, failures
from tamer.inspect.results import squad_series
from tamer.state.db import Database
from tamer.units import format_size

DOTS_PER_INCH = 100
LABEL_LINE_POINTS = 9  # one line of an x-small marker label, in points
LABEL_CHARACTER_POINTS = 4.4  # an average x-small character's width, in points
# Marker kind -> how it is drawn; failure kinds not listed (crash, hang, lost...) draw as "failure".
MARKER_GROUPS = {
    "cuda_oom": "oom",
    "host_oom": "oom",
    "escalate": "escalate",
    "split": "split",
    "deescalate": "deescalate",
    "restart": "restart",
}
MARKER_STYLES = {  # group -> (colour, line style, legend text)
    "oom": ("#d62728", "-", "out of memory"),
    "failure": ("#8c564b", "-", "other failure (crash, hang, ...)"),
    "escalate": ("#ff7f0e", "--", "escalation (new plan)"),
    "split": ("#ff7f0e", ":", "micro-batch halved in process (no restart)"),
    "deescalate": ("#2ca02c", "--", "step back to a faster plan (the squeeze passed)"),
    "restart": ("#1f77b4", ":", "restart from a checkpoint"),
}
OOM_NAMES = {"cuda_oom": "CUDA OOM", "host_oom": "host OOM"}
MEMORY_SERIES = (  # step column -> legend label and colour; GPU runs draw the first three, CPU runs host RSS
    ("mem_allocated", "allocated (torch)", "#1f77b4"),
    ("mem_reserved", "reserved (torch cache)", "#ff7f0e"),
    ("device_used", "device used (NVML, all processes)", "#17becf"),
    ("host_rss", "host RSS", "#1f77b4"),
)
TRAIN_COLOUR, EVAL_COLOUR, REDONE_COLOUR, PEAK_COLOUR = "#2ca02c", "#9467bd", "#7f7f7f", "#d62728"
EM_COLOUR, F1_COLOUR = "#1f77b4", "#ff7f0e"


def plot_data(db: Database, run_id: str) -> dict[str, Any]:
    """The series and markers of a run's plot.

    Returns `{"run_id", "title", "device", "train": {"step", "loss"}, "redone": {"step", "loss"},
    "eval": {"step", "loss"}, "memory": {column: {"label", "colour", "step", "bytes"}}, "cap": {"bytes",
    "label"} or None, "failure_peaks": {"label", "step", "bytes"}, "markers": [{"step", "kind", "label"}]}`.
    `train` is one row per step (the latest attempt's); `redone` holds the rows a restart threw away;
    `failure_peaks` the peak memory of each failed attempt, at the step it failed in.
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
    for column, label, colour in MEMORY_SERIES:
        points = [(row["step"], row[column]) for row in effective if row[column] is not None]
        if column in wanted and points:
            memory[column] = {
                "label": label,
                "colour": colour,
                "step": [step for step, _ in points],
                "bytes": [value for _, value in points],
            }
    cap = None
    if device == "cuda" and run["gpu_mem_cap"]:
        cap = {
            "bytes": run["gpu_mem_cap"],
            "label": f"gpu_mem_cap {format_size(run['gpu_mem_cap'])} (torch's share; NVML adds the CUDA context)",
        }
    elif device == "cuda":
        total = json.loads(run["device_json"] or "{}").get("total_memory")
        cap = {"bytes": total, "label": f"device total {format_size(total)}"} if total else None

    markers = []
    peaks: dict[str, list[Any]] = {"step": [], "bytes": []}
    failure_rows = failures(db, run["id"])
    for failure in failure_rows:
        step = failure["step"] if failure["step"] is not None else failure["reached_step"]  # killed while loading
        where = [
            failure["phase"],
            f"micro-batch {failure['micro_batch_size']}" if failure["micro_batch_size"] else None,
        ]
        where_text = f" ({', '.join(part for part in where if part)})" if any(where) else ""
        name = OOM_NAMES.get(failure["outcome"], failure["outcome"])
        how = ", recovered in process" if failure["in_process"] else ""
        markers.append(
            {
                "step": step,
                "kind": failure["outcome"],
                "label": f"{name} in attempt {failure['attempt']}{where_text}{how}",
            }
        )
        if failure["in_process"]:
            markers.append({"step": step, "kind": "split", "label": "  split in process: +split_micro_batch"})
        elif failure["rungs_applied"]:
            markers.append(
                {"step": step, "kind": "escalate", "label": "  escalate: +" + ", +".join(failure["rungs_applied"])}
            )
        # The failed attempt's own peak: its last moments left no step row to read memory from.
        peak = failure["peak_reserved"] if device == "cuda" else failure["peak_host_rss"]
        if peak:
            peaks["step"].append(step)
            peaks["bytes"].append(peak)
    for step_back in deescalations_of(rows):
        stopped_at = next((a["last_step"] for a in rows.attempts if a["attempt"] == step_back["attempt"]), None)
        if stopped_at is not None:
            markers.append(
                {
                    "step": stopped_at,
                    "kind": "deescalate",
                    "label": f"  step back: attempt {step_back['next_attempt'] or '-'}",
                }
            )
    peaks["label"] = (
        "peak reserved of the failed attempt" if device == "cuda" else "peak host RSS of the failed attempt"
    )
    for attempt in rows.attempts[1:]:
        resumed = rows.resumed_from(attempt["attempt"])
        if resumed is not None:
            how = f"resumes at step {resumed}" if resumed else "starts over from step 0"
            markers.append({"step": resumed, "kind": "restart", "label": f"attempt {attempt['attempt']} {how}"})

    attempts = len(rows.attempts)
    title = (
        f"{run['id']}  ({run['status']}, {run['steps_done'] or 0}/{run['total_steps'] or '?'} steps, "
        f"{_count(attempts, 'attempt')}, {_count(len(failure_rows), 'failure')})"
    )
    return {
        "run_id": run["id"],
        "title": title,
        "device": device,
        "train": {"step": [row["step"] for row in effective], "loss": [row["loss"] for row in effective]},
        "redone": {"step": [row["step"] for row in redone], "loss": [row["loss"] for row in redone]},
        "eval": {"step": [row["step"] for row in evals], "loss": [row["eval_loss"] for row in evals]},
        "squad": squad_series(db, run["id"]),
        "memory": memory,
        "cap": cap,
        "failure_peaks": peaks,
        "markers": markers,
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _memory_unit(values: list[float]) -> tuple[str, float]:
    largest = max(values, default=0)
    return ("GiB", 1024**3) if largest >= 1024**3 else ("MiB", 1024**2)


def figure(data: dict[str, Any], width: int = 1200, height: int = 800) -> Any:
    """The matplotlib Figure of `plot_data`'s output, `width` x `height` pixels at 100 dpi."""
    # A bare Figure draws through Agg without pyplot: no global backend state, no display needed.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(width / DOTS_PER_INCH, height / DOTS_PER_INCH), dpi=DOTS_PER_INCH, layout="constrained")
    loss_axes, memory_axes = fig.subplots(2, 1, sharex=True)
    fig.suptitle(data["title"], fontsize="medium")

    loss_axes.plot(data["train"]["step"], data["train"]["loss"], color=TRAIN_COLOUR, marker=".", label="train loss")
    if data["redone"]["step"]:
        loss_axes.plot(
            data["redone"]["step"],
            data["redone"]["loss"],
            linestyle="none",
            marker="x",
            color=REDONE_COLOUR,
            label="steps lost (redone after a restart)",
        )
    if data["eval"]["step"]:
        loss_axes.plot(
            data["eval"]["step"], data["eval"]["loss"], color=EVAL_COLOUR, marker="o", label="validation loss"
        )
    loss_axes.set_ylabel("loss")
    loss_axes.grid(alpha=0.3)
    squad = data.get("squad") or {"step": []}
    if squad["step"]:  # SQuAD EM and F1 share the loss panel, on a 0-1 axis of their own
        score_axes = loss_axes.twinx()
        score_axes.plot(squad["step"], squad["exact_match"], color=EM_COLOUR, marker="s", label="SQuAD exact match")
        score_axes.plot(squad["step"], squad["f1"], color=F1_COLOUR, marker="^", label="SQuAD F1")
        score_axes.set_ylim(0, 1.05)
        score_axes.set_ylabel("SQuAD EM / F1")
        score_axes.legend(loc="lower left", bbox_to_anchor=(1.08, 0.0), fontsize="small")

    peaks = data["failure_peaks"]
    everything = [value for series in data["memory"].values() for value in series["bytes"]] + peaks["bytes"]
    unit, scale = _memory_unit(everything + ([data["cap"]["bytes"]] if data["cap"] else []))
    for series in data["memory"].values():
        memory_axes.plot(
            series["step"],
            [value / scale for value in series["bytes"]],
            marker=".",
            color=series["colour"],
            label=series["label"],
        )
    if peaks["step"]:
        memory_axes.plot(
            peaks["step"],
            [value / scale for value in peaks["bytes"]],
            linestyle="none",
            marker="X",
            markersize=9,
            color=PEAK_COLOUR,
            label=peaks["label"],
        )
    if data["cap"]:
        memory_axes.axhline(data["cap"]["bytes"] / scale, color="black", linestyle="-.", label=data["cap"]["label"])
    if not data["memory"] and not peaks["step"]:
        memory_axes.text(0.5, 0.5, "no memory readings", transform=memory_axes.transAxes, ha="center", color="gray")
    memory_axes.set_ylabel(f"memory ({unit})")
    memory_axes.set_xlabel("optimizer step")
    memory_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    memory_axes.grid(alpha=0.3)

    # Memory is judged against zero and the cap, not its wiggles; headroom keeps the top marks whole.
    memory_axes.set_ylim(
        0, max(everything + ([data["cap"]["bytes"]] if data["cap"] else []), default=scale) / scale * 1.08
    )
    marker_handles = _draw_markers(loss_axes, memory_axes, data["markers"])
    # Legends outside, on the right: inside they would cover labels or data.
    loss_axes.legend(loc="upper left", bbox_to_anchor=(1.08 if squad["step"] else 1.01, 1.0), fontsize="small")
    memory_axes.legend(
        handles=memory_axes.get_legend_handles_labels()[0] + marker_handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
    )
    return fig


def _draw_markers(loss_axes: Any, memory_axes: Any, markers: list[dict[str, Any]]) -> list[Any]:
    """A vertical line per marker on both axes; at each step, its labels stacked in one box at the top of
    the loss axes, boxes that would overlap moved down, and the loss axes raised so no box hides a
    point. Returns legend handles for the kinds of line drawn."""
    from matplotlib.lines import Line2D

    by_step: dict[float, list[dict[str, Any]]] = {}
    for marker in markers:
        by_step.setdefault(marker["step"], []).append(marker)
    left, right = loss_axes.get_xlim()
    box = loss_axes.get_position()  # before layout: close enough to size the label boxes
    axes_width = box.width * loss_axes.figure.get_figwidth() * 72
    axes_height = box.height * loss_axes.figure.get_figheight() * 72
    placed: list[tuple[float, float, float]] = []  # (left, right) in axes fraction, bottom in points below the top
    for step, group in sorted(by_step.items()):
        for marker in group:
            colour, style, _ = MARKER_STYLES[MARKER_GROUPS.get(marker["kind"], "failure")]
            for axes in (loss_axes, memory_axes):
                axes.axvline(step, color=colour, linestyle=style, linewidth=1.2, alpha=0.8)
        lines = [marker["label"] for marker in group]
        colour = MARKER_STYLES[MARKER_GROUPS.get(group[0]["kind"], "failure")][0]
        # Labels in the right half open to the left of their line, so they stay inside the figure.
        where = (step - left) / (right - left)
        to_left = where > 0.5
        width = (max(len(line) for line in lines) * LABEL_CHARACTER_POINTS + 10) / axes_width
        span = (where - width, where) if to_left else (where, where + width)
        top = 4 + max((bottom for start, end, bottom in placed if start < span[1] and span[0] < end), default=0)
        placed.append((*span, top + len(lines) * LABEL_LINE_POINTS + 4))
        loss_axes.annotate(
            "\n".join(lines),
            xy=(step, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(-4 if to_left else 4, -top),
            textcoords="offset points",
            va="top",
            ha="right" if to_left else "left",
            fontsize="x-small",
            color=colour,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": colour, "alpha": 0.85},
        )
    if placed:
        covered = min(0.6, max(bottom for _, _, bottom in placed) / axes_height)
        low, high = loss_axes.get_ylim()
        loss_axes.set_ylim(low, low + (high - low) / (1 - covered))
    drawn = {MARKER_GROUPS.get(marker["kind"], "failure") for marker in markers}
    return [
        Line2D([], [], color=colour, linestyle=style, label=text)
        for group, (colour, style, text) in MARKER_STYLES.items()
        if group in drawn
    ]
