"""Throughput benchmark: questions/s and useful tokens/s of each batching mode under one memory cap, with the
same samples per optimizer step, and optionally the Hugging Face Trainer a user would write.

    python bench/throughput.py --model DIR --gpu-mem-cap 15GiB --steps 220 --out OUT [--data FILE] [--hf]
    python bench/throughput.py --preset tiny --device cpu --steps 10 --warmup 3 --out /tmp/tp   # CPU plumbing check

Every run is `python -m tamer run squad` with the planner's plan, 8 questions per optimizer step, the bundled
tokenizer, `--data` (default: the bundled slice; pass /work/shared/data/squad_v1.1_dev_subset.json for the SQuAD
dev questions), seed 0, no checkpoint before the end and one small evaluation at the end, each in a fresh home:

  longest           today's former default: each micro-batch padded to its longest sample, all layers checkpointed
  max_len           every sequence padded to max_seq_len (512)
  bucket            padded to the longest rounded up to 64, length-grouped order
  packed            one row per micro-batch, no padding but the tail to 64, length-grouped order
  packed_selective  packed, checkpointing only the layers the planner says must be
  bucket_compiled   bucket, with the decoder layers compiled (torch.compile)
  packed_compiled   packed, compiled layers, every layer checkpointed (what selective checkpointing saves)
  default           tamer's default: packed + selective checkpointing + compiled layers (compile: auto)

The first four set planner.selective_checkpointing=false so they differ from each other only by batching;
bucket_compiled, packed_compiled and default compile; the others set compile=off. A second questions/s counts the wall clock from launching `tamer run`
to its last step (process start, model load, compilation included).
Per mode, over the steps after --warmup: questions/s = questions / summed step time (mean, not median: a
mode whose shapes change pays each new shape, and that is the point), useful (non-pad) tokens/s, computed /
useful tokens, distinct step sizes in computed tokens (a proxy for shapes) and the mean step time of a size
seen for the first time vs again (what a new shape costs), loss after the last step, the
settled plan and the peak reserved memory. --hf adds the Hugging Face Trainer (full fine-tune, bf16 weights,
gradient checkpointing, paged 8-bit AdamW, completion-only labels, same cap and questions per step) padded
to 512, with dynamic padding, and with group_by_length (on CPU too, with --model DIR). Writes OUT/throughput.json and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from escalation import Benchmark, _gib, _last_line, _number, run_arguments  # noqa: E402

QUESTIONS_PER_STEP = 8
COMMON_SETS = [
    "tokenizer=bundled",
    "checkpoint_every=100000",
    "eval_samples=16",
    "seed=0",
    "export.enabled=false",
    "eval.squad_samples=0",
    f"effective_batch_size={QUESTIONS_PER_STEP}",
]
MODES = {
    "longest": (
        "tamer, padded to the longest (former default)",
        ["batching=longest", "planner.selective_checkpointing=false", "compile=false"],
    ),
    "max_len": ("tamer, padded to 512", ["batching=max_len", "planner.selective_checkpointing=false", "compile=false"]),
    "bucket": (
        "tamer, buckets of 64, length-grouped",
        ["batching=bucket", "planner.selective_checkpointing=false", "compile=false"],
    ),
    "packed": (
        "tamer, packed, length-grouped",
        ["batching=packed", "planner.selective_checkpointing=false", "compile=false"],
    ),
    "packed_selective": ("tamer, packed + selective checkpointing", ["compile=false"]),
    "bucket_compiled": (
        "tamer, buckets of 64 + compiled layers",
        ["batching=bucket", "planner.selective_checkpointing=false"],
    ),
    "packed_compiled": (
        "tamer, packed + compiled layers, all layers checkpointed",
        ["planner.selective_checkpointing=false"],
    ),
    "default": ("tamer's default: packed + checkpointing by size + compiled layers + Triton 8-bit step", []),
    "default_no_size": ("the default without checkpointing by size", ["planner.checkpointing_by_size=false"]),
    "default_bnb": ("the default with bitsandbytes' 8-bit step", ["optimizer_kernel=bitsandbytes"]),
    "default_cudnn": ("the default with cuDNN attention (a plan per new length)", ["cudnn_attention=true"]),
}
HF_MODES = {
    "hf_max_len": "HF Trainer, padded to 512",
    "hf_dynamic": "HF Trainer, dynamic padding",
    "hf_group_by_length": "HF Trainer, group_by_length",
}


class ThroughputBenchmark(Benchmark):
    RESULTS = "throughput.json"

    def tamer_command(self, home: Path) -> list[str]:
        arguments = self.arguments
        command = [
            sys.executable,
            "-m",
            "tamer",
            "run",
            "squad",
            "--preset",
            arguments.preset,
            "--data",
            arguments.data,
            "--max-steps",
            str(arguments.steps),
            "--home",
            str(home),
        ]
        command += ["--model", arguments.model] if arguments.model else []
        command += ["--device", arguments.device] if arguments.device else []
        command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else []
        for item in COMMON_SETS:
            command += ["--set", item]
        return command


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_arguments(__doc__.splitlines()[0], 220, "throughput.json")
    parser.add_argument("--data", default="bundled", help="SQuAD v1.1 JSON file (or `bundled`).")
    parser.add_argument("--warmup", type=int, default=20, help="Steps of each run left out of the rates.")
    parser.add_argument("--modes", default=",".join(MODES), help="Comma-separated tamer modes to run.")
    parser.add_argument("--hf", action="store_true", help="Also run the Hugging Face Trainer baselines (GPU).")
    parser.add_argument(
        "--hf-modes", default=",".join(HF_MODES), help="Comma-separated HF Trainer baselines to run with --hf."
    )
    parser.add_argument("--hf-run", metavar="MODE", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.steps <= arguments.warmup:
        parser.error(f"--steps must be more than --warmup ({arguments.warmup})")
    return arguments


def step_rates(db_path: Path, run_id: str, warmup: int) -> dict[str, Any]:
    """Rates over the steps after `warmup` of the run's last attempt, from its step rows."""
    import sqlite3

    connection = sqlite3.connect(str(db_path))
    rows = connection.execute(
        """SELECT step, step_time, useful_tokens, computed_tokens, loss FROM steps WHERE run_id = ?
           AND attempt = (SELECT max(attempt) FROM steps WHERE run_id = ?) ORDER BY step""",
        (run_id, run_id),
    ).fetchall()
    connection.close()
    measured = [row for row in rows if row[0] > warmup]
    if not measured:
        return {}
    seconds = sum(row[1] for row in measured)
    useful = sum(row[2] for row in measured)
    computed = sum(row[3] for row in measured)
    # A step size (computed tokens) seen for the first time in the run vs again: what a new shape costs.
    seen: set[int] = set()
    first, again = [], []
    for row in rows:
        if row[0] > warmup:
            (again if row[3] in seen else first).append(row[1])
        seen.add(row[3])
    return {
        "new_size_seconds_per_step": statistics.mean(first) if first else None,
        "seen_size_seconds_per_step": statistics.mean(again) if again else None,
        "measured_steps": len(measured),
        "seconds_per_step": seconds / len(measured),
        "median_seconds_per_step": statistics.median(row[1] for row in measured),
        "questions_per_second": QUESTIONS_PER_STEP * len(measured) / seconds,
        "useful_tokens_per_second": useful / seconds,
        "computed_per_useful": computed / useful,
        "step_sizes": len({row[3] for row in measured}),
        "last_loss": rows[-1][4],
    }


