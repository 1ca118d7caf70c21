"""What a run produced, read back from the database: SQuAD scores by step, the export folder, and
runs side by side (`tamer compare`). Used by show, runs, report, plot and compare; no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tamer.inspect.history import timeline
from tamer.protocol import HELD_OUT
from tamer.state.db import Database


def squad_series(db: Database, run_id: str) -> dict[str, list[Any]]:
    """EM and F1 on the held-out questions against step (the latest pass of each step)."""
    by_step: dict[int, dict[str, float]] = {}
    for row in db.squad_scores(run_id):
        if row["data"] == HELD_OUT:
            by_step.setdefault(row["step"], {})[row["metric"]] = row["value"]
    steps = sorted(step for step, values in by_step.items() if {"exact_match", "f1"} <= values.keys())
    return {
        "step": steps,
        "exact_match": [by_step[s]["exact_match"] for s in steps],
        "f1": [by_step[s]["f1"] for s in steps],
    }


def last_squad(db: Database, run_id: str, data: str = HELD_OUT) -> dict[str, Any] | None:
    """The latest pass on `data` (the held-out slice, or the file `tamer eval --data` scored): step, exact_match, f1,
    questions, seconds; None when never evaluated there."""
    rows = [row for row in db.squad_scores(run_id) if row["data"] == data]
    if not rows:
        return None
    latest = rows[-1]
    same_pass = {
        row["metric"]: row["value"]
        for row in rows
        if row["step"] == latest["step"] and row["wall_time"] == latest["wall_time"]
    }
    return {
        "step": latest["step"],
        "exact_match": same_pass.get("exact_match"),
        "f1": same_pass.get("f1"),
        "questions": latest["questions"],
        "seconds": latest["seconds"],
        "plan": latest["plan"],
    }


def export_location(db: Database, run_id: str) -> dict[str, Any] | None:
    """The newest export of the run that is still on disk: its path, step, dtype and size."""
    for event in reversed(db.events(run_id)):
        if event["kind"] == "export":
            detail = json.loads(event["detail_json"] or "{}")
            if Path(detail.get("path", "")).is_dir():
                return detail
    return None


def squad_text(scores: dict[str, Any] | None) -> str:
    if scores is None:
        return "-"
    return f"EM {scores['exact_match']:.3f} F1 {scores['f1']:.3f}"


def compare(db: Database, run_ids: list[str], data: str = HELD_OUT) -> list[dict[str, Any]]:
    """One row per run: settled plan, steps, tokens, wall time, final and validation loss, EM and F1 (the latest
    pass on `data`: the held-out slice, or a file `tamer eval --data` scored)."""
    rows = []
    for run_id in run_ids:
        story = timeline(db, db.run(run_id)["id"])
        run, totals, settled = story["run"], story["totals"], story["settled_plan"]
        scores = last_squad(db, run["id"], data)
        rows.append(
            {
                "run_id": run["id"],
                "status": run["status"],
                "plan": settled["summary"] if settled else None,
                "plan_settled": bool(settled and settled["settled"]),
                "attempts": totals["attempts"],
                "steps": totals["steps"],
                "tokens": totals["tokens"],
                "wall_seconds": totals["wall_seconds"],
                "final_loss": story["final_loss"],
                "final_eval_loss": story["final_eval_loss"],
                "exact_match": scores["exact_match"] if scores else None,
                "f1": scores["f1"] if scores else None,
                "squad_questions": scores["questions"] if scores else None,
                "squad_step": scores["step"] if scores else None,
            }
        )
    return rows


def squad_chart_png(series: dict[str, list[Any]], width: int = 480, height: int = 240) -> bytes:
    """A small chart of EM and F1 against step, as PNG bytes (for the HTML report)."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
    axes = fig.subplots()
    axes.plot(series["step"], series["exact_match"], marker="s", label="exact match")
    axes.plot(series["step"], series["f1"], marker="^", label="F1")
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("optimizer step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def squad_html(db: Database, run_id: str) -> str:
    """The report's SQuAD section: the chart, every pass, and where the export is."""
    import base64
    import html

    rows = db.squad_scores(run_id)
    exported = export_location(db, run_id)
    where = (
        f"<p>Exported model: <code>{html.escape(exported['path'])}</code></p>" if exported else "<p>Not exported.</p>"
    )
    if not rows:
        return "<p>No SQuAD evaluation yet (<code>tamer eval RUN</code>).</p>" + where
    passes: dict[tuple[int, float], dict[str, Any]] = {}
    for row in rows:
        passes.setdefault((row["step"], row["wall_time"]), dict(row))[row["metric"]] = row["value"]
    cells = "".join(
        f"<tr><td>{p['step']}</td><td>{html.escape(p['plan'] or '-')}</td><td>{p.get('exact_match', 0):.3f}</td>"
        f"<td>{p.get('f1', 0):.3f}</td><td>{p['questions']}</td><td>{html.escape(p['data'])}</td><td>{p['seconds']:.1f}</td></tr>"
        for p in passes.values()
    )
    table = (
        "<table><tr><th>step</th><th>plan</th><th>exact match</th><th>F1</th><th>questions</th><th>data</th>"
        f"<th>seconds</th></tr>{cells}</table>"
    )
    series = squad_series(db, run_id)
    chart = (
        (
            f'<img alt="SQuAD exact match and F1 against step" src="data:image/png;base64,'
            f'{base64.b64encode(squad_chart_png(series)).decode("ascii")}">'
        )
        if series["step"]
        else ""
    )
    return chart + table + where
