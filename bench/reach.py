"""How far a 16 GB card reaches: random-weight 1B / 3B / 8B Llama shapes on SQuAD under a memory cap, tamer's
planner against the Hugging Face Trainer + peft QLoRA as the Unsloth / HF QLoRA notebooks configure it.

    . bench/device_setup.sh                      # on the GPU machine (the carried wheels, tamer on PYTHONPATH)
    python bench/reach.py --shapes 1b,3b --steps 30 --gpu-mem-cap 15GiB --out OUT
    python bench/reach.py --shapes 8b --steps 20 --gpu-mem-cap 15GiB --out OUT --pin-fp16   # the T4 path
    python bench/reach.py --shapes tiny --steps 3 --device cpu --out OUT    # plumbing on a CPU, no reference

For each shape (each call fits one device call of 10 minutes when given few shapes and steps):
1. The model: bench/make_random_model.py --preset P --dtype bf16 into MODELS/<shape> (default /tmp), unless there.
2. `tamer plan squad --model DIR --gpu-mem-cap CAP --json` (`--no-bf16` with --pin-fp16; `--gpu-mem 16GiB` without a
   GPU): the plan the planner predicts and its predicted peak reserved.
3. `tamer run squad --model DIR --data bundled --set tokenizer=bundled --max-steps N --gpu-mem-cap CAP` (the bundled
   SQuAD slice, or --data FILE), no evaluation, no export; with --pin-fp16 the predicted plan is pinned as `start_plan`, since
   `tamer run` would see the card's bf16. From tamer's SQLite record: attempts to the first step, whether the
   first attempt's plan is the predicted one, peak reserved, questions/s after the first step.
4. `hf` (this script's subcommand, in its own process under the same cap): the QLoRA reference. BitsAndBytesConfig
   4-bit NF4 with double quantization, bf16 compute (fp16 with --pin-fp16); prepare_model_for_kbit_training
   (gradient checkpointing); LoRA r=16, alpha=16, dropout 0 on q, k, v, o, gate, up, down; Trainer with
   paged_adamw_8bit, learning rate 2e-4, 5 warmup steps, linear decay, micro-batch 2 x 4 accumulation (the
   notebooks' 8 questions per optimizer step, tamer's effective batch), gradient checkpointing, bf16 (fp16) mixed
   precision; tamer's examples (the same prompt and labels on the answer + EOS, tamer's training questions) padded
   to the longest of each micro-batch. Skipped where CUDA or bitsandbytes is missing; an OOM is a row, not a crash.

Prints one markdown table (80 columns) and writes OUT/reach.md and OUT/reach.json (card, versions, commands).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/reach.py` from the repository
    sys.path.insert(0, str(ROOT))

GIB = 2**30
SHAPES = {"tiny": "tiny", "1b": "llama-3.2-1b", "3b": "llama-3.2-3b", "8b": "llama-3.1-8b"}
"""--shapes names and the preset each builds (tamer/presets.py)."""
HF_LORA = {"r": 16, "alpha": 16, "dropout": 0.0}
HF_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HF_MICRO_BATCH, HF_ACCUMULATION = 2, 4
HF_LEARNING_RATE, HF_WARMUP_STEPS = 2e-4, 5
EFFECTIVE_BATCH = HF_MICRO_BATCH * HF_ACCUMULATION
"""Questions per optimizer step, tamer's default effective batch and the notebooks' 2 x 4."""


# ---------------------------------------------------------------------------------------------
# The table (pure)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown row per shape, at most 80 columns: the planner's plan (the model change), attempts to the first
    step, predicted and measured peak reserved (GiB) and their ratio, tamer's and the reference's questions/s and
    tamer's over the reference's. A peak measured on a CPU is the process's RSS, not compared."""
    lines = [
        "| shape | plan | attempts | predicted | peak | ratio | q/s | HF q/s | vs HF |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        predicted, peak = row.get("predicted_bytes"), row.get("peak_bytes")
        hf = row.get("hf") or {}
        hf_rate = hf.get("questions_per_second")
        reserved = row.get("peak_kind", "reserved") == "reserved"
        cells = [
            row["shape"],
            row.get("change") or "-",
            str(row.get("attempts_to_first_step") or "-"),
            _number(predicted / GIB if predicted else None, 1),
            _number(peak / GIB if peak else None, 1) + ("" if reserved else " RSS"),
            _number(_ratio(peak, predicted), 2) if reserved else "-",
            _number(row.get("questions_per_second"), 2),
            _number(hf_rate, 2) if hf_rate is not None else (hf.get("outcome") or "-").split(":")[0],
            _number(_ratio(row.get("questions_per_second"), hf_rate), 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEGEND = (
    "predicted, peak: GiB reserved by PyTorch (tamer plan's prediction; the run's peak); ratio: peak / predicted; "
    "q/s: questions per second after the first step; vs HF: tamer's q/s over the HF QLoRA reference's."
)


def plans_text(rows: list[dict[str, Any]]) -> str:
    """Per shape: the predicted plan, whether the first attempt ran it, the plan trained, the reference's outcome;
    wrapped at 80 columns."""
    lines = []
    for row in rows:
        said = [f"{row['shape']}: predicted {row.get('predicted_plan') or '-'}"]
        if row.get("error"):
            said.append(f"tamer: {row['error']}")
        else:
            said.append(("as predicted" if row.get("as_predicted") else "NOT as predicted") + f": {row.get('plan')}")
            if row.get("steady_tokens_per_second"):
                said.append(
                    f"steady state: {row['steady_tokens_per_second']:,.0f} tokens/s (median, 2nd half of steps)"
                )
        hf = row.get("hf") or {}
        said.append(f"HF QLoRA: {hf.get('plan') or hf.get('outcome') or 'not run'}")
        for text in said:
            lines += textwrap.wrap(text, 78, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


def steady(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median tokens/s of the second half of `steps`, and questions/s over every step after the first."""
    half = steps[len(steps) // 2 :]
    rates = [row["computed_tokens"] / row["step_time"] for row in half if row["step_time"] and row["computed_tokens"]]
    paced = steps[1:]
    seconds = sum(row["step_time"] for row in paced)
    questions = sum(row["micro_batch_size"] * row["grad_accumulation"] for row in paced)
    return {
        "tokens_per_second": statistics.median(rates) if rates else None,
        "questions_per_second": questions / seconds if seconds else None,
        "steps": len(steps),
    }


def first_attempt_facts(attempts: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Attempts up to and including the first that trained a step (None when none did), and that attempt's plan."""
    if not steps:
        return {"attempts_to_first_step": None, "first_plan": None}
    first = min(row["attempt"] for row in steps)
    plan = next(json.loads(row["plan_json"]) for row in attempts if row["attempt"] == first)
    return {"attempts_to_first_step": first, "first_plan": plan}


def same_plan(one: dict[str, Any] | None, other: dict[str, Any] | None) -> bool:
    """Whether two plans (as JSON) train the same way (tamer.planner.plan_key: not the rungs' history, nor the
    checkpointing table by size or the child's leave to split)."""
    if one is None or other is None:
        return False
    from tamer.plan import Plan
    from tamer.planner import plan_key

    return plan_key(Plan.from_dict(one)) == plan_key(Plan.from_dict(other))


# ---------------------------------------------------------------------------------------------
# tamer's side


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.home = self.out / "home"
        self.started = time.time()
        self.commands: list[str] = []

    def say(self, line: str) -> None:
        print(f"[{time.time() - self.started:7.1f} s] {line}", flush=True)

    def command(self, command: list[str], log: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run `command`, its output kept in OUT/logs/LOG.log; with `check`, a failure raises naming the log."""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        path = self.out / "logs" / f"{log}.log"
        self.commands.append(" ".join(command))
        finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        path.write_text(f"$ {' '.join(command)}\n{finished.stdout}\n{finished.stderr}")
        if check and finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:5])} ... failed ({finished.returncode}); see {path}")
        return finished

    def tamer(self, *arguments: str, log: str) -> subprocess.CompletedProcess:
        return self.command([sys.executable, "-m", "tamer", *arguments, "--home", str(self.home)], log)


def model_folder(bench: Bench, shape: str) -> Path:
    """The random-weight model of `shape` (bench/make_random_model.py, bf16), built once."""
    folder = Path(bench.args.models) / shape
    if not (folder / "config.json").is_file():
        bench.say(f"{shape}: building {SHAPES[shape]} into {folder}")
        bench.command(
            [sys.executable, "bench/make_random_model.py", str(folder), "--preset", SHAPES[shape], "--dtype", "bf16"],
            f"make-{shape}",
        )
    return folder


def run_sets(args: argparse.Namespace) -> list[str]:
    """The config keys every tamer run and plan of this bench shares."""
    sets = [
        "tokenizer=bundled",
        "eval.squad_samples=0",
        "export.enabled=false",
        f"effective_batch_size={EFFECTIVE_BATCH}",
    ]
    if args.device:
        sets.append(f"device={args.device}")
    return [item for key in sets for item in ("--set", key)]


def tamer_shape(bench: Bench, shape: str, model: Path) -> dict[str, Any]:
    """`tamer plan` then `tamer run` of one shape: the table's row, without the reference."""
    from tamer.plan import Plan
    from tamer.planner.candidates import model_change
    from tamer.state.db import Database

    sys.path.insert(0, str(ROOT / "bench"))
    from quality import training_facts

    args = bench.args
    cap = ["--gpu-mem-cap", args.gpu_mem_cap] if args.gpu_mem_cap else []
    data = ["--data", str(args.data)]
    card = ["--gpu-mem", args.gpu_mem] if args.gpu_mem else []
    plan_args = ["plan", "squad", "--model", str(model), *data, *run_sets(args), *cap, *card, "--json"]
    planned = json.loads(bench.tamer(*plan_args, *(["--no-bf16"] if args.pin_fp16 else []), log=f"plan-{shape}").stdout)
    chosen = planned["chosen"]
    row: dict[str, Any] = {
        "shape": shape,
        "preset": SHAPES[shape],
        "parameters": planned["parameters"],
        "predicted_plan": chosen["description"] if chosen else "none predicted to fit",
        "predicted": chosen["plan"] if chosen else None,
        "predicted_bytes": chosen["reserved"] if chosen else None,
        "change": chosen["change"] if chosen else None,
        "reach": planned["reach"],
    }
    pinned = []
    if args.pin_fp16 and chosen:
        pinned = ["--set", "start_plan=" + json.dumps(chosen["plan"])]
    run_args = ["run", "squad", "--model", str(model), *data, *run_sets(args), *cap, "--max-steps", str(args.steps)]
    launched = time.time()
    try:
        run_id = bench.tamer(*run_args, *pinned, log=f"run-{shape}").stdout.split()[0]
    except RuntimeError as error:
        bench.say(f"{shape}: tamer failed: {error}")
        return {**row, "error": str(error)}
    wall = time.time() - launched
    db = Database(bench.home / "tamer.db", create=False)
    steps = db.steps(run_id)
    first = first_attempt_facts(db.attempts(run_id), steps)
    db.close()
    facts = training_facts(bench.home, run_id)
    bench.say(f"{shape}: tamer {run_id}, {facts['attempts']} attempt(s), {wall:.0f} s")
    return {
        **row,
        **facts,
        **first,
        "steady_tokens_per_second": steady(steps)["tokens_per_second"],
        "run_id": run_id,
        "wall_seconds": wall,
        "as_predicted": same_plan(first["first_plan"], row["predicted"]),
        "change": model_change(Plan.from_dict(first["first_plan"])) if first["first_plan"] else row["change"],
    }


# ---------------------------------------------------------------------------------------------
# The HF QLoRA reference (its own process)


def reference_missing(device: str | None) -> str | None:
    """Why the QLoRA reference cannot run here, or None."""
    import importlib.util

    if device == "cpu":
        return "skipped: --device cpu"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: no bitsandbytes"
    import torch

    if not torch.cuda.is_available():
        return "skipped: no CUDA"
    return None


def hf_reference(bench: Bench, shape: str, model: Path) -> dict[str, Any]:
    """The `hf` subcommand in its own process: its JSON, or the outcome (skipped, OOM, failed)."""
    missing = reference_missing(bench.args.device)
    if missing:
        return {"outcome": missing}
    args = bench.args
    command = [sys.executable, str(Path(__file__).resolve()), "hf", "--model", str(model), "--steps", str(args.steps)]
    command += ["--data", str(args.data), "--out", str(args.out)]
    command += ["--gpu-mem-cap", args.gpu_mem_cap] if args.gpu_mem_cap else []
    command += ["--pin-fp16"] if args.pin_fp16 else []
    finished = bench.command(command, f"hf-{shape}", check=False)
    if finished.returncode != 0:
        outcome = "OOM" if "OutOfMemoryError" in finished.stderr else f"failed ({finished.returncode})"
        bench.say(f"{shape}: HF QLoRA {outcome}; see {bench.out / 'logs' / f'hf-{shape}.log'}")
        return {"outcome": outcome}
    found = json.loads(finished.stdout.strip().splitlines()[-1])
    bench.say(f"{shape}: HF QLoRA {found['questions_per_second']:.2f} q/s, peak {found['peak_bytes'] / GIB:.1f} GiB")
    return {"outcome": "done", **found}


def hf_command(args: argparse.Namespace) -> dict[str, Any]:
    """`hf`: the HF Trainer + peft QLoRA of tamer's examples for --steps optimizer steps (see the module docstring)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

    from tamer.config import build_config
    from tamer.recipes import squad

    sys.path.insert(0, str(ROOT / "bench"))
    from quality import PaddingCollator, step_clock

    config = build_config("llama-3.2-1b", None, {"model": str(args.model), "data": str(args.data)}, [])
    if args.gpu_mem_cap:
        from tamer.units import parse_size

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, parse_size(args.gpu_mem_cap, "--gpu-mem-cap") / total), 0)
    tokenizer = squad.load_tokenizer("bundled", str(args.model))
    train_records, _ = squad.load_train_and_eval(config.data, config.eval_samples, config.seed)
    examples, _ = squad.build_examples(train_records, tokenizer, config.max_seq_len)
    dataset = [{"input_ids": example.input_ids, "labels": example.labels} for example in examples]
    compute = torch.float16 if args.pin_fp16 else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(
        args.model,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        ),
        dtype=compute,
        device_map={"": 0},
    )
    model.config.use_cache = False
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=HF_LORA["r"],
            lora_alpha=HF_LORA["alpha"],
            lora_dropout=HF_LORA["dropout"],
            target_modules=list(HF_TARGETS),
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    training = TrainingArguments(
        output_dir=str(args.out / "hf-trainer"),
        per_device_train_batch_size=HF_MICRO_BATCH,
        gradient_accumulation_steps=HF_ACCUMULATION,
        max_steps=args.steps,
        learning_rate=HF_LEARNING_RATE,
        warmup_steps=HF_WARMUP_STEPS,
        lr_scheduler_type="linear",
        weight_decay=0.01,
        optim="paged_adamw_8bit",
        bf16=not args.pin_fp16,
        fp16=args.pin_fp16,
        gradient_checkpointing=True,
        seed=config.seed,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        dataloader_drop_last=True,
        remove_unused_columns=False,
    )
    clock = step_clock()
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=dataset,
        data_collator=PaddingCollator(tokenizer.pad_token_id),
        callbacks=[clock],
    )
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    paced = len(clock.ends) - 1
    return {
        "steps": trainer.state.global_step,
        "questions_per_second": paced * EFFECTIVE_BATCH / (clock.ends[-1] - clock.ends[0]) if paced > 0 else None,
        "first_step_seconds": clock.ends[0] - clock.began if clock.ends else None,
        "peak_bytes": torch.cuda.max_memory_reserved(),
        "plan": f"HF Trainer + peft QLoRA: NF4 double quant, {'fp16' if args.pin_fp16 else 'bf16'} compute, "
        f"LoRA r={HF_LORA['r']} alpha={HF_LORA['alpha']} on all linear layers, gradient checkpointing, "
        f"paged_adamw_8bit, micro-batch {HF_MICRO_BATCH} x {HF_ACCUMULATION}, padded to the longest",
    }


# ---------------------------------------------------------------------------------------------
# The bench


def versions() -> dict[str, Any]:
    """The card and the library versions the figures were measured with."""
    import importlib.metadata

    found: dict[str, Any] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    import torch

    found["card"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return found


def bench_command(args: argparse.Namespace) -> None:
    shapes = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown or not shapes:
        raise SystemExit(f"error: --shapes {args.shapes}: expected some of {','.join(SHAPES)}")
    if args.steps < 2:
        raise SystemExit(f"error: --steps {args.steps}: at least 2 (questions/s are timed after the first step)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.device == "cpu" and not args.gpu_mem:
        args.gpu_mem = "16GiB"  # tamer plan needs a card to plan for; a CPU run has none
    bench = Bench(args)
    rows = []
    for shape in shapes:
        model = model_folder(bench, shape)
        row = tamer_shape(bench, shape, model)
        row["hf"] = hf_reference(bench, shape, model)
        rows.append(row)
    found = versions()
    text = "\n\n".join(
        [
            f"card: {found['card']}; cap: {args.gpu_mem_cap or 'none'}; "
            + ("pinned to fp16 (T4 path); " if args.pin_fp16 else "")
            + f"{args.steps} optimizer steps of {EFFECTIVE_BATCH} questions",
            table(rows),
            textwrap.fill(LEGEND, 80),
            plans_text(rows),
            textwrap.fill(
                "versions: " + ", ".join(f"{key} {value}" for key, value in found.items() if key != "card"), 80
            ),
        ]
    )
    (args.out / "reach.md").write_text(text + "\n")
    (args.out / "reach.json").write_text(
        json.dumps({"versions": found, "args": vars(args), "rows": rows, "commands": bench.commands}, default=str)
    )
    print("\n" + text)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", nargs="?", default="bench", choices=["bench", "hf"], help="bench (default); hf: its child process"
    )
    parser.add_argument("--shapes", default="1b,3b,8b", help=f"Comma-separated: {','.join(SHAPES)}.")
    parser.add_argument("--steps", type=int, default=30, help="Optimizer steps per run (tamer and the reference).")
    parser.add_argument("--gpu-mem-cap", help="Cap on PyTorch's allocator for every run, e.g. 15GiB.")
    parser.add_argument("--gpu-mem", help="The card tamer plan assumes without a GPU (default 16GiB on --device cpu).")
    parser.add_argument("--pin-fp16", action="store_true", help="Plan and train as on a T4: no bf16 (fp16 compute).")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Passed to tamer (default: auto).")
    parser.add_argument("--data", default="bundled", help="A SQuAD v1.1 JSON file, or bundled (tamer's slice).")
    parser.add_argument("--models", default="/tmp", help="Where the random models are built (MODELS/<shape>).")
    parser.add_argument("--out", type=Path, default=Path("out/reach"), help="Folder for logs, home and the table.")
    parser.add_argument("--model", type=Path, help="hf: the model folder.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.command == "bench":
        bench_command(args)
        return
    print(json.dumps(hf_command(args), default=str))


if __name__ == "__main__":
    main()
