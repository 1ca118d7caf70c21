"""Supervisor overhead: steps/s of a run under tamer vs the same training loop without it.

    python bench/overhead.py [--preset tiny] [--steps 200] [--set key=value ...]

Under tamer the child writes a step row to SQLite per step, heartbeats every micro-step and
checkpoints every `checkpoint_every` steps; the bare loop does the same maths with none of that.
Steady state only: both skip the first steps (process start, model load, warm-up). Prints a table and
the mean checkpoint time.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tamer.config import build_config
from tamer.engine.collate import pad_batch
from tamer.engine.loss import loss_sum
from tamer.engine.model import build_model, materialize_random_init
from tamer.engine.optim import build_optimizer, build_scheduler, warmup_steps
from tamer.engine.sampling import SampleOrder
from tamer.plan import Plan
from tamer.recipes import squad

WARMUP = 5


def under_tamer(args: argparse.Namespace, home: Path) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "tamer",
        "run",
        "squad",
        "--preset",
        args.preset,
        "--max-steps",
        str(args.steps),
        "--device",
        "cpu",
        "--home",
        str(home),
        *sum((["--set", s] for s in args.set), []),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    conn = sqlite3.connect(home / "tamer.db")
    times = [t for (t,) in conn.execute("SELECT wall_time FROM steps ORDER BY step")]
    seconds = [
        json.loads(d)["seconds"] for (d,) in conn.execute("SELECT detail_json FROM events WHERE kind = 'checkpoint'")
    ]
    return (len(times) - 1 - WARMUP) / (times[-1] - times[WARMUP]), sum(seconds) / max(1, len(seconds))


def bare_loop(args: argparse.Namespace, workdir: Path) -> float:
    config = build_config(args.preset, None, {"max_steps": args.steps, "device": "cpu"}, args.set)
    plan = Plan(
        micro_batch_size=config.micro_batch_size,
        grad_accumulation=config.grad_accumulation,
        eval_batch_size=config.eval_batch_size,
    )
    tokenizer = squad.load_tokenizer("bundled" if config.init == "random" else config.tokenizer, config.model)
    train_records, _ = squad.load_train_and_eval(config.data, config.eval_samples, config.seed)
    examples, _ = squad.build_examples(train_records, tokenizer, config.max_seq_len)
    source = config.model
    if config.init == "random":
        materialize_random_init(config, workdir / "init")
        source = str(workdir / "init")
    model = build_model(config, plan, torch.device("cpu"), source, None)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(plan, parameters, config)
    scheduler = build_scheduler(optimizer, args.steps, warmup_steps(config, args.steps))
    order = SampleOrder(len(examples), config.seed)
    stamps = []
    for step in range(args.steps):
        ids = order.indices(step * plan.effective_batch_size, plan.effective_batch_size)
        supervised = sum(squad.answer_token_count(examples[i]) for i in ids)
        for start in range(0, len(ids), plan.micro_batch_size):
            batch = pad_batch([examples[i] for i in ids[start : start + plan.micro_batch_size]], tokenizer.pad_token_id)
            summed, _ = loss_sum(model, batch)
            (summed / supervised).backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return (len(stamps) - 1 - WARMUP) / (stamps[-1] - stamps[WARMUP])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tamer_rate, checkpoint_seconds = under_tamer(args, Path(tmp) / "home")
        bare_rate = bare_loop(args, Path(tmp))
    print(f"| preset {args.preset}, {args.steps} steps, CPU ({torch.get_num_threads()} threads) | steps/s |")
    print("|---|---|")
    print(f"| bare loop | {bare_rate:.2f} |")
    print(f"| under tamer (SQLite row per step, heartbeat, checkpoints) | {tamer_rate:.2f} |")
    print(f"| ratio tamer / bare | {tamer_rate / bare_rate:.3f} |")
    print(f"mean checkpoint time: {checkpoint_seconds:.3f} s")


if __name__ == "__main__":
    main()
