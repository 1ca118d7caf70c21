"""Escalation benchmark: how fast each way of fitting a model on a capped card gets to a plan that fits,
and how fast that plan trains.

    python bench/escalation.py --model DIR --gpu-mem-cap 15GiB --steps 20 [--home DIR] [--out DIR] [--sweep K] [--quick]
    python bench/escalation.py --preset tiny --device cpu --steps 6 --sweep 2 --out /tmp/esc   # CPU plumbing check

Every run is `python -m tamer run squad` on the same model, bundled tokenizer and data, every batch padded
to max_seq_len (8 sequences x 512 tokens per optimizer step), no checkpoint before the end, in a fresh
home of its own (HOME/<time>/<label>) so no run's planner calibrates on another run's attempts:

  (a) HF-style batch halving: the card ladder with only split_micro_batch.
  (b) the card's fixed ladder, rung by rung.
  (c) tamer's planner (the default).
  (d) a sweep: the K fastest plans `tamer plan --all` predicts to fit, plus the 2 predicted not to fit that
      are faster than all of those and nearest the boundary (lowest predicted peak), each run exactly
      (start_plan, an empty card ladder: a plan that does not fit ends `failed`). Best = fastest that fit.
  (e) the (c) settled plan in a bare training loop (same model build, loss, autocast, optimizer, memory
      cap; no supervisor, SQLite, heartbeats) in a subprocess of its own, vs the same plan under tamer.
  (f) mid-run OOM recovery: the planner with an OOM injected in forward at step 8 of attempt 1, once
      split in-process (ladder.in_process_split=true) and once by restarting the child (false).

Per strategy: attempts, failed attempts, the settled plan (that of the last attempt that trained, after
any in-process split), seconds from launching `tamer run` to that attempt's first optimizer step (steps
of failed attempts are redone: nothing is checkpointed before the end), steady-state tokens/s (median
over its steps after the first 3 of 8 x 512 / step_time), the ratio to (d)'s best, and the planner's
predicted peak reserved for the plan vs the measured one (max steps.mem_reserved, else the attempt's
peak_reserved). (e) compares wall-clock intervals between consecutive steps on both sides, so tamer's
per-step SQLite write and heartbeats count against it. (f) injects at step 8 (earlier in runs too short
for it) and only at the planner's first micro-batch, so the retry after a split passes; it times from
the failure to the next optimizer step: in-process, from the `in_process_split` event's failure time to
the next step row; restart, from attempt 1's end to attempt 2's first step at or past the failed one
(attempt 2 starts over from step 0: no checkpoint was written).

Prints a progress line per run as it finishes and rewrites OUT/escalation.json after each, then a
markdown table and the targets with PASS/FAIL. --quick skips the baselines (a) and (b), which spend
most of their time failing; every target is still checked. --extra "ARGS" appends raw arguments to
every `tamer run` (e.g. "--host-mem-cap 35MiB": real host OOMs with the tiny preset on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tamer.config import build_config, config_from_dict
from tamer.plan import Plan
from tamer.planner import Workload, estimate
from tamer.protocol import PLAN_FILE, attempt_dir
from tamer.state.db import Database

GIB = 2**30
WARMUP_STEPS = 3
"""Steps of each attempt left out of steady-state throughput (allocator warm-up, kernel autotuning)."""
SWEEP_NEAR_MISSES = 2
INJECT_STEP = 8
ASSUMED_CARD = "16GiB"
"""The card `tamer plan` ranks plans for when no --gpu-mem-cap is given (CPU testing only)."""
CONFIG_SETS = ["tokenizer=bundled", "pad_to_max_len=true", "checkpoint_every=1000", "eval_samples=16"]

STRATEGIES = {
    "a_halving": ("(a) HF-style batch halving", ["ladder.mode=card", "ladder.order=[split_micro_batch]"]),
    "b_card": ("(b) card ladder", ["ladder.mode=card"]),
    "c_planner": ("(c) tamer planner", ["ladder.mode=planner"]),
}

SPEED_TARGET = 0.90
ATTEMPTS_TARGET = 2
FIRST_STEP_TARGET = 60.0
OVERHEAD_TARGET = 0.97
IN_PROCESS_RECOVERY_TARGET = 1.0


def run_arguments(description: str, steps: int, results: str) -> argparse.ArgumentParser:
    """The options every benchmark of `tamer run`s shares (this one and bench/multigpu.py)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--model", help="Model folder (e.g. from bench/make_random_model.py); the preset's model if left out."
    )
    parser.add_argument("--preset", default="llama-3.2-1b", help="tamer preset (tiny for CPU testing).")
    parser.add_argument("--device", help="Passed to tamer run (auto, cpu, cuda).")
    parser.add_argument("--gpu-mem-cap", help="Cap on PyTorch's allocator of every run (every process), e.g. 15GiB.")
    parser.add_argument("--steps", type=int, default=steps, help="Optimizer steps per run.")
    parser.add_argument(
        "--home", type=Path, help="Folder for the runs' homes, one per run under HOME/<time>/ (default OUT/home)."
    )
    parser.add_argument(
        "--out", type=Path, help=f"Folder for {results} and the logs (default: a new temporary folder)."
    )
    parser.add_argument("--extra", default="", help="Raw arguments appended to every `tamer run`.")
    return parser


def checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    arguments = parser.parse_args(argv)
    if arguments.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than {WARMUP_STEPS} (the warm-up steps left out of throughput)")
    return arguments


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_arguments(__doc__.splitlines()[0], 20, "escalation.json")
    parser.add_argument("--sweep", type=int, default=4, help="Predicted-to-fit plans in the sweep (d).")
    parser.add_argument("--quick", action="store_true", help="Skip the baselines (a) and (b).")
    parser.add_argument("--bare-loop", metavar="PLAN_JSON", help=argparse.SUPPRESS)
    return checked(parser, argv)


def run_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """The config options every run shares, as `tamer run` builds them from its command line."""
    return {
        "model": arguments.model,
        "data": "bundled",
        "max_steps": arguments.steps,
        "device": arguments.device,
        "gpu_mem_cap": arguments.gpu_mem_cap,
    }


# --- one tamer run, and what its database says ----------------------------------------------------


class Benchmark:
    """The runs of one invocation: launches them, keeps their summaries and writes them to OUT."""

    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.out = arguments.out or Path(tempfile.mkdtemp(prefix="tamer-escalation-"))
        # A fresh folder per invocation: a planner calibrates on the attempts already in its home.
        self.home = (arguments.home or self.out / "home") / time.strftime("%Y%m%d-%H%M%S")
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {
            "arguments": {
                name: str(value) if isinstance(value, Path) else value for name, value in vars(arguments).items()
            },
            "runs": {},
        }
        self.started = time.time()

    RESULTS = "escalation.json"

    def save(self) -> None:
        path = self.out / self.RESULTS
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(temporary, path)

    def progress(self, line: str) -> None:
        print(f"[{time.time() - self.started:6.1f} s] {line}", flush=True)

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
            "bundled",
            "--max-steps",
            str(arguments.steps),
            "--home",
            str(home),
        ]
        command += ["--model", arguments.model] if arguments.model else []
        command += ["--device", arguments.device] if arguments.device else []
        command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else []
        for item in CONFIG_SETS:
            command += ["--set", item]
        return command

    def command(self, label: str, sets: list[str], inject: str | None = None) -> list[str]:
        """`tamer run` of `label` (home HOME/label) with `sets`, a fault and --extra."""
        command = self.tamer_command(self.home / label)
        for item in sets:
            command += ["--set", item]
        command += ["--inject", inject] if inject else []
        return command + shlex.split(self.arguments.extra)

    def run(self, label: str, title: str, sets: list[str], inject: str | None = None) -> dict[str, Any]:
        """One `tamer run` with `sets` (and a fault), summarised from its database."""
        command = self.command(label, sets, inject)
        log_path = self.out / "logs" / f"{label}.log"
        launched = time.time()
        with open(log_path, "w") as log:
            finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
        return self.record(label, title, command, finished.stdout, finished.returncode, launched)

    def record(
        self, label: str, title: str, command: list[str], stdout: str, exit_code: int, launched: float
    ) -> dict[str, Any]:
        """The summary of the finished run of `label` (its home under self.home, its stdout, the run id first)."""
        home = self.home / label
        log_path = self.out / "logs" / f"{label}.log"
        log_text = stdout
        with open(log_path, "a") as log:
            log.write(log_text)
        result = {
            "label": label,
            "title": title,
            "command": shlex.join(command),
            "exit_code": exit_code,
            "launched_at": launched,
            "seconds": time.time() - launched,
            "log": str(log_path),
        }
        run_id = log_text.split()[0] if log_text.split() else None
        if run_id and (home / "tamer.db").is_file():
            result.update(summarize_run(home / "tamer.db", run_id, launched))
        else:
            result["status"] = "error"
            result["failure_reason"] = _last_line(log_path)
        self.results["runs"][label] = result
        self.save()
        self.progress(progress_line(result))
        return result


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def summarize_run(db_path: Path, run_id: str, launched: float) -> dict[str, Any]:
    """Attempts, steps, events, the settled plan, throughput and peaks of one run."""
    db = Database(db_path, create=False)
    try:
        run = db.run(run_id)
        attempts = db.attempts(run_id)
        steps = db.steps(run_id)
        events = db.events(run_id)
    finally:
        db.close()
    config = config_from_dict(json.loads(run["config_json"]))
    tokens_per_step = config.effective_batch_size * config.max_seq_len
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": run["status"],
        "failure_reason": run["failure_reason"],
        "tokens_per_step": tokens_per_step,
        "attempts": [
            {
                "plan": json.loads(attempt["plan_json"]),
                **{
                    key: attempt[key]
                    for key in (
                        "attempt",
                        "plan_summary",
                        "reason",
                        "started_at",
                        "first_step_at",
                        "ended_at",
                        "last_step",
                        "outcome",
                        "phase",
                        "micro_batch_size",
                        "message",
                        "peak_allocated",
                        "peak_reserved",
                    )
                },
            }
            for attempt in attempts
        ],
        "failed_attempts": sum(1 for attempt in attempts if attempt["outcome"] != "done"),
        "steps": [
            {
                key: step[key]
                for key in (
                    "attempt",
                    "step",
                    "step_time",
                    "wall_time",
                    "micro_batch_size",
                    "grad_accumulation",
                    "mem_reserved",
                    "mem_peak",
                    "loss",
                )
            }
            for step in steps
        ],
        "events": [
            {
                "time": event["time"],
                "attempt": event["attempt"],
                "kind": event["kind"],
                "message": event["message"],
                "detail": json.loads(event["detail_json"]) if event["detail_json"] else None,
            }
            for event in events
            if event["kind"] in ("planner", "escalate", "in_process_split", "attempt_start", "failed")
        ],
    }
    if not attempts:
        return summary
    # The settled attempt is the last one that trained: a last attempt that only redid the final
    # evaluation (after an OOM there) has no steps of its own.
    trained = {step["attempt"] for step in steps}
    last = next((attempt for attempt in reversed(attempts) if attempt["attempt"] in trained), attempts[-1])
    settled = steps_of(steps, last["attempt"])
    plan = settled_plan(Path(run["run_dir"]), last)
    reserved = [step["mem_reserved"] for step in settled if step["mem_reserved"] is not None]
    summary.update(
        {
            "settled_attempt": last["attempt"],
            "first_step_seconds": settled[0]["wall_time"] - launched if settled else None,
            "settled_plan": plan.to_dict(),
            "settled_summary": plan.describe(),
            "tokens_per_second": steady_rate(tokens_per_step, [step["step_time"] for step in settled][WARMUP_STEPS:]),
            "interval_tokens_per_second": steady_rate(
                tokens_per_step, intervals([step["wall_time"] for step in settled])
            ),
            "predicted_peak": predicted_peak(config, plan),
            "measured_peak": max(reserved) if reserved else last["peak_reserved"],
        }
    )
    return summary


