"""Checkpoint benchmark: what saving costs the training loop, synchronous vs in the background, and how
fast an attempt resumes after a SIGKILL.

    python bench/checkpoint.py --model DIR --gpu-mem-cap 15GiB --steps 300 --out OUT
    python bench/checkpoint.py --preset tiny --device cpu --steps 40 --sync-steps 20 --out /tmp/ckpt   # CPU plumbing check

Every run is `python -m tamer run squad` as bench/escalation.py runs it (bundled tokenizer and data, every
batch padded to max_seq_len so step times are stable), in a fresh home of its own. For each mode - the
plan the planner picks (on the 1B shape under 15 GiB: full fine-tune, fp32 weights, paged 8-bit AdamW)
and the LoRA plan (`start_rungs=[lora]`) - two runs:

  async: the defaults (`checkpoint_async: true`, `checkpoint_every: auto`), --steps steps: the first save
         measures the cost and picks the interval, the last one is waited for.
  sync:  `checkpoint_async=false`, `checkpoint_every=--sync-every` (50, the old default), --sync-steps
         steps, and the child SIGKILLed (injected) in attempt 1 just after the save at --sync-every:
         attempt 2 resumes from that checkpoint (the resume time; the format is the same in both modes).

Per run, from its database: the stall of each save (seconds the step loop spent in it: the snapshot when
in the background; all of it when synchronous or when the loop waits for it, as at the end), the
background write time, the checkpoint overhead (the saves' stalls over the step loop's time: the
optimizer steps' step_time plus the stalls; once for the saves inside the loop, once with the last save,
whose write every scheme must wait for, included), the interval `auto` chose, the checkpoint size, and for the
resumed attempt the seconds from its start to its first step, beside attempt 1's (model built from the
model folder, data tokenized).

Prints a progress line per run, then a markdown table; OUT/checkpoint.json has everything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from escalation import Benchmark, _number, checked, run_arguments  # noqa: E402

from tamer.state.db import Database  # noqa: E402

MODES = {"full": ("planner plan", []), "lora": ("LoRA plan", ["start_rungs=[lora]"])}


class CheckpointBenchmark(Benchmark):
    RESULTS = "checkpoint.json"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_arguments(__doc__.splitlines()[0], 300, "checkpoint.json")
    parser.add_argument(
        "--sync-steps",
        type=int,
        default=100,
        help="Steps of the synchronous runs (each of their saves stalls for all of it).",
    )
    parser.add_argument(
        "--sync-every", type=int, default=50, help="checkpoint_every of the synchronous runs (the old default)."
    )
    parser.add_argument("--modes", default="full,lora", help="Comma-separated: full (the planner's plan), lora.")
    return checked(parser, argv)


def checkpoint_summary(result: dict[str, Any], home: Path) -> dict[str, Any]:
    """Saves, interval, overhead and resume time of one run, from its database."""
    run_id = result.get("run_id")
    if not run_id:
        return {}
    db = Database(home / "tamer.db", create=False)
    try:
        events = db.events(run_id)
        steps = db.steps(run_id)
        attempts = db.attempts(run_id)
    finally:
        db.close()
    saves = []
    for event in events:
        detail = json.loads(event["detail_json"]) if event["detail_json"] else {}
        if event["kind"] == "checkpoint":
            saves.append(
                {
                    "attempt": event["attempt"],
                    "step": detail.get("step"),
                    "stall": detail.get("stall", detail.get("seconds")),
                    "write_seconds": detail.get("write_seconds"),
                    "bytes": detail.get("bytes"),
                    "asynchronous": detail.get("asynchronous"),
                    "skipped": detail.get("skipped"),
                    "waited": detail.get("waited"),
                }
            )
    intervals = [e["message"] for e in events if e["kind"] == "checkpoint_interval"]
    stalls = sum(save["stall"] or 0.0 for save in saves)
    in_loop = sum(save["stall"] or 0.0 for save in saves if not save["waited"] or not save["asynchronous"])
    step_seconds = sum(step["step_time"] or 0.0 for step in steps)
    resumed = [a for a in attempts if a["resumed_from_step"]]
    return {
        "saves": saves,
        "interval": intervals[-1] if intervals else None,
        "overhead": stalls / (stalls + step_seconds) if step_seconds else None,
        "overhead_in_loop": in_loop / (in_loop + step_seconds) if step_seconds else None,
        "first_step_seconds_attempt_1": _first_step(attempts[0]) if attempts else None,
        "resume_seconds": _first_step(resumed[0]) if resumed else None,
        "resumed_from_step": resumed[0]["resumed_from_step"] if resumed else None,
    }


def _first_step(attempt: dict[str, Any]) -> float | None:
    if attempt["first_step_at"] is None or attempt["started_at"] is None:
        return None
    return attempt["first_step_at"] - attempt["started_at"]


def _seconds(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{values[0]:.2f}" if len(values) == 1 else f"{min(values):.2f}-{max(values):.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def row(result: dict[str, Any]) -> str:
    saves = result.get("saves", [])
    background = [s for s in saves if s["asynchronous"]]
    middle = [s["stall"] for s in saves[:-1]] or [s["stall"] for s in saves]
    size = max((s["bytes"] or 0 for s in saves), default=0)
    return (
        f"| {result['title']} | {result.get('status', '-')} | {len(saves)} | {_seconds(middle)} | "
        f"{_seconds([s['stall'] for s in saves[-1:]])} | {_seconds([s['write_seconds'] for s in background])} | "
        f"{_percent(result.get('overhead_in_loop'))} | {_percent(result.get('overhead'))} | {size / 2**30:.2f} | "
        f"{_number(result.get('first_step_seconds_attempt_1'), 1)} | {_number(result.get('resume_seconds'), 1)} | "
        f"{result.get('interval') or '-'} |"
    )


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    bench = CheckpointBenchmark(arguments)
    bench.progress(f"results in {bench.out}, homes in {bench.home}")
    results = []
    async_steps = arguments.steps  # bench.run reads the steps of each run from the arguments
    for mode in filter(None, arguments.modes.split(",")):
        name, sets = MODES[mode]
        runs = [
            (
                f"{mode}_async",
                f"{name}, async, auto interval, {async_steps} steps",
                sets + ["checkpoint_every=auto"],
                None,
                async_steps,
            ),
            (
                f"{mode}_sync",
                f"{name}, sync, every {arguments.sync_every}, {arguments.sync_steps} steps, SIGKILL + resume",
                sets + ["checkpoint_async=false", f"checkpoint_every={arguments.sync_every}"],
                f"kill:phase=forward,step={arguments.sync_every + 2},attempt=1",
                arguments.sync_steps,
            ),
        ]
        for label, title, run_sets, inject, steps in runs:
            bench.arguments.steps = steps
            result = bench.run(label, title, run_sets, inject=inject)
            result.update(checkpoint_summary(result, bench.home / label))
            bench.results["runs"][label] = result
            bench.save()
            results.append(result)
    bench.arguments.steps = async_steps
    print()
    print(
        "| run | status | saves | stall per save (s) | last save, waited (s) | background write (s) | overhead, saves in the loop | "
        "overhead, the last one too | size (GiB) | attempt 1 start -> first step (s) | resume: start -> first step (s) | interval in force |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(row(result))
    print(f"\n(full results: {bench.out / 'checkpoint.json'})")


if __name__ == "__main__":
    main()