def wall_rate(db_path: Path, run_id: str, launched: float) -> dict[str, Any]:
    """Questions per wall-clock second from launching `tamer run` to its last optimizer step: process start,
    model load, compilation, every step and anything between steps included (what a user's night feels)."""
    import sqlite3

    connection = sqlite3.connect(str(db_path))
    steps, last = connection.execute(
        "SELECT count(DISTINCT step), max(wall_time) FROM steps WHERE run_id = ?", (run_id,)
    ).fetchone()
    connection.close()
    if not steps or last is None or last <= launched:
        return {}
    return {
        "wall_questions_per_second": QUESTIONS_PER_STEP * steps / (last - launched),
        "wall_seconds_to_last_step": last - launched,
    }


def run_tamer_mode(benchmark: ThroughputBenchmark, label: str) -> dict[str, Any]:
    title, sets = MODES[label]
    result = benchmark.run(label, title, sets)
    run_id = result.get("run_id")
    if run_id:
        result.update(step_rates(benchmark.home / label / "tamer.db", run_id, benchmark.arguments.warmup))
        result.update(wall_rate(benchmark.home / label / "tamer.db", run_id, result["launched_at"]))
    benchmark.save()
    return result


# --- the Hugging Face Trainer baselines, each in a subprocess of its own --------------------------------