def steps_of(steps: list[dict[str, Any]], attempt: int) -> list[dict[str, Any]]:
    return sorted((step for step in steps if step["attempt"] == attempt), key=lambda step: step["step"])


def settled_plan(run_dir: Path, attempt: dict[str, Any]) -> Plan:
    """The plan an attempt ended with: the child rewrites attempts/<n>/plan.json when it splits in process."""
    updated = attempt_dir(run_dir, attempt["attempt"]) / PLAN_FILE
    return Plan.from_dict(json.loads(updated.read_text() if updated.is_file() else attempt["plan_json"]))


def intervals(stamps: list[float]) -> list[float]:
    """Seconds between consecutive step ends, for the steps after the first WARMUP_STEPS."""
    return [stamps[index] - stamps[index - 1] for index in range(WARMUP_STEPS, len(stamps))]


def steady_rate(tokens_per_step: int, seconds: list[float]) -> float | None:
    """Median tokens/s over per-step durations; None without any."""
    seconds = [value for value in seconds if value and value > 0]
    return tokens_per_step / statistics.median(seconds) if seconds else None


def predicted_peak(config: Any, plan: Plan) -> int | None:
    """The planner's predicted peak reserved bytes for `plan` (as `tamer plan` computes it, for the shape it plans)."""
    from tamer.planner.shape import resolve

    shape = resolve(config).shape
    if shape is None:
        return None
    workload = Workload.from_config(config, supervised_per_sequence=config.planner.supervised_per_sequence)
    return estimate(shape, plan, workload).reserved


