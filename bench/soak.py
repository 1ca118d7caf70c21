"""Soak: a run SIGKILLed at random moments for a long time still ends bit-identical to an uninterrupted run.

    python bench/soak.py [--minutes 10] [--steps 1500] [--kill-after 6 20]

Runs the tiny preset once without interruption, then again while SIGKILLing its child (the training
process) at a random moment 6-20 s after each attempt starts, until the run finishes and at least
`--minutes` have passed (the run is long enough for that). Prints kills, restarts, and whether the
final weights (`torch.equal` on every tensor) and the sample sequence match.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.runs import final_weights, sample_ids, start  # noqa: E402

COMMON = [
    "run",
    "squad",
    "--preset",
    "tiny",
    "--set",
    "checkpoint_every=10",
    "--set",
    "restart_backoff=0",
    "--set",
    "kill_backoff=0",
    "--set",
    "max_restarts=100000",
    "--set",
    "crash_loop_limit=1000",
    "--set",
    "eval_samples=16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--kill-after", type=float, nargs=2, default=(6.0, 20.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chooser = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base_home, soak_home = Path(tmp) / "base", Path(tmp) / "soak"
        started = time.time()
        process, base_id = start(*COMMON, "--max-steps", str(args.steps), home=base_home)
        assert process.wait() == 0, process.stderr.read()
        print(f"uninterrupted: {args.steps} steps in {time.time() - started:.0f} s", flush=True)

        started = time.time()
        process, soak_id = start(*COMMON, "--max-steps", str(args.steps), home=soak_home)
        kills = 0
        while process.poll() is None:
            conn = sqlite3.connect(soak_home / "tamer.db", timeout=30)
            row = conn.execute(
                "SELECT attempt, pid, started_at FROM attempts WHERE run_id = ? AND ended_at IS NULL "
                "ORDER BY attempt DESC LIMIT 1",
                (soak_id,),
            ).fetchone()
            conn.close()
            if row is None:
                time.sleep(0.2)
                continue
            attempt, pid, attempt_started = row
            deadline = attempt_started + chooser.uniform(*args.kill_after)
            while time.time() < deadline and process.poll() is None:
                time.sleep(0.1)
            if process.poll() is None and (time.time() - started) < args.minutes * 60 * 1.5:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            while process.poll() is None:  # wait for the next attempt to be registered
                conn = sqlite3.connect(soak_home / "tamer.db", timeout=30)
                newest = conn.execute("SELECT max(attempt) FROM attempts WHERE run_id = ?", (soak_id,)).fetchone()[0]
                conn.close()
                if newest != attempt:
                    break
                time.sleep(0.2)
        code = process.wait()
        elapsed = time.time() - started
        conn = sqlite3.connect(soak_home / "tamer.db")
        attempts = conn.execute("SELECT count(*) FROM attempts WHERE run_id = ?", (soak_id,)).fetchone()[0]
        redone = conn.execute(
            "SELECT count(*) - count(DISTINCT step) FROM steps WHERE run_id = ?", (soak_id,)
        ).fetchone()[0]
        conn.close()
        base_weights, soak_weights = final_weights(base_home, base_id), final_weights(soak_home, soak_id)
        equal = base_weights.keys() == soak_weights.keys() and all(
            torch.equal(base_weights[k], soak_weights[k]) for k in base_weights
        )
        same_samples = sample_ids(base_home, base_id) == sample_ids(soak_home, soak_id)
        print(
            f"soak: exit {code}, {elapsed / 60:.1f} min, {kills} SIGKILLs, {attempts} attempts ({attempts - 1} restarts), "
            f"{redone} steps redone; final weights bit-identical: {equal}; same sample sequence: {same_samples}",
            flush=True,
        )


if __name__ == "__main__":
    main()
