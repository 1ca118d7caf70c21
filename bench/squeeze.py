"""Squeeze benchmark: another job takes most of the card for a while; tamer escalates, then steps back.

    python bench/squeeze.py --model DIR --gpu-mem-cap 15GiB --out OUT [--hold-seconds 60] [--leave 8GiB]
    python bench/squeeze.py --preset tiny --device cpu --out /tmp/squeeze   # CPU plumbing check (a fake card)

One `python -m tamer run squad` (bundled tokenizer and data, batches padded to max_seq_len, deescalate
polling every 5 s) in a fresh home, driven through three phases:

  before: the planner's plan trains until --before-steps steps are logged;
  squeeze: the bench SIGKILLs the child (an outside kill: restarted, not counted) and, on the GPU, starts
      a second process that takes all of the card's free memory but --leave (CUDA, held --hold-seconds):
      the restarted best plan runs out of memory, tamer records the other process and escalates to a plan
      that fits what is left;
  after: the other process exits; tamer sees the memory back (NVML), stops the child at a step boundary
      and resumes the better plan. After --after-steps steps of it the bench stops the run (SIGTERM).

On CPU the "other process" is a fake card (TAMER_FAKE_CARD) and the OOM is injected in the restarted
attempt's load phase, and the hold counts from the escalated attempt's first step: the same supervisor
paths, no GPU. Prints a markdown table of tokens/s per phase (median over each attempt's steps after the
first 3; after the first only, in phases of 6 steps or fewer) and the timeline of events; writes
OUT/squeeze.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GIB = 2**30
WARMUP_STEPS = 3
CONFIG_SETS = [
    "tokenizer=bundled",
    "pad_to_max_len=true",
    "checkpoint_every=1000",
    "eval_samples=16",
    "eval_every=0",
    "deescalate.poll_seconds=5",
    "kill_backoff=5",
]
FAKE_SQUEEZED = {
    "total": "80GiB",
    "free": "6GiB",
    "processes": [{"pid": 999999, "used": "74GiB", "name": "bench hog (fake)"}],
}
FAKE_EMPTY = {"total": "80GiB", "free": "79.5GiB", "processes": []}

# The other job: its CUDA context comes up first (imports take seconds); on "go" (our child is dead) it
# takes all the free memory but `leave` (topping up while the dead child's memory comes back), before the
# restarted child loads, and holds it.
HOG = """
import sys, time, torch
leave, hold, ready = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
torch.zeros(1, device="cuda")
print("warm", flush=True)
sys.stdin.readline()
# A dead child's memory comes back to the driver a moment after its process is gone: top up for 4 s
# (the restarted child waits out a 5 s backoff and loads for seconds more before it allocates).
blocks, until = [], time.time() + 4.0
while time.time() < until:
    free, total = torch.cuda.mem_get_info()
    if free > leave + 2**26:
        blocks.append(torch.empty(free - leave, dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()
    time.sleep(0.1)
open(ready, "w").write(str(sum(block.numel() for block in blocks)))
time.sleep(hold)
"""


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="Model folder (e.g. from bench/make_random_model.py); the preset's model if left out."
    )
    parser.add_argument("--preset", default="llama-3.2-1b", help="tamer preset (tiny for CPU testing).")
    parser.add_argument(
        "--device", help="Passed to tamer run (auto, cpu, cuda); cpu plays the other job with a fake card."
    )
    parser.add_argument("--gpu-mem-cap", help="Cap on PyTorch's allocator in the child, e.g. 15GiB.")
    parser.add_argument(
        "--leave", default="8GiB", help="Free memory the other process leaves on the card while it holds it."
    )
    parser.add_argument("--hold-seconds", type=float, default=60.0, help="How long the other process holds the memory.")
    parser.add_argument("--before-steps", type=int, default=30, help="Steps of the first plan before the squeeze.")
    parser.add_argument(
        "--after-steps", type=int, default=30, help="Steps of the stepped-back plan before the bench stops the run."
    )
    parser.add_argument("--timeout", type=float, default=420.0, help="Give up after this many seconds.")
    parser.add_argument(
        "--out", type=Path, help="Folder for squeeze.json, the home and the logs (default: a new temporary folder)."
    )
    parser.add_argument("--extra", default="", help="Raw arguments appended to `tamer run`.")
    return parser.parse_args(argv)


def query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not db_path.is_file():
        return []
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


class Squeeze:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.fake = arguments.device == "cpu"
        self.out = arguments.out or Path(tempfile.mkdtemp(prefix="tamer-squeeze-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.home = self.out / "home" / time.strftime("%Y%m%d-%H%M%S")
        self.db = self.home / "tamer.db"
        self.card = self.out / "fake-card.json"
        self.started = time.time()
        self.marks: dict[str, float] = {}
        self.run_id: str | None = None

    def progress(self, line: str) -> None:
        print(f"[{time.time() - self.started:6.1f} s] {line}", flush=True)

    def deadline_left(self) -> float:
        return self.arguments.timeout - (time.time() - self.started)

    def wait(self, what: str, predicate: Any, process: subprocess.Popen) -> None:
        while not predicate():
            if process.poll() is not None:
                raise RuntimeError(
                    f"tamer exited ({process.returncode}) while waiting for {what}; see {self.out / 'tamer.log'}"
                )
            if self.deadline_left() < 0:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def command(self) -> list[str]:
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
            "100000",
            "--home",
            str(self.home),
        ]
        command += ["--model", arguments.model] if arguments.model else []
        command += ["--device", arguments.device] if arguments.device else []
        command += ["--gpu-mem-cap", arguments.gpu_mem_cap] if arguments.gpu_mem_cap else []
        for item in CONFIG_SETS:
            command += ["--set", item]
        if self.fake:  # the restarted attempt (2) runs out of memory in load, as under a real squeeze
            command += ["--set", "deescalate.poll_seconds=1", "--inject", "oom:phase=load,attempt=2"]
        return command + arguments.extra.split()

    def steps_of(self, attempt: int) -> int:
        rows = query(self.db, "SELECT count(*) FROM steps WHERE run_id = ? AND attempt = ?", (self.run_id, attempt))
        return rows[0][0] if rows else 0

    def attempts(self) -> list[tuple]:
        return query(
            self.db,
            "SELECT attempt, pid, outcome, plan_summary, started_at, ended_at FROM attempts WHERE run_id = ? "
            "ORDER BY attempt",
            (self.run_id,),
        )

    def execute(self) -> dict[str, Any]:
        if not self.fake:
            from tamer.daemon.card import read_card

            if read_card() is None:
                raise RuntimeError(
                    "NVML gives no reading of the card (is nvidia-ml-py installed?): tamer could not see the "
                    "other process nor step back; install nvidia-ml-py (a dependency of tamer) and run again"
                )
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.fake:
            self.write_card(FAKE_EMPTY)
            environment["TAMER_FAKE_CARD"] = str(self.card)
        log = open(self.out / "tamer.log", "w")
        process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
        self.run_id = process.stdout.readline().strip()
        self.progress(f"run {self.run_id} started; home {self.home}")
        hog = None
        try:
            self.wait(
                f"{self.arguments.before_steps} steps of attempt 1",
                lambda: self.steps_of(1) >= self.arguments.before_steps,
                process,
            )
            hog = self.warm_hog()
            self.marks["squeeze"] = time.time()
            pid = self.attempts()[0][1]
            os.kill(pid, signal.SIGKILL)
            self.progress(f"SIGKILLed the child (pid {pid}): an outside kill")
            while _alive(pid):
                time.sleep(0.05)
            self.hold(hog)
            self.wait("an escalated attempt that trains", lambda: self.escalated_attempt() is not None, process)
            self.progress(f"escalated: attempt {self.escalated_attempt()} trains")
            if self.fake:  # a slow CPU spends the hold loading: hold from here, so the squeezed plan gets steps
                self.marks["held"] = time.time()
            self.wait_hold(process)
            self.end_hog(hog)
            hog = None
            self.marks["released"] = time.time()
            self.progress("the other process released the memory")
            self.wait("a step back", lambda: self.stepped_back_attempt() is not None, process)
            after = self.stepped_back_attempt()
            self.progress(f"stepped back: attempt {after}")
            self.wait(
                f"{self.arguments.after_steps} steps after the step back",
                lambda: self.steps_of(after) >= self.arguments.after_steps,
                process,
            )
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=max(60.0, self.deadline_left()))
        finally:
            if hog is not None and hog.poll() is None:  # an error mid-squeeze: free the card at once
                hog.kill()
                hog.wait()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
            log.close()
        return self.summary(process.returncode)

    # --- the other process --------------------------------------------------------------------------

    def write_card(self, view: dict[str, Any]) -> None:
        temporary = self.card.with_suffix(".tmp")
        temporary.write_text(json.dumps(view))
        os.replace(temporary, self.card)

    def warm_hog(self) -> subprocess.Popen | None:
        """The other job, started with its CUDA context but holding nothing yet (None on CPU)."""
        if self.fake:
            return None
        hog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOG,
                str(_size(self.arguments.leave)),
                str(self.arguments.hold_seconds),
                str(self.out / "hog-ready"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if hog.stdout.readline().strip() != "warm":
            raise RuntimeError(f"the memory-holding process failed to start (exit {hog.wait()})")
        return hog

    def hold(self, hog: subprocess.Popen | None) -> None:
        """The other job takes the card (on CPU: the fake card says so)."""
        if hog is None:
            self.write_card(FAKE_SQUEEZED)
            self.marks["held"] = time.time()
            self.progress("fake card: another job holds 74 GiB of 80")
            return
        ready = self.out / "hog-ready"
        ready.unlink(missing_ok=True)
        hog.stdin.write("go\n")
        hog.stdin.flush()
        while not ready.exists():
            if hog.poll() is not None:
                raise RuntimeError(f"the memory-holding process exited with {hog.returncode}")
            time.sleep(0.05)
        self.marks["held"] = time.time()
        self.progress(
            f"another process holds {int(ready.read_text()) / GIB:.1f} GiB, leaving {_size(self.arguments.leave) / GIB:.1f} GiB free"
        )

    def wait_hold(self, process: subprocess.Popen) -> None:
        until = self.marks["held"] + self.arguments.hold_seconds
        self.wait("the end of the hold", lambda: time.time() >= until, process)

    def end_hog(self, hog: subprocess.Popen | None) -> None:
        if hog is None:
            self.write_card(FAKE_EMPTY)
            return
        try:
            hog.wait(
                timeout=max(1.0, self.marks.get("held", time.time()) + self.arguments.hold_seconds + 30 - time.time())
            )
        except subprocess.TimeoutExpired:
            hog.kill()
            hog.wait()

    # --- what the database says ---------------------------------------------------------------------

    def events(self) -> list[tuple]:
        return query(
            self.db,
            "SELECT time, attempt, kind, message, detail_json FROM events WHERE run_id = ? ORDER BY id",
            (self.run_id,),
        )

    def escalated_attempt(self) -> int | None:
        """The attempt that trains the squeezed plan: the one after an escalation, or the attempt itself
        when the OOM was answered by an in-process micro-batch split (seen on an H200, 2026-12-03)."""
        for _, attempt, kind, _, _ in reversed(self.events()):
            if kind in ("escalate", "in_process_split"):
                squeezed = attempt + 1 if kind == "escalate" else attempt
                return squeezed if self.steps_of(squeezed) > 0 else None
        return None

    def stepped_back_attempt(self) -> int | None:
        steps_back = [attempt for _, attempt, kind, _, _ in self.events() if kind == "deescalate"]
        return steps_back[-1] + 1 if steps_back and self.steps_of(steps_back[-1] + 1) > 0 else None

    def rate(self, attempt: int) -> float | None:
        rows = query(
            self.db,
            "SELECT tokens, step_time FROM steps WHERE run_id = ? AND attempt = ? ORDER BY step",
            (self.run_id, attempt),
        )
        steady = (
            rows[WARMUP_STEPS:] if len(rows) > 2 * WARMUP_STEPS else rows[1:]
        )  # short CPU phases: all but the first
        rates = [tokens / seconds for tokens, seconds in steady if tokens and seconds]
        return statistics.median(rates) if rates else None

    def summary(self, exit_code: int | None) -> dict[str, Any]:
        attempts = self.attempts()
        escalated, after = self.escalated_attempt(), self.stepped_back_attempt()
        phases = [("before", 1), ("squeeze", escalated), ("after", after)]
        rows = []
        for label, attempt in phases:
            found = next((a for a in attempts if a[0] == attempt), None)
            rows.append(
                {
                    "phase": label,
                    "attempt": attempt,
                    "plan": found[3] if found else None,
                    "steps": self.steps_of(attempt) if attempt else 0,
                    "tokens_per_s": self.rate(attempt) if attempt else None,
                }
            )
        first_after = query(
            self.db, "SELECT min(wall_time) FROM steps WHERE run_id = ? AND attempt = ?", (self.run_id, after or -1)
        )
        released = self.marks.get("released")
        deescalate_times = [moment for moment, _, kind, _, _ in self.events() if kind == "deescalate"]
        return {
            "exit_code": exit_code,
            "run_id": self.run_id,
            "home": str(self.home),
            "mode": "fake card (CPU)" if self.fake else "real second process (GPU)",
            "phases": rows,
            "attempts": [
                {"attempt": a[0], "outcome": a[2], "plan": a[3], "seconds": (a[5] or time.time()) - a[4]}
                for a in attempts
            ],
            "events": [
                {"seconds": moment - self.started, "attempt": attempt, "kind": kind, "message": message}
                for moment, attempt, kind, message, _ in self.events()
                if kind in ("escalate", "deescalate", "restart", "planner", "stopped")
            ],
            "seconds_release_to_step_back": (deescalate_times[-1] - released)
            if released and deescalate_times
            else None,
            "seconds_release_to_first_step_after": (first_after[0][0] - released)
            if released and first_after and first_after[0][0]
            else None,
            "seconds": time.time() - self.started,
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _size(text: str) -> int:
    from tamer.units import parse_size

    return parse_size(text, "--leave")


def table(result: dict[str, Any]) -> str:
    lines = ["| phase | attempt | plan | steps | tokens/s |", "|---|---|---|---|---|"]
    for row in result["phases"]:
        rate = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "-"
        lines.append(f"| {row['phase']} | {row['attempt'] or '-'} | {row['plan'] or '-'} | {row['steps']} | {rate} |")
    lines.append("")
    lines.append("| attempt | outcome | seconds | plan |")
    lines.append("|---|---|---|---|")
    for attempt in result["attempts"]:
        lines.append(
            f"| {attempt['attempt']} | {attempt['outcome'] or 'running'} | {attempt['seconds']:.1f} | {attempt['plan']} |"
        )
    lines.append("")
    for event in result["events"]:
        lines.append(f"- {event['seconds']:6.1f} s  attempt {event['attempt']}  {event['kind']}: {event['message']}")
    for name in ("seconds_release_to_step_back", "seconds_release_to_first_step_after"):
        value = result[name]
        lines.append(
            f"- {name.replace('_', ' ')}: {value:.1f}" if value is not None else f"- {name.replace('_', ' ')}: -"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    bench = Squeeze(arguments)
    try:
        result = bench.execute()
    except (RuntimeError, TimeoutError) as error:
        result = {**bench.summary(None), "error": str(error)}
        print(f"error: {error}", file=sys.stderr)
    (bench.out / "squeeze.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"{result['mode']}: {result['seconds']:.0f} s, run {result['run_id']} ({bench.home})\n")
    print(table(result))
    ok = all(row["tokens_per_s"] for row in result["phases"])
    print(
        f"\nresult: {'complete' if ok and 'error' not in result else 'INCOMPLETE'}; written to {bench.out / 'squeeze.json'}"
    )
    return 0 if ok and "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