# --- (d) the sweep's candidates --------------------------------------------------------------------


def sweep_candidates(benchmark: Benchmark) -> list[dict[str, Any]]:
    """The candidates to run exactly: the K fastest predicted to fit, then the near misses."""
    arguments = benchmark.arguments
    command = [
        sys.executable,
        "-m",
        "tamer",
        "plan",
        "squad",
        "--preset",
        arguments.preset,
        "--json",
        "--all",
        "--home",
        str(benchmark.home / "plan"),
    ]
    command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else ["--gpu-mem", ASSUMED_CARD]
    for item in CONFIG_SETS:
        command += ["--set", item]
    command += ["--set", f"model={arguments.model}"] if arguments.model else []
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        benchmark.results["sweep_error"] = finished.stderr.strip()[-500:]
        benchmark.progress(f"(d) `tamer plan` failed: {benchmark.results['sweep_error']}")
        return []
    candidates = json.loads(finished.stdout)["candidates"]
    by_speed = sorted(candidates, key=lambda candidate: (-candidate["speed"], candidate["reserved"]))
    fitting = [candidate for candidate in by_speed if candidate["fits"] == "yes"][: arguments.sweep]
    fastest_fit = fitting[0]["speed"] if fitting else 0.0
    faster_misses = [
        candidate for candidate in by_speed if candidate["fits"] != "yes" and candidate["speed"] > fastest_fit
    ]
    chosen = fitting + sorted(faster_misses, key=lambda candidate: candidate["reserved"])[:SWEEP_NEAR_MISSES]
    benchmark.results["sweep_candidates"] = chosen
    benchmark.save()
    return chosen


# --- (e) the bare loop -----------------------------------------------------------------------------


