"""`tamer report`: one self-contained HTML page about a run, to open from a file or send to a colleague.

The plot is embedded as a base64 PNG and the style inline, so the page needs nothing beside it. Every
text from the database goes through html.escape: messages and paths are the user's and the model's.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import Any

from tamer import output
from tamer.inspect.history import SNAPSHOT_VIEWER_HINT, timeline
from tamer.inspect.plot import figure, plot_data
from tamer.inspect.results import squad_html
from tamer.outputs import HTML_SIGNATURE, PNG_SIGNATURE
from tamer.state.db import Database
from tamer.units import format_size

MESSAGE_LENGTH = 160  # an OOM message runs to 600 characters; its first sentences say what matters
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.number { text-align: right; white-space: nowrap; } td.nowrap { white-space: nowrap; }
.status-done { color: #2a7d2a; } .status-failed { color: #c0392b; } .status-running { color: #1f77b4; }
.bar { display: flex; height: 1.3em; width: 100%; max-width: 800px; border: 1px solid #bbb; font-size: 0.8em; }
.bar div { overflow: hidden; white-space: nowrap; color: white; padding-left: 4px; }
.training { background: #2ca02c; } .lost { background: #d62728; } .other { background: #999; }
img { max-width: 100%; border: 1px solid #ddd; } .muted { color: #777; font-size: 0.85em; }
"""


