"""What a run produced, read back from the database: SQuAD scores by step, the export folder, and
runs side by side (`tamer compare`). Used by show, runs, report, plot and compare; no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tamer.state.db import Database

HELD_OUT = "held-out"


def squad_series(db: Database, run_id: str) -> dict[str, list[Any]]:
    """EM and F1 on the held-out questions against step (the latest pass of each step)."""
    by_step: dict[int, dict[str, float]] = {}
    for row in db.squad_scores(run_id):
        if row["data"] == HELD_OUT:
            by_step.setdefault(row["step"], {})[row["metric"]] = row["value"]
    steps = sorted(step for step, values in by_step.items() if {"exact_match", "f1"} <= values.keys())
    return {"step": steps, "exact_match": [by_step[s]["exact_match"] for s in steps], "f1": [by_step[s]["f1"] for s in steps]}


def last_squad(db: Database, run_id: str) -> dict[str, Any] | None:
    """The latest held-out pass: step, exact_match, f1, questions, seconds; None when never evaluated."""
    rows = [row for row in db.squad_scores(run_id) if row["data"] == HELD_OUT]
    if not rows:
        return None
    latest = rows[-1]
    same_pass = {row["metric"]: row["value"] for row in rows if row["step"] == latest["step"] and row["wall_time"] == latest["wall_time"]}
    return {"step": latest["step"], "exact_match": same_pass.get("exact_match"), "f1": same_pass.get("f1"),
            "questions": latest["questions"], "seconds": latest["seconds"], "plan": latest["plan"]}


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


def compare(db: Database, run_ids: list[str]) -> list[dict[str, Any]]:
    """One row per run: settled plan, steps, tokens, wall time, final and validation loss, EM and F1."""
    from tamer.inspect.history import timeline

    rows = []
    for run_id in run_ids:
        story = timeline(db, db.run(run_id)["id"])
        run, totals, settled = story["run"], story["totals"], story["settled_plan"]
        scores = last_squad(db, run["id"])
        rows.append({
            "run_id": run["id"], "status": run["status"], "plan": settled["summary"] if settled else None,
            "plan_settled": bool(settled and settled["settled"]), "attempts": totals["attempts"],
            "steps": totals["steps"], "tokens": totals["tokens"], "wall_seconds": totals["wall_seconds"],
            "final_loss": story["final_loss"], "final_eval_loss": story["final_eval_loss"],
            "exact_match": scores["exact_match"] if scores else None, "f1": scores["f1"] if scores else None,
            "squad_questions": scores["questions"] if scores else None, "squad_step": scores["step"] if scores else None,
        })
    return rows