def bare_loop(arguments: argparse.Namespace) -> None:
    """Train `--steps` steps of the plan in `--bare-loop` with tamer's engine pieces and nothing else;
    prints one JSON line: the wall-clock end of each step and the peak reserved bytes."""
    import torch

    from tamer.engine.collate import pad_batch
    from tamer.engine.loss import loss_sum
    from tamer.engine.model import build_model, materialize_random_init, trainable_parameters
    from tamer.engine.optim import build_optimizer, build_scheduler, warmup_steps
    from tamer.engine.sampling import SampleOrder
    from tamer.plan import LOSS_CHUNK_TOKENS
    from tamer.recipes import squad

    config = build_config(arguments.preset, None, run_options(arguments), CONFIG_SETS)
    plan = Plan.from_dict(json.loads(arguments.bare_loop))
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        if config.gpu_mem_cap:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, config.gpu_mem_cap / total), device)
    tokenizer = squad.load_tokenizer(config.tokenizer, config.model)
    train_records, _ = squad.load_train_and_eval(config.data, config.eval_samples, config.seed)
    examples, _ = squad.build_examples(train_records, tokenizer, config.max_seq_len)
    with tempfile.TemporaryDirectory() as workdir:
        base = config.model
        if config.init == "random":
            materialize_random_init(config, Path(workdir) / "init")
            base = str(Path(workdir) / "init")
        model = build_model(config, plan, device, base, None)
    parameters = [parameter for _, parameter in trainable_parameters(model)]
    optimizer = build_optimizer(plan, parameters, config)
    scheduler = build_scheduler(optimizer, arguments.steps, warmup_steps(config, arguments.steps))
    scaler = torch.amp.GradScaler("cuda") if plan.autocast_dtype == "fp16" and use_cuda else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.autocast_dtype)
    order = SampleOrder(len(examples), config.seed)
    stamps = []
    for step in range(arguments.steps):
        sample_ids = order.indices(step * plan.effective_batch_size, plan.effective_batch_size)
        supervised = sum(squad.answer_token_count(examples[index]) for index in sample_ids)
        total_loss = torch.zeros((), device=device)
        for start in range(0, len(sample_ids), plan.micro_batch_size):
            chunk = [examples[index] for index in sample_ids[start : start + plan.micro_batch_size]]
            collated = pad_batch(chunk, tokenizer.pad_token_id, config.max_seq_len)
            batch = {key: value.to(device) for key, value in collated.items() if isinstance(value, torch.Tensor)}
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                summed, _ = loss_sum(model, batch, LOSS_CHUNK_TOKENS if plan.chunked_loss else None)
            loss = summed / max(1, supervised)
            (scaler.scale(loss) if scaler else loss).backward()
            total_loss += loss.detach()
            del loss, summed
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(total_loss)  # waits for the device, as the trainer's loss read does
        stamps.append(time.time())
    peak = torch.cuda.max_memory_reserved(device) if use_cuda else None
    print(
        json.dumps(
            {
                "stamps": stamps,
                "peak_reserved": peak,
                "tokens_per_step": config.effective_batch_size * config.max_seq_len,
            }
        )
    )


def run_bare_loop(benchmark: Benchmark, plan: dict[str, Any]) -> dict[str, Any]:
    """The bare loop in a fresh process (the benchmark's own never touches CUDA), with the plan's env."""
    arguments = benchmark.arguments
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--bare-loop",
        json.dumps(plan),
        "--preset",
        arguments.preset,
        "--steps",
        str(arguments.steps),
    ]
    for option in ("model", "device", "gpu_mem_cap"):
        value = getattr(arguments, option)
        command += [f"--{option.replace('_', '-')}", value] if value else []
    log_path = benchmark.out / "logs" / "e_bare_loop.log"
    started = time.time()
    with open(log_path, "w") as log:
        finished = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, **plan.get("env", {})}
        )
    result: dict[str, Any] = {
        "label": "e_bare_loop",
        "plan": plan,
        "exit_code": finished.returncode,
        "seconds": time.time() - started,
        "log": str(log_path),
    }
    lines = finished.stdout.strip().splitlines()
    if finished.returncode == 0 and lines:
        measured = json.loads(lines[-1])
        result.update(
            measured, tokens_per_second=steady_rate(measured["tokens_per_step"], intervals(measured["stamps"]))
        )
    else:
        result["failure_reason"] = _last_line(log_path)
    benchmark.results["bare_loop"] = result
    benchmark.save()
    rate = result.get("tokens_per_second")
    benchmark.progress(
        f"(e) bare loop: {_number(rate) + ' tokens/s' if rate else 'failed: ' + result.get('failure_reason', '')}"
    )
    return result


# --- (f) recovery time -----------------------------------------------------------------------------


def inject_step(steps: int) -> int:
    """Step 8, or earlier when the runs are shorter, leaving steps after it to recover into."""
    return max(2, min(INJECT_STEP, steps - 2))


