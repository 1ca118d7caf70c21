"""What a quantized base costs in speed, measured: the same model shape trained by tamer with three pinned plans that
differ only in the base weights (tamer/planner/speed.py's LORA and NF4_BASE factors, against a full fine-tune):

    full    full fine-tune, fp32 master weights, bf16 autocast, torch AdamW (the speed model's reference plan)
    lora16  LoRA on a bf16 base (pure bf16 weights), the planner's LoRA form where the card has bf16
    nf4     LoRA on an NF4 base (bitsandbytes, double quantization, bf16 compute), fp32 adapters under bf16 autocast

All three checkpoint every layer, at micro-batch 8 x 1 (tamer's default 8 questions per step), on the bundled SQuAD
slice, with no memory cap (the plans are pinned with `start_plan`, so the card's size does not change them).

    python3 bench/base_speed.py --shapes 1b,3b --steps 40 --out OUT          # on the GPU machine, bitsandbytes in
    python3 bench/base_speed.py --shapes tiny --steps 4 --device cpu --out OUT   # the plumbing on a CPU

Per run: tokens/s as the median of computed tokens / step time over the second half of the steps (steady state:
tamer's compiled layers recompile for the first row lengths they meet) and questions/s over every step after the
first (the whole wall clock). Then each plan's measured speed over the full fine-tune's against the planner's
relative_speed ratio. Prints one table (80 columns) and writes OUT/base-speed.md and OUT/base-speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from reach import SHAPES, Bench, model_folder, run_sets, steady  # noqa: E402

EXPANDABLE = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTORCH_ALLOC_CONF": "expandable_segments:True"}
COMMON = {
    "micro_batch_size": 8,
    "grad_accumulation": 1,
    "eval_batch_size": 8,
    "env": EXPANDABLE,
    "gradient_checkpointing": True,
    "checkpoint_layers": None,
    "optimizer": "adamw",
}
PLANS: dict[str, dict[str, Any]] = {
    "full": {**COMMON, "weights_dtype": "fp32", "autocast_dtype": "bf16", "lora": False},
    "lora16": {**COMMON, "weights_dtype": "bf16", "autocast_dtype": None, "lora": True},
    "nf4": {
        **COMMON,
        "weights_dtype": "fp32",
        "autocast_dtype": "bf16",
        "lora": True,
        "quantization": "nf4",
        "compute_dtype": "bf16",
    },
}
"""Plan fields of each pinned plan (the rest are Plan's defaults)."""


def predicted_ratio(name: str, preset: str) -> float:
    """The planner's relative_speed of plan `name` over the full fine-tune's, for the bench's workload."""
    from tamer.plan import DeviceFacts, Plan
    from tamer.planner.estimate import ModelShape, Workload
    from tamer.planner.speed import relative_speed
    from tamer.presets import PRESETS

    shape = ModelShape.from_architecture(PRESETS[preset]["architecture"])
    workload = Workload(computed_per_sequence=214)  # the bundled slice's typical row (tamer plan --json)
    facts = DeviceFacts(kind="cuda", name="H100", total_memory=80 * 2**30, bf16=True, fp16=True, bitsandbytes=True)

    def speed(plan_name: str) -> float:
        return relative_speed(Plan.from_dict(PLANS[plan_name]), workload, facts, num_layers=shape.num_layers)

    return speed(name) / speed("full")


def run_plan(bench: Bench, shape: str, model: Path, name: str) -> dict[str, Any]:
    from tamer.state.db import Database

    args = bench.args
    arguments = ["run", "squad", "--model", str(model), "--data", args.data, *run_sets(args)]
    arguments += ["--max-steps", str(args.steps), "--set", "start_plan=" + json.dumps(PLANS[name])]
    try:
        run_id = bench.tamer(*arguments, log=f"{name}-{shape}").stdout.split()[0]
    except RuntimeError as error:
        bench.say(f"{shape} {name}: {error}")
        return {"shape": shape, "plan": name, "error": str(error)}
    db = Database(bench.home / "tamer.db", create=False)
    steps, attempts = db.steps(run_id), db.attempts(run_id)
    db.close()
    found = {"shape": shape, "plan": name, "run_id": run_id, "attempts": len(attempts), **steady(steps)}
    found["described"] = attempts[-1]["plan_summary"]
    bench.say(f"{shape} {name}: {run_id}, {found['tokens_per_second'] or 0:,.0f} tokens/s")
    return found


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | plan | tokens/s | q/s | vs full | predicted |", "|---|---|---|---|---|---|"]
    full = {row["shape"]: row.get("tokens_per_second") for row in rows if row["plan"] == "full"}
    for row in rows:
        rate, base = row.get("tokens_per_second"), full.get(row["shape"])
        ratio = f"{rate / base:.2f}" if rate and base else "-"
        qps = row.get("questions_per_second")
        cells = [
            row["shape"],
            row["plan"],
            f"{rate:,.0f}" if rate else row.get("error", "-")[:20],
            f"{qps:.1f}" if qps else "-",
            ratio,
            f"{predicted_ratio(row['plan'], SHAPES[row['shape']]):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1b,3b", help=f"Comma-separated: {','.join(SHAPES)}.")
    parser.add_argument("--plans", default=",".join(PLANS), help=f"Comma-separated: {','.join(PLANS)}.")
    parser.add_argument("--steps", type=int, default=40, help="Optimizer steps per run.")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Passed to tamer (default: auto).")
    parser.add_argument("--data", default="bundled", help="A SQuAD v1.1 JSON file, or bundled (tamer's slice).")
    parser.add_argument("--models", default="/tmp", help="Where the random models are built (MODELS/<shape>).")
    parser.add_argument("--out", type=Path, default=Path("out/base-speed"), help="Folder for logs, home and table.")
    args = parser.parse_args(argv)
    args.gpu_mem_cap = None
    bench = Bench(args)
    rows = []
    for shape in args.shapes.split(","):
        model = model_folder(bench, shape)
        rows += [run_plan(bench, shape, model, name) for name in args.plans.split(",")]
    text = table(rows)
    note = (
        "tokens/s: median of the second half's steps; q/s: every step after the first; vs full: tokens/s over the "
        "full fine-tune's; predicted: tamer/planner/speed.py's ratio for the same plans."
    )
    print(text + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "base-speed.md").write_text(f"{text}\n\n{note}\n")
    (args.out / "base-speed.json").write_text(json.dumps({"rows": rows, "commands": bench.commands}, indent=1))
    print(f"wrote {args.out / 'base-speed.md'} in {time.time() - bench.started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