def _escape(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _table(headers: list[str] | None, rows: list[list[Any]], classes: dict[int, str] | None = None) -> str:
    """An HTML table (no header row when `headers` is None); every cell is escaped; `classes` gives a
    column its CSS class (number: right-aligned, nowrap: kept on one line)."""
    classes = classes or {}
    head = (
        "<thead><tr>" + "".join(f"<th>{_escape(header)}</th>" for header in headers) + "</tr></thead>"
        if headers
        else ""
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{classes[index]}">{_escape(cell)}</td>' if index in classes else f"<td>{_escape(cell)}</td>"
            for index, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _columns(numbers: set[int], times: set[int]) -> dict[int, str]:
    return {**{index: "number" for index in numbers}, **{index: "nowrap" for index in times}}


PNG_METADATA = {"Software": PNG_SIGNATURE.decode()}


def plot_png(db: Database, run_id: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    figure(plot_data(db, run_id), width, height).savefig(buffer, format="png", metadata=PNG_METADATA)
    return buffer.getvalue()


def _time_bar(totals: dict[str, Any]) -> str:
    """Wall time split into training, lost to failures, and the rest, as a bar with its numbers."""
    wall = totals["wall_seconds"] or 0.0
    parts = [
        ("training", totals["training_seconds"]),
        ("lost", totals["lost_seconds"]),
        ("other", totals["other_seconds"]),
    ]
    segments = "".join(
        f'<div class="{name}" style="width: {100 * value / wall:.1f}%">{_escape(output.seconds(value))}</div>'
        for name, value in parts
        if wall > 0 and value > 0
    )
    legend = (
        f"training {output.seconds(totals['training_seconds'])}, lost to failures {output.seconds(totals['lost_seconds'])}, "
        f"other (setup, checkpoints, evaluation) {output.seconds(totals['other_seconds'])}, wall clock {output.seconds(wall)}"
    )
    return f'<div class="bar">{segments}</div><p class="muted">{_escape(legend)}</p>'


def render(db: Database, run_id: str, width: int = 1200, height: int = 800) -> str:
    """The report page of a run, as one HTML string."""
    story = timeline(db, run_id)
    run, totals = story["run"], story["totals"]
    full_id = run["id"]
    image = base64.b64encode(plot_png(db, full_id, width, height)).decode("ascii")
    events = db.events(full_id)
    evals = db.evals(full_id)

    summary = _table(
        None,
        [
            ["status", run["status"] + (f": {run['failure_reason']}" if run["failure_reason"] else "")],
            ["recipe / preset", f"{run['recipe']} / {run['preset']}"],
            ["started / ended", f"{output.when(run['started_at'])} / {output.when(run['ended_at'])}"],
            [
                "steps",
                f"{totals['steps']} of {totals['total_steps'] or '?'} ({totals['steps_redone']} redone after restarts)",
            ],
            ["samples / tokens", f"{totals['samples']} / {totals['tokens']}"],
            ["attempts / failures", f"{totals['attempts']} / {totals['failures']}"],
            ["final train loss", output.number(story["final_loss"])],
            [
                "validation loss",
                f"final {output.number(story['final_eval_loss'])}, best {output.number(story['best_eval_loss'])}"
                + (f" at step {story['best_eval_step']}" if story["best_eval_step"] is not None else ""),
            ],
        ],
    )
    attempts = _table(
        [
            "attempt",
            "started",
            "seconds",
            "plan",
            "rungs added",
            "resumed at step",
            "last step",
            "outcome",
            "phase",
            "message",
        ],
        [
            [
                a["attempt"],
                output.when(a["started_at"]),
                output.seconds(a["seconds"]),
                _plan_text(a),
                ", ".join(a["rungs_applied"]) or "-",
                a["resumed_from_step"],
                a["last_step"],
                a["outcome"] or "running",
                a["phase"],
                output.one_line(a["message"], MESSAGE_LENGTH),
            ]
            for a in story["attempts"]
        ],
        _columns({0, 2, 5, 6}, {1}),
    )
    failure_rows = story["failures"]
    failures_html = (
        _table(
            [
                "attempt",
                "failed at",
                "outcome",
                "phase",
                "step",
                "micro-batch",
                "tried to allocate",
                "peak",
                "then",
                "time lost",
                "steps lost",
                "memory snapshot",
            ],
            [
                [
                    f["attempt"],
                    output.when(f["failed_at"]),
                    f["outcome"],
                    f["phase"],
                    f["step"],
                    f["micro_batch_size"],
                    format_size(f["tried_to_allocate"]),
                    output.peak(f),
                    _then(f),
                    output.seconds(f["time_lost_seconds"]),
                    f["steps_lost"],
                    f["memory_snapshot"],
                ]
                for f in failure_rows
            ],
            _columns({0, 4, 5, 6, 9, 10}, {1}),
        )
        if failure_rows
        else "<p>No failures: every attempt ran as planned.</p>"
    )
    if failure_rows:
        failures_html += (
            '<p class="muted">time lost: from the failure until training got past the failed step again '
            "(restart, setup, redone steps), up to the next failure; steps lost: steps redone from the checkpoint.</p>"
        )
    if any(f["memory_snapshot"] for f in failure_rows):
        failures_html += f'<p class="muted">{_escape(SNAPSHOT_VIEWER_HINT)}</p>'
    settled = story["settled_plan"]
    if settled:
        plan_rows = [
            [key, json.dumps(value) if isinstance(value, (dict, list)) else value]
            for key, value in settled["plan"].items()
        ]
        state = "settled: the run finished under it" if settled["settled"] else "the last plan tried"
        plan_html = (
            f"<p>{_escape(settled['summary'])} (attempt {settled['attempt']}, {state}; rungs: "
            f"{_escape(', '.join(settled['rungs']) or 'none')})</p>" + _table(["key", "value"], plan_rows)
        )
    else:
        plan_html = "<p>No attempt has started yet.</p>"
    evals_html = (
        _table(
            ["step", "attempt", "validation loss", "samples"],
            [[e["step"], e["attempt"], output.number(e["eval_loss"]), e["eval_samples"]] for e in evals],
            _columns({0, 1, 2, 3}, set()),
        )
        if evals
        else "<p>No evaluation yet.</p>"
    )
    events_html = _table(
        ["time", "attempt", "event", "message"],
        [[output.when(e["time"]), e["attempt"], e["kind"], e["message"]] for e in events],
        _columns({1}, {0}),
    )

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{HTML_SIGNATURE.decode()}<title>tamer run {_escape(full_id)}</title><style>{STYLE}</style></head>
<body>
<h1>tamer run {_escape(full_id)} <span class="status-{_escape(run["status"])}">{_escape(run["status"])}</span></h1>
{summary}
<h2>Where the time went</h2>
{_time_bar(totals)}
<h2>Loss and memory</h2>
<img alt="loss and memory against step, with failures, escalations and restarts marked" src="data:image/png;base64,{image}">
<h2>Attempts</h2>
{attempts}
<h2>Failures and recoveries</h2>
{failures_html}
<h2>Plan</h2>
{plan_html}
<h2>Validation</h2>
{evals_html}
<h2>SQuAD by generation</h2>
{squad_html(db, full_id)}
<h2>Events</h2>
{events_html}
<p class="muted">Written by tamer report at {_escape(output.when(time.time()))}.</p>
</body></html>
"""


def _plan_text(attempt: dict[str, Any]) -> str:
    """The plan an attempt started with, and the one it ended with when it split in process."""
    if attempt["plan_at_end"] == attempt["plan_summary"]:
        return attempt["plan_summary"]
    return f"{attempt['plan_summary']}; after an in-process split: {attempt['plan_at_end']}"


def _then(failure: dict[str, Any]) -> str:
    """What the supervisor did after a failure, in a few words."""
    if failure["in_process"]:
        return f"split in process: {failure['next_plan'] or '+split_micro_batch'}"
    if failure["rungs_applied"]:
        return "escalated: +" + ", +".join(failure["rungs_applied"])
    return failure["recovery"]
