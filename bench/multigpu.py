"""Multi-GPU benchmark: one run on N GPUs through torchrun under a per-GPU memory cap, against one GPU
with the same plan, in the same invocation.

    python bench/multigpu.py --model DIR --gpu-mem-cap 15GiB --steps 30 [--gpus 2] [--runs abcd] [--out DIR]
        [--extra "--set effective_batch_size=32"]
    python bench/multigpu.py --model DIR --gpu-mem-cap 15GiB --steps 30 --runs ad --nodes   # as N machines
    python bench/multigpu.py --preset tiny --device cpu --steps 6 --out /tmp/mg   # CPU plumbing check (gloo)

Every run is `python -m tamer run squad` with the settings of bench/escalation.py (bundled tokenizer and
data, every batch padded to max_seq_len: 8 sequences x 512 tokens per optimizer step, no checkpoint
before the end), each in a fresh home:

  (a) N GPUs, tamer's planner (the default): attempts, settled plan, tokens/s.
  (b) 1 GPU, exactly (a)'s settled plan per process: the same micro-batch, with accumulation x N so the
      effective batch is the same (start_plan, nothing to escalate to).
  (c) 1 GPU, (a)'s plan with the micro-batch x N (accumulation as in (a)): the same work per
      forward as a whole optimizer step of (a).
  (d) N GPUs, the card ladder (`ladder.mode=card`): real OOMs on every rank, escalated together (fsdp is a
      rung there).

tokens/s = 8 x 512 padded tokens per optimizer step / median step time after the first 3 steps (rank
0's wall time for the whole step, gradient all-reduce included). Scaling efficiency = tokens/s(a) /
(N x tokens/s(b or c)): 1.0 would be N times one GPU. Writes OUT/multigpu.json and prints a markdown table.
Set NCCL_NVLS_ENABLE=0 on shared hosts (NVLink multicast off).

--nodes plays (a) and (d) as N machines of one GPU each, the way several hosts run tamer: node 0's `tamer
run --nnodes N --rdzv-endpoint 127.0.0.1:PORT` owns the run (its home holds the database); nodes 1..N-1 run
`tamer join RUN_DIR --node-rank i` on its run folder, node i on GPU i (CUDA_VISIBLE_DEVICES). On a host
with fewer GPUs than nodes every node takes GPU 0 over gloo: a rehearsal of the commands, the database and
checkpoints, and the recoveries; its tokens/s say nothing about N GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from escalation import Benchmark, _gib, _number, checked, run_arguments  # noqa: E402


class MultiGpuBenchmark(Benchmark):
    RESULTS = "multigpu.json"

    def run_nodes(self, label: str, title: str, sets: list[str], nodes: int) -> dict[str, Any]:
        """`label` as `nodes` machines of one process each, played on this host: node 0 `tamer run --nnodes`
        (it owns the run: its home, the database), nodes 1.. `tamer join RUN_DIR --node-rank i` on its run
        folder. Node i takes GPU i; with fewer GPUs than nodes they share GPU 0 over gloo (NCCL refuses two
        ranks on one device): the commands and recoveries for real, the speed not."""
        gpus = torch.cuda.device_count() if self.arguments.device != "cpu" else 0
        shared = 0 < gpus < nodes
        command = self.command(label, [*sets, *(["distributed.backend=gloo"] if shared else [])])
        command += ["--nnodes", str(nodes), "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
        log_path = self.out / "logs" / f"{label}.log"
        launched = time.time()
        processes: list[subprocess.Popen] = []
        try:
            with contextlib.ExitStack() as logs:
                log = logs.enter_context(open(log_path, "w"))
                node0 = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=log, text=True, env=node_env(0, gpus, shared)
                )
                processes.append(node0)
                run_id = node0.stdout.readline().strip()
                for rank in range(1, nodes if run_id else 1):
                    node_log = logs.enter_context(open(self.out / "logs" / f"{label}-node{rank}.log", "w"))
                    processes.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "tamer",
                                "join",
                                str(self.home / label / "runs" / run_id),
                                "--node-rank",
                                str(rank),
                            ],
                            stdout=node_log,
                            stderr=node_log,
                            text=True,
                            env=node_env(rank, gpus, shared),
                        )
                    )
                stdout = run_id + "\n" + node0.communicate()[0]
                for process in processes[1:]:
                    process.wait(timeout=120)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
        result = self.record(label, title, command, stdout, node0.returncode, launched)
        result["node_exit_codes"] = [process.returncode for process in processes]
        result["shared_gpu"] = shared
        self.save()
        return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_env(rank: int, gpus: int, shared: bool) -> dict[str, str]:
    """The environment of node `rank`: its one GPU (GPU 0 for every node when they share it)."""
    environment = dict(os.environ)
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = "0" if shared else str(rank)
    return environment


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = run_arguments(__doc__.splitlines()[0], 30, "multigpu.json")
    parser.add_argument("--gpus", type=int, default=2, help="Processes (GPUs) of the multi-GPU runs.")
    parser.add_argument("--runs", default="abcd", help="Which runs, e.g. abc or d ((b) and (c) need (a)).")
    parser.add_argument(
        "--nodes",
        action="store_true",
        help="Play (a) and (d) as --gpus nodes of one GPU each (tamer run --nnodes + tamer join); GPU i per node, "
        "or all on GPU 0 over gloo when the host has fewer GPUs (commands and recoveries, not speed).",
    )
    return checked(parser, argv)


def start_plan(plan: dict[str, Any], **changes: Any) -> str:
    """`start_plan={...}` for --set, YAML flow style."""
    fields = {key: value for key, value in {**plan, **changes}.items() if key not in ("rungs", "eval_batch_size")}
    return "start_plan=" + json.dumps(fields)


def row(result: dict[str, Any], single: float | None, gpus: int) -> str:
    rate = result.get("tokens_per_second")
    efficiency = rate / (gpus * single) if rate and single and result.get("gpus", 1) > 1 else None
    outcomes = ", ".join(f"{a['outcome']}" for a in result.get("attempts", []))
    return (
        f"| {result['title']} | {len(result.get('attempts', []))} ({outcomes}) | {result.get('settled_summary', '-')} | "
        f"{_number(rate)} | {_number(efficiency, 2) if efficiency else '-'} | {_gib(result.get('measured_peak'))} |"
    )


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    bench = MultiGpuBenchmark(arguments)
    n = arguments.gpus
    spread = f"distributed.nproc_per_node={n}"
    results = []
    same: dict[str, Any] = {}
    whole: dict[str, Any] = {}
    multi: dict[str, Any] = {}
    if "a" in arguments.runs:
        multi = (
            bench.run_nodes("a_multi_planner", f"(a) {n} nodes of 1 GPU, planner", [], n)
            if arguments.nodes
            else bench.run("a_multi_planner", f"(a) {n} GPUs, planner", [spread])
        )
        multi["gpus"] = n
        results.append(multi)
        plan = multi.get("settled_plan")
        if plan is None:
            print("the multi-GPU planner run did not train; see", multi["log"])
            sys.exit(1)
        if "b" in arguments.runs:
            same = bench.run(
                "b_single_same_plan",
                "(b) 1 GPU, same plan, accumulation x N",
                [
                    start_plan(plan, world_size=1, parallel="ddp", grad_accumulation=plan["grad_accumulation"] * n),
                    "ladder.order=[]",
                ],
            )
            results.append(same)
        if "c" in arguments.runs:
            whole = bench.run(
                "c_single_whole_step",
                "(c) 1 GPU, same plan, micro-batch x N",
                [
                    start_plan(plan, world_size=1, parallel="ddp", micro_batch_size=plan["micro_batch_size"] * n),
                    "ladder.order=[]",
                ],
            )
            results.append(whole)
    if "d" in arguments.runs:
        card = (
            bench.run_nodes("d_multi_card", f"(d) {n} nodes of 1 GPU, card ladder", ["ladder.mode=card"], n)
            if arguments.nodes
            else bench.run("d_multi_card", f"(d) {n} GPUs, card ladder", [spread, "ladder.mode=card"])
        )
        card["gpus"] = n
        results.append(card)
    bench.save()
    print()
    print("| run | attempts | settled plan | tokens/s | scaling vs (b) | peak reserved (max over ranks) |")
    print("|---|---|---|---|---|---|")
    for result in results:
        print(row(result, same.get("tokens_per_second"), n))
    if whole.get("tokens_per_second") and multi.get("tokens_per_second"):
        print(f"\nscaling vs (c): {multi['tokens_per_second'] / (n * whole['tokens_per_second']):.2f}")
    print(f"\n(full results: {bench.out / 'multigpu.json'})")


if __name__ == "__main__":
    main()
