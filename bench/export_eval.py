"""Export and SQuAD-evaluation benchmark: how long the result of a run takes, and how big it is.

    python bench/export_eval.py --model DIR --gpu-mem-cap 15GiB --out OUT        # GPU, 1B shape (~4 min)
    python bench/export_eval.py --preset tiny --device cpu --out /tmp/export-eval  # CPU plumbing check

Two short `tamer run squad` runs on the same model (bundled tokenizer and data), each in a home of its
own: a full fine-tune (the plan the planner settles on under the cap) and a LoRA run (start_rungs
[lora]). Each completed run evaluates and exports by itself (the post-run child); from its events:
export seconds and folder size, and the evaluation pass. Then, on the full run, `tamer export` on
demand (a cold process: load + write, bf16), and `tamer eval --json` at several decoding batch sizes
under the same memory cap: questions/s, the batch that fitted (an OOM halves it) and the peak memory.
The weights are random, so EM/F1 stay ~0: the figures are speed and memory, not quality.

Prints a markdown table and writes OUT/export_eval.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tamer.state.db import Database

GIB = 2**30


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder (bench/make_random_model.py); the preset's model if left out.")
    parser.add_argument("--preset", default="llama-3.2-1b", help="tamer preset (tiny for CPU testing).")
    parser.add_argument("--device", help="Passed to tamer run (auto, cpu, cuda).")
    parser.add_argument("--gpu-mem-cap", help="Cap on PyTorch's allocator for training and evaluation, e.g. 15GiB.")
    parser.add_argument(
        "--steps", type=int, default=2, help="Optimizer steps per run (the figures do not depend on it)."
    )
    parser.add_argument("--questions", type=int, default=128, help="Held-out questions per evaluation pass.")
    parser.add_argument("--batches", default="32,128", help="Decoding batch sizes to time, comma-separated.")
    parser.add_argument(
        "--out", type=Path, help="Folder for export_eval.json, the homes and logs (default: a new temporary folder)."
    )
    return parser.parse_args(argv)


class Bench:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.out = arguments.out or Path(tempfile.mkdtemp(prefix="tamer-export-eval-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.results: dict[str, Any] = {
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(arguments).items()}
        }

    def progress(self, line: str) -> None:
        print(f"[{time.time() - self.started:6.1f} s] {line}", flush=True)

    def tamer(self, home: Path, *arguments: str, log: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tamer", *arguments, "--home", str(home)]
        finished = subprocess.run(command, capture_output=True, text=True)
        (self.out / f"{log}.log").write_text(f"$ {' '.join(command)}\n{finished.stdout}\n{finished.stderr}")
        if finished.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({finished.returncode}); see {self.out / (log + '.log')}")
        return finished

    def train(self, label: str, sets: list[str]) -> tuple[Path, str]:
        """One short run that evaluates and exports itself once done; (home, run id)."""
        arguments = self.arguments
        home = self.out / "home" / label
        command = [
            "run",
            "squad",
            "--preset",
            arguments.preset,
            "--data",
            "bundled",
            "--max-steps",
            str(arguments.steps),
            "--set",
            f"eval.squad_samples={arguments.questions}",
            "--set",
            "eval_samples=256",
        ]
        command += ["--model", arguments.model, "--set", "tokenizer=bundled"] if arguments.model else []
        command += ["--device", arguments.device] if arguments.device else []
        command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else []
        for item in sets:
            command += ["--set", item]
        launched = time.time()
        run_id = self.tamer(home, *command, log=f"run-{label}").stdout.split()[0]
        self.progress(f"{label}: trained, evaluated and exported in {time.time() - launched:.1f} s")
        return home, run_id


def after_run(home: Path, run_id: str) -> dict[str, Any]:
    """The post-run child's export and evaluation, from the run's events; and its settled plan."""
    db = Database(home / "tamer.db", create=False)
    events = {event["kind"]: json.loads(event["detail_json"] or "{}") for event in db.events(run_id)}
    attempt = db.attempts(run_id)[-1]
    db.close()
    exported, scored = events.get("export", {}), events.get("squad_eval", {})
    if not exported or not scored:
        raise SystemExit(f"run {run_id} has no export or squad_eval event; see {home}/runs/{run_id}/result.log")
    return {
        "plan": attempt["plan_summary"],
        "export_seconds": exported["seconds"],
        "export_bytes": exported["bytes"],
        "export_dtype": exported["dtype"],
        "eval_questions": scored["questions"],
        "eval_batch_size": scored["batch_size"],
    }


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    bench = Bench(arguments)
    runs = {}
    for label, sets in (("full", []), ("lora", ["start_rungs=[lora]"])):
        home, run_id = bench.train(label, sets)
        runs[label] = {"home": home, "run_id": run_id, **after_run(home, run_id)}
    bench.results["runs"] = {
        label: {k: str(v) if isinstance(v, Path) else v for k, v in run.items()} for label, run in runs.items()
    }

    full = runs["full"]
    launched = time.time()
    on_demand = json.loads(
        bench.tamer(
            full["home"],
            "export",
            full["run_id"],
            "--dtype",
            "bf16",
            "-o",
            str(bench.out / "export-bf16"),
            "--json",
            log="export-on-demand",
        ).stdout
    )
    bench.results["export_on_demand"] = {**on_demand["export"], "process_seconds": time.time() - launched}
    bench.progress(
        f"tamer export (cold process): {time.time() - launched:.1f} s, {on_demand['export']['bytes'] / GIB:.2f} GiB"
    )

    passes = []
    for batch in [int(size) for size in arguments.batches.split(",")]:
        launched = time.time()
        result = json.loads(
            bench.tamer(
                full["home"],
                "eval",
                full["run_id"],
                "--limit",
                str(arguments.questions),
                "--batch-size",
                str(batch),
                "--json",
                log=f"eval-batch-{batch}",
            ).stdout
        )
        passes.append(
            {
                "asked_batch": batch,
                "batch_fitted": result["batch_size"],
                "questions": result["questions"],
                "seconds": result["seconds"],
                "questions_per_second": result["questions_per_second"],
                "peak_allocated": result.get("peak_allocated"),
                "process_seconds": time.time() - launched,
                "device": result["device"],
                "exact_match": result["exact_match"],
                "f1": result["f1"],
            }
        )
        bench.progress(
            f"tamer eval batch {batch}: {result['questions_per_second']:.1f} questions/s (fitted batch {result['batch_size']})"
        )
    bench.results["eval"] = passes
    (bench.out / "export_eval.json").write_text(json.dumps(bench.results, indent=2, default=str))
    report(bench.results)


def report(results: dict[str, Any]) -> None:
    print("\n| run | settled plan | export after run (s) | export size (GiB) | dtype | eval questions | eval batch |")
    print("|---|---|---|---|---|---|---|")
    for label, run in results["runs"].items():
        print(
            f"| {label} | {run['plan']} | {run['export_seconds']:.1f} | {run['export_bytes'] / GIB:.2f} | "
            f"{run['export_dtype'] or 'adapter'} | {run['eval_questions']} | {run['eval_batch_size']} |"
        )
    on_demand = results["export_on_demand"]
    print(
        f"\n`tamer export` on demand (full run, bf16): {on_demand['seconds']:.1f} s writing, "
        f"{on_demand['process_seconds']:.1f} s for the whole command, {on_demand['bytes'] / GIB:.2f} GiB"
    )
    print("\n| decoding batch asked | fitted | questions | seconds | questions/s | peak allocated (GiB) | device |")
    print("|---|---|---|---|---|---|---|")
    for row in results["eval"]:
        peak = f"{row['peak_allocated'] / GIB:.2f}" if row["peak_allocated"] else "-"
        print(
            f"| {row['asked_batch']} | {row['batch_fitted']} | {row['questions']} | {row['seconds']:.1f} | "
            f"{row['questions_per_second']:.1f} | {peak} | {row['device']} |"
        )


if __name__ == "__main__":
    main()