def recovery_seconds(result: dict[str, Any], mode: str, failed_step: int) -> float | None:
    """Seconds from the injected failure to the next optimizer step, or None when it did not happen as planned."""
    steps = result.get("steps") or []
    if mode == "in_process":
        splits = [event for event in result.get("events", []) if event["kind"] == "in_process_split"]
        if not splits:
            return None
        failed_at = (splits[0]["detail"] or {}).get("failed_at", splits[0]["time"])
        later = [
            step["wall_time"]
            for step in steps
            if step["attempt"] == splits[0]["attempt"] and step["wall_time"] > failed_at
        ]
        return min(later) - failed_at if later else None
    attempts = result.get("attempts") or []
    if len(attempts) < 2 or attempts[0]["ended_at"] is None:
        return None
    resumed = [
        step["wall_time"] for step in steps if step["attempt"] == attempts[1]["attempt"] and step["step"] >= failed_step
    ]
    return min(resumed) - attempts[0]["ended_at"] if resumed else None


# --- reporting -------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def fitted(result: dict[str, Any]) -> bool:
    return result.get("status") == "done"


def settled_text(result: dict[str, Any]) -> str:
    if fitted(result):
        return result.get("settled_summary", "-")
    if result.get("status") == "failed" and (result.get("failure_reason") or "").startswith("out of memory"):
        return "no fit"
    return f"{result.get('status', 'error')} (exit {result['exit_code']}): {(result.get('failure_reason') or '')[:80]}"


def progress_line(result: dict[str, Any]) -> str:
    attempts = len(result.get("attempts") or [])
    return (
        f"{result['title']}: {result.get('status')} in {result['seconds']:.1f} s, {attempts} attempts "
        f"({result.get('failed_attempts', 0)} failed), first step {_number(result.get('first_step_seconds'), 1)} s, "
        f"{_number(result.get('tokens_per_second')) if fitted(result) else '-'} tokens/s, settled: {settled_text(result)}"
    )


def table_row(result: dict[str, Any], best: float | None) -> str:
    rate = result.get("tokens_per_second") if fitted(result) else None
    ratio = f"{rate / best:.2f}" if rate and best else "-"
    return (
        f"| {result['title']} | {len(result.get('attempts') or [])} | {result.get('failed_attempts', '-')} | "
        f"{_number(result.get('first_step_seconds'), 1)} | {settled_text(result)} | {_number(rate)} | {ratio} | "
        f"{_gib(result.get('predicted_peak'))} | {_gib(result.get('measured_peak'))} |"
    )


def target(name: str, value: float | None, goal: float, at_most: bool, digits: int = 2) -> dict[str, Any]:
    passed = None if value is None else (value <= goal if at_most else value >= goal)
    return {
        "target": name,
        "value": value,
        "digits": digits,
        "goal": f"{'<=' if at_most else '>='} {goal:g}",
        "result": {None: "n/a", True: "PASS", False: "FAIL"}[passed],
    }