def hf_run(arguments: argparse.Namespace) -> None:
    """One HF Trainer run (this script with --hf-run MODE): prints a JSON line of its rates."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from tamer.engine.collate import pad_batch
    from tamer.recipes import squad
    from tamer.units import parse_size

    mode = arguments.hf_run
    cuda = torch.cuda.is_available()
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    if arguments.gpu_mem_cap and cuda:
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, parse_size(arguments.gpu_mem_cap) / torch.cuda.get_device_properties(0).total_memory)
        )
    tokenizer = squad.load_tokenizer("bundled", "")
    train, _ = squad.load_train_and_eval(arguments.data, 16, 0)
    examples, _ = squad.build_examples(train, tokenizer, 512)
    rows = [{"input_ids": example.input_ids, "labels": example.labels} for example in examples]

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        chosen = [squad.Example(0, "", feature["input_ids"], feature["labels"], False) for feature in features]
        batch = pad_batch(chosen, tokenizer.pad_token_id, 512 if mode == "hf_max_len" else None)
        return {name: batch[name] for name in ("input_ids", "attention_mask", "labels")}

    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            synchronize()
            step_times.append(time.perf_counter() - self.started)

    model = AutoModelForCausalLM.from_pretrained(arguments.model, dtype=torch.bfloat16).to("cuda" if cuda else "cpu")
    grouping: dict[str, Any] = {}
    if mode == "hf_group_by_length":  # a flag until transformers 5.x renamed it to a sampling strategy
        known = {field.name for field in dataclasses.fields(TrainingArguments)}
        grouping = (
            {"group_by_length": True} if "group_by_length" in known else {"train_sampling_strategy": "group_by_length"}
        )
    training = TrainingArguments(
        output_dir=str(arguments.out / "hf" / mode),
        per_device_train_batch_size=QUESTIONS_PER_STEP,
        max_steps=arguments.steps,
        learning_rate=2e-5,
        bf16=True,
        gradient_checkpointing=True,
        optim="paged_adamw_8bit",
        save_strategy="no",
        report_to=[],
        logging_steps=arguments.steps,
        seed=0,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        **grouping,
    )
    trainer = Trainer(
        model=model, args=training, train_dataset=_ListDataset(rows), data_collator=collate, callbacks=[Timer()]
    )
    output = trainer.train()
    measured = step_times[arguments.warmup :]
    print(
        json.dumps(
            {
                "seconds_per_step": sum(measured) / len(measured),
                "questions_per_second": QUESTIONS_PER_STEP * len(measured) / sum(measured),
                "train_loss": output.training_loss,
                "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
            }
        )
    )


class _ListDataset:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def run_hf_mode(benchmark: ThroughputBenchmark, label: str) -> dict[str, Any]:
    arguments = benchmark.arguments
    command = [
        sys.executable,
        __file__,
        "--hf-run",
        label,
        "--model",
        str(arguments.model),
        "--steps",
        str(arguments.steps),
        "--warmup",
        str(arguments.warmup),
        "--data",
        arguments.data,
        "--out",
        str(benchmark.out),
    ]
    command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else []
    log_path = benchmark.out / "logs" / f"{label}.log"
    launched = time.time()
    with open(log_path, "w") as log:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    result: dict[str, Any] = {
        "label": label,
        "title": HF_MODES[label],
        "command": shlex.join(command),
        "exit_code": finished.returncode,
        "seconds": time.time() - launched,
        "log": str(log_path),
    }
    lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
    if finished.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
        result["status"] = "done"
    else:
        result.update(status="error", failure_reason=_last_line(log_path))
    benchmark.results["runs"][label] = result
    benchmark.save()
    benchmark.progress(f"{label}: {result['status']} {_number(result.get('questions_per_second'), 1)} questions/s")
    return result


# --- report -----------------------------------------------------------------------------------------


def report(benchmark: ThroughputBenchmark) -> None:
    runs = benchmark.results["runs"]
    print()
    print(
        f"| mode | questions/s | questions/s, wall clock from launch | useful tokens/s | s/step (mean / median) | computed / useful | step sizes | "
        f"s/step new size / seen size | loss after step {benchmark.arguments.steps} | peak reserved GiB | plan |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for result in runs.values():
        if "questions_per_second" not in result:
            print(f"| {result['title']} | failed: {result.get('failure_reason', '-')} | | | | | | | | | |")
            continue
        loss = result.get("last_loss", result.get("train_loss"))
        peak = result.get("measured_peak", result.get("peak_reserved"))
        print(
            f"| {result['title']} | {_number(result.get('questions_per_second'), 1)} | {_number(result.get('wall_questions_per_second'), 1)} | "
            f"{_number(result.get('useful_tokens_per_second'))} | "
            f"{_number(result.get('seconds_per_step'), 3)} / {_number(result.get('median_seconds_per_step'), 3)} | "
            f"{_number(result.get('computed_per_useful'), 2)} | {result.get('step_sizes', '-')} | "
            f"{_number(result.get('new_size_seconds_per_step'), 3)} / {_number(result.get('seen_size_seconds_per_step'), 3)} | {_number(loss, 4)} | "
            f"{_gib(peak)} | {result.get('settled_summary', '-')} |"
        )
    print(
        f"\nrates over steps {benchmark.arguments.warmup + 1}..{benchmark.arguments.steps}; "
        f"{QUESTIONS_PER_STEP} questions per optimizer step; data {benchmark.arguments.data}; results in {benchmark.out}"
    )


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.hf_run:
        hf_run(arguments)
        return
    benchmark = ThroughputBenchmark(arguments)
    benchmark.results["device"] = _device_name()
    for label in arguments.modes.split(","):
        if label not in MODES:
            raise SystemExit(f"--modes: unknown mode {label}; choose from {', '.join(MODES)}")
        run_tamer_mode(benchmark, label)
    if arguments.hf:
        if not arguments.model:
            raise SystemExit("--hf needs --model DIR")
        for label in arguments.hf_modes.split(","):
            if label not in HF_MODES:
                raise SystemExit(f"--hf-modes: unknown mode {label}; choose from {', '.join(HF_MODES)}")
            run_hf_mode(benchmark, label)
    report(benchmark)


def _device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