def report(benchmark: Benchmark) -> None:
    runs = benchmark.results["runs"]
    sweep = [result for label, result in runs.items() if label.startswith("d_sweep")]
    fits = [result for result in sweep if fitted(result) and result.get("tokens_per_second")]
    best_fit = max(fits, key=lambda result: result["tokens_per_second"]) if fits else None
    best = best_fit["tokens_per_second"] if best_fit else None
    print(
        f"\n{benchmark.arguments.steps} steps of 8 x 512 tokens per run, cap {benchmark.arguments.gpu_mem_cap or 'none'}; "
        f"peaks in GiB reserved; tokens/s = steady-state median\n"
    )
    print(
        "| strategy | attempts | failed | first step (s) | settled plan | tokens/s | vs (d) best | predicted peak | measured peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label in STRATEGIES:
        if label in runs:
            print(table_row(runs[label], best))
    for result in sweep:
        print(table_row(result, best))
    if best_fit is not None:
        print(f"| (d) best of the sweep | | | | {best_fit['settled_summary']} | {_number(best)} | 1.00 | | |")

    planner = runs.get("c_planner", {})
    planner_rate = planner.get("tokens_per_second") if fitted(planner) else None
    bare = benchmark.results.get("bare_loop", {})
    under_tamer = planner.get("interval_tokens_per_second") if fitted(planner) else None
    print(
        f"\n(e) the (c) plan, wall-clock per step: under tamer {_number(under_tamer)} tokens/s, "
        f"bare loop {_number(bare.get('tokens_per_second'))} tokens/s (bare loop peak {_gib(bare.get('peak_reserved'))} GiB)"
    )
    recovery = benchmark.results.get("recovery", {})
    print(
        "\n(f) injected OOM in forward at step "
        f"{recovery.get('failed_step', '-')}: in-process split {_number(recovery.get('in_process'), 2)} s, "
        f"restart {_number(recovery.get('restart'), 2)} s from the failure to the next optimizer step"
    )

    targets = [
        target("(c)/(d) tokens/s", planner_rate / best if planner_rate and best else None, SPEED_TARGET, at_most=False),
        target(
            "(c) attempts",
            len(planner["attempts"]) if fitted(planner) else None,
            ATTEMPTS_TARGET,
            at_most=True,
            digits=0,
        ),
        target(
            "(c) first optimizer step (s)",
            planner.get("first_step_seconds") if fitted(planner) else None,
            FIRST_STEP_TARGET,
            at_most=True,
            digits=1,
        ),
        target(
            "(e) tamer / bare loop tokens/s",
            under_tamer / bare["tokens_per_second"] if under_tamer and bare.get("tokens_per_second") else None,
            OVERHEAD_TARGET,
            at_most=False,
        ),
        target("(f) in-process recovery (s)", recovery.get("in_process"), IN_PROCESS_RECOVERY_TARGET, at_most=True),
    ]
    benchmark.results["targets"] = targets
    benchmark.save()
    print("\n| target | measured | goal | result |\n|---|---|---|---|")
    for item in targets:
        print(f"| {item['target']} | {_number(item['value'], item['digits'])} | {item['goal']} | {item['result']} |")
    print(
        f"\nfull results: {benchmark.out / 'escalation.json'}; total {time.time() - benchmark.started:.0f} s",
        flush=True,
    )


# --- the invocation --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.bare_loop:
        bare_loop(arguments)
        return
    benchmark = Benchmark(arguments)
    benchmark.progress(f"results in {benchmark.out}, homes in {benchmark.home}")
    title, sets = STRATEGIES["c_planner"]
    planner = benchmark.run("c_planner", title, sets)

    for index, candidate in enumerate(sweep_candidates(benchmark), 1):
        sets = ["ladder.mode=card", "ladder.order=[]", f"start_plan={json.dumps(candidate['plan'])}"]
        benchmark.run(
            f"d_sweep_{index}",
            f"(d) sweep {index} (fits: {candidate['fits']}, predicted {candidate['relative_speed']:.2f}x)",
            sets,
        )

    if fitted(planner):
        run_bare_loop(benchmark, planner["settled_plan"])

    failed_step = inject_step(arguments.steps)
    first_micro_batch = planner["attempts"][0]["plan"]["micro_batch_size"] if planner.get("attempts") else 1
    # The fault fires only at the planner's first micro-batch: once split in process, the retry passes.
    fault = f"oom:step={failed_step},phase=forward,attempt=1,min_micro_batch={first_micro_batch}"
    recovery: dict[str, Any] = {"failed_step": failed_step, "fault": fault}
    for mode, split in (("in_process", "true"), ("restart", "false")):
        result = benchmark.run(
            f"f_{mode}",
            f"(f) injected OOM, {mode.replace('_', '-')}",
            ["ladder.mode=planner", f"ladder.in_process_split={split}"],
            inject=fault,
        )
        recovery[mode] = recovery_seconds(result, mode, failed_step)
        benchmark.results["recovery"] = recovery
        benchmark.save()
        benchmark.progress(f"(f) {mode} recovery: {_number(recovery[mode], 2)} s")

    if not arguments.quick:
        for label in ("b_card", "a_halving"):
            title, sets = STRATEGIES[label]
            benchmark.run(label, title, sets)
    report(benchmark)


if __name__ == "__main__":
    main()
