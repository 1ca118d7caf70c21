"""Answer quality of a real model before and after training: tamer's default plan, the plans an escalation
reaches, and the Hugging Face Trainer, all scored by tamer's own SQuAD evaluation on articles never trained on.

    python bench/real_model.py convert .models/smollm2-135m                     # once (bench/real_model.py)
    python bench/quality.py --model .models/smollm2-135m --data SQUAD.json --out OUT --gpu-mem-cap 15GiB
    python bench/quality.py --model DIR --data SQUAD.json --out OUT --runs tamer,lora --lora-rates 2e-5,2e-4
    python bench/quality.py --model DIR --data SQUAD.json --out OUT --max-steps 3 --limit 8 --device cpu  # plumbing
    python bench/quality.py --preset tiny --out OUT --max-steps 3 --limit 8 --device cpu   # a random tiny Llama

1. The SQuAD v1.1 file is split by article (`--seed`): the articles in a seeded order, the first ones (about half
   the questions) train and the rest evaluate, so no context that is scored was seen in training. Both halves are
   written as SQuAD JSON (OUT/train.json, OUT/eval.json).
2. `base`: the model as converted, scored on the first `--limit` evaluation questions.
3. `tamer`: `tamer run squad --model DIR --data OUT/train.json --set epochs=N` with the defaults (the planner's
   plan on a GPU), then `tamer eval RUN --data OUT/eval.json --limit K`. Every tamer run shares one home
   (OUT/home), so `tamer compare RUN ... --data OUT/eval.json` lists them side by side with these scores.
4. The same run forced (`start_plan`) onto the plans an escalation reaches from the default plan: `lora` (the lora
   rung: LoRA on the full-precision weights, at `lora.learning_rate`, one run per `--lora-rates` entry), `lora-int8`
   (quantize_8bit: LoRA on an int8 base), `fp16` (fp16 autocast with a GradScaler, what a card without bf16 gets).
5. `chat`: the training half as conversations (bench/squad_chat.py's rows, system message `CHAT_SYSTEM`) through
   `tamer run chat`, scored by `tamer eval --em-f1` on the evaluation half as conversations, the same questions in
   the same order: what a user who brings their own chat data gets, against the squad recipe on the same split.
   Pass `--set max_seq_len=768` to keep every question whole in both recipes (the squad recipe windows a long
   context around the answer; the chat recipe truncates or skips a long conversation, per `overlong`).
6. `hf`: the Hugging Face Trainer as an expert writes it for the same job: full fine-tune with fp32 weights and bf16
   autocast (fp32 on CPU), tamer's examples (same prompt, labels on the answer and EOS only), the same training
   questions (tamer's held-out validation picks removed), the same questions per optimizer step, epochs, peak
   learning rate, warmup ratio and cosine decay, torch AdamW (fused on CUDA), gradient clipping at 1.0, length-
   grouped dynamic padding; saved and scored by the same code as `base`.

`base` and `hf` are scored by `python bench/quality.py score`, which calls tamer/engine/result.py's `evaluate`
(the prompt, greedy decoding and EM/F1 of tamer/recipes/squad_score.py that `tamer eval` uses) in the dtype
`tamer eval` uses (bf16 on CUDA, fp32 on CPU). Prints one table (plan, EM, F1, steps, questions/s, first step,
peak memory, wall time) and writes it to OUT/quality.md, with everything in OUT/quality.json. Every tamer row keeps
its replies (`tamer eval --predictions OUT/predictions/LABEL.json`), and each is compared with the `tamer` row
question by question under the table: the mean EM and F1 difference with its standard error (`paired`).

Epochs: 2 by default, as in the HF question-answering example and the issue-25 measurement (EM 0.593 after 2
epochs): the evaluation half of the shared 5,609-question subset leaves ~2,700 training questions, ~680 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "bench"):  # `python bench/quality.py` from the repository: tamer, bench/squad_chat.py
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

GIB = 2**30
RUNS = ("base", "tamer", "hf", "lora", "lora-int8", "fp16", "chat", "chat-span")
CHAT_SYSTEM = "Answer with a span of the context."
"""The system message of the `chat` row's conversations (SmolLM2's template would otherwise add its own)."""
PRESET = "llama-3.2-1b"
"""The tamer preset under `--model`: its defaults (learning rate, batch, schedule); the shape comes from DIR/config.json."""


# ---------------------------------------------------------------------------------------------
# The split


def split_by_article(document: dict[str, Any], seed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """(train, eval, counts): whole articles in a seeded order, the first ones until half the questions train."""
    articles = list(document["data"])
    random.Random(seed).shuffle(articles)
    questions = [sum(len(paragraph["qas"]) for paragraph in article["paragraphs"]) for article in articles]
    half, taken, cut = sum(questions) / 2, 0, 0
    while (
        cut < len(articles) - 1 and taken + questions[cut] / 2 < half
    ):  # the article that straddles the half goes where it is larger
        taken += questions[cut]
        cut += 1
    cut = max(1, cut)
    train, held = articles[:cut], articles[cut:]
    counts = {
        "train_articles": len(train),
        "train_questions": sum(questions[:cut]),
        "eval_articles": len(held),
        "eval_questions": sum(questions[cut:]),
    }
    version = document.get("version", "1.1")
    return {"data": train, "version": version}, {"data": held, "version": version}, counts


# ---------------------------------------------------------------------------------------------
# Running tamer and the two scoring/training children


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out
        self.home = self.out / "home"
        self.started = time.time()

    def say(self, line: str) -> None:
        print(f"[{time.time() - self.started:7.1f} s] {line}", flush=True)

    def command(self, command: list[str], log: str) -> subprocess.CompletedProcess:
        """Run `command` to its end, its output kept in OUT/logs/LOG.log; a failure ends the bench naming the log."""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        path = self.out / "logs" / f"{log}.log"
        finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        path.write_text(f"$ {' '.join(command)}\n{finished.stdout}\n{finished.stderr}")
        if finished.returncode != 0:
            raise SystemExit(f"{' '.join(command[:4])} ... failed ({finished.returncode}); see {path}")
        return finished

    def tamer(self, *arguments: str, log: str) -> subprocess.CompletedProcess:
        return self.command([sys.executable, "-m", "tamer", *arguments, "--home", str(self.home)], log)

    def own(self, *arguments: str, log: str) -> dict[str, Any]:
        """This script's `score` or `hf` subcommand in a child process: its JSON summary."""
        finished = self.command([sys.executable, str(Path(__file__).resolve()), *arguments], log)
        return json.loads(finished.stdout.strip().splitlines()[-1])


def common_sets(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys every tamer run, the HF baseline and the scoring share."""
    sets: dict[str, Any] = {
        "epochs": args.epochs,
        "seed": args.seed,
        "eval": {"squad_samples": 0},
        "export": {"enabled": False},
    }
    if args.max_steps:
        sets["max_steps"] = args.max_steps
    if args.learning_rate:
        sets["learning_rate"] = args.learning_rate
    if args.device:
        sets["device"] = args.device
    if args.gpu_mem_cap:
        sets["gpu_mem_cap"] = args.gpu_mem_cap
    from tamer.config import parse_set

    for item in args.set or []:
        key, value = parse_set(item)
        *parents, last = key.split(".")
        node = sets
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = value
    return sets


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_config(args: argparse.Namespace, data: Path, extra: dict[str, Any] | None = None) -> Any:
    from tamer.config import build_config

    return build_config(
        PRESET,
        None,
        {"model": str(args.model), "data": str(data)},
        [f"{key}={json.dumps(value)}" for key, value in merged(common_sets(args), extra or {}).items()],
    )


def forced_plans(args: argparse.Namespace, train: Path) -> dict[str, dict[str, Any]]:
    """The start_plan of each escalation variant, from the default first plan: the planner's choice on a GPU, the
    user's plan where the planner does not plan (CPU)."""
    import dataclasses

    from tamer.daemon.probe import device_facts
    from tamer.planner.candidates import PlannerPolicy, choose, device_budget
    from tamer.strategies.ladder import apply_rung, initial_plan

    config = run_config(args, train)
    facts = device_facts(config.device)
    base = initial_plan(config, facts)
    if facts.kind == "cuda":
        choice = choose(
            config, facts, device_budget(facts.total_memory, config.gpu_mem_cap), PlannerPolicy.from_config(config)
        )
        base = choice.plan if choice is not None else base
    if base.autocast_dtype is not None:
        fp16 = base.replace(autocast_dtype="fp16")
    else:  # the mixed_precision rung on a card without bf16
        fp16 = apply_rung(base, "mixed_precision", dataclasses.replace(facts, bf16=False, fp16=True))
    plans = {
        "lora": apply_rung(base, "lora", facts),
        "lora-int8": apply_rung(base, "quantize_8bit", facts),
        "fp16": fp16,
    }
    fields = (
        "micro_batch_size",
        "grad_accumulation",
        "env",
        "gradient_checkpointing",
        "checkpoint_layers",
        "checkpoint_layers_by_tokens",
        "autocast_dtype",
        "weights_dtype",
        "quantization",
        "lora",
        "optimizer",
        "chunked_loss",
        "rungs",
    )
    return {label: {name: plan.to_dict()[name] for name in fields} for label, plan in plans.items()}


def tamer_run(
    bench: Bench, label: str, train: Path, evaluation: Path, extra: dict[str, Any], recipe: str = "squad"
) -> dict[str, Any]:
    """One `tamer run RECIPE` with `extra` config keys, then `tamer eval` on the evaluation half: the table's row.
    A chat run is scored with `--em-f1` on the evaluation half as chat rows (the same questions)."""
    import yaml

    args = bench.args
    config_file = bench.out / "configs" / f"{label}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(
        yaml.safe_dump({"model": str(args.model), "data": str(train), **merged(common_sets(args), extra)})
    )
    launched = time.time()
    run_id = bench.tamer(
        "run", recipe, "--preset", PRESET, "--config", str(config_file), log=f"run-{label}"
    ).stdout.split()[0]
    predictions = bench.out / "predictions" / f"{label}.json"
    wall = time.time() - launched
    bench.say(f"{label}: trained ({run_id}, {wall:.0f} s)")
    scored = json.loads(
        bench.tamer(
            "eval",
            run_id,
            "--data",
            str(evaluation),
            "--limit",
            str(args.limit),
            "--json",
            "--predictions",
            str(predictions),
            log=f"eval-{label}",
        ).stdout
    )
    bench.say(f"{label}: EM {scored['exact_match']:.3f}, F1 {scored['f1']:.3f}")
    return {
        "label": label,
        "run_id": run_id,
        "exact_match": scored["exact_match"],
        "f1": scored["f1"],
        "questions": scored["questions"],
        "predictions": str(predictions),
        "wall_seconds": wall,
        **training_facts(bench.home, run_id),
    }


def chat_row(bench: Bench, train: dict[str, Any], evaluation: dict[str, Any], span: bool = False) -> dict[str, Any]:
    """`tamer run chat` on the training half as conversations (bench/squad_chat.py's rows: a system message, the
    user turn `Context: ...\\nQuestion: ...`, the first answer as the assistant turn), scored with `tamer eval --em-f1`
    on the evaluation half as conversations, in the same order: the questions the squad rows are scored on.
    `span` (the `chat-span` row): the assistant turn spelled as the context spells the answer, the space before it
    kept (squad_chat.span_text), as the squad prompt's ` answer` is."""
    from squad_chat import rows as chat_rows

    label = "chat-span" if span else "chat"
    files = []
    for name, document in (("train", train), ("eval", evaluation)):
        conversations, _ = chat_rows(document["data"], CHAT_SYSTEM, span=span)
        path = bench.out / f"{name}.{label}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in conversations))
        files.append(path)
    extra = {"chat_template": "chatml"} if bench.args.preset == "tiny" else {}  # the tiny model's tokenizer has none
    return tamer_run(bench, label, files[0], files[1], extra, recipe="chat")


def training_facts(home: Path, run_id: str) -> dict[str, Any]:
    """Steps, the plan it settled on, questions/s after the first step, the first step's seconds, peak memory."""
    from tamer.state.db import Database

    db = Database(home / "tamer.db", create=False)
    steps = db.steps(run_id)
    attempts = db.attempts(run_id)
    run = db.run(run_id)
    db.close()
    if not steps:
        return {"steps": 0, "plan": attempts[-1]["plan_summary"] if attempts else None}
    paced = steps[1:]
    seconds = paced[-1]["wall_time"] - steps[0]["wall_time"] if paced else None
    samples = sum(row["micro_batch_size"] * row["grad_accumulation"] for row in paced)
    reserved = [row["mem_reserved"] for row in steps if row["mem_reserved"] is not None]
    rss = [row["host_rss"] for row in steps if row["host_rss"] is not None]
    return {
        "steps": run["steps_done"],
        "plan": attempts[-1]["plan_summary"],
        "attempts": len(attempts),
        "questions_per_second": samples / seconds if seconds else None,
        "first_step_seconds": steps[0]["step_time"],
        "peak_bytes": max(reserved) if reserved else max(rss, default=None),
        "peak_kind": "reserved" if reserved else "RSS",
    }


def score_folder(bench: Bench, label: str, folder: Path, evaluation: Path) -> dict[str, Any]:
    """EM/F1 of a Hugging Face folder on the evaluation half, by tamer's evaluation code (the `score` subcommand)."""
    args = bench.args
    arguments = [
        "score",
        str(folder),
        "--eval",
        str(evaluation),
        "--limit",
        str(args.limit),
        "--train",
        str(bench.out / "train.json"),
        "--model",
        str(args.model),
        *shared_options(args),
    ]
    found = bench.own(*arguments, log=f"score-{label}")
    bench.say(f"{label}: EM {found['exact_match']:.3f}, F1 {found['f1']:.3f}")
    kept = bench.out / "predictions" / f"{label}.json"  # the shape `tamer eval --predictions` writes
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps({"model": str(folder), "predictions": found["predictions"]}, indent=1))
    return {
        "exact_match": found["exact_match"],
        "f1": found["f1"],
        "questions": found["questions"],
        "eval_seconds": found["seconds"],
        "examples": found["examples"],
        "predictions": str(kept),
    }


def shared_options(args: argparse.Namespace) -> list[str]:
    options = ["--epochs", str(args.epochs), "--seed", str(args.seed), *[f"--set={item}" for item in args.set or []]]
    for flag, value in (
        ("--max-steps", args.max_steps),
        ("--learning-rate", args.learning_rate),
        ("--device", args.device),
        ("--gpu-mem-cap", args.gpu_mem_cap),
    ):
        if value:
            options += [flag, str(value)]
    return options


# ---------------------------------------------------------------------------------------------
# The child commands: score a folder, train with the Hugging Face Trainer (torch lives here only)


def score_command(args: argparse.Namespace) -> dict[str, Any]:
    """`score FOLDER`: tamer's SQuAD evaluation of a Hugging Face folder, as `tamer eval` runs it on a checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    from tamer.engine import result
    from tamer.recipes import squad

    config = run_config(args, args.train)
    device = result.pick_device(config)
    dtype = (
        torch.bfloat16 if device.type == "cuda" else torch.float32
    )  # tamer eval: the bf16 export on CUDA, fp32 on CPU
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    tokenizer = squad.load_tokenizer(None, str(args.folder))
    model = AutoModelForCausalLM.from_pretrained(args.folder, dtype=dtype).to(device).eval()
    model.config.use_cache = True
    records = squad.load_records(str(args.eval))
    scored = result.evaluate(model, tokenizer, config, records, device, args.limit)
    return {
        key: scored[key]
        for key in ("exact_match", "f1", "questions", "seconds", "questions_per_second", "examples", "predictions")
    }


def hf_command(args: argparse.Namespace) -> dict[str, Any]:
    """`hf`: the Hugging Face Trainer's full fine-tune of the same examples, saved to --save and described."""
    import resource

    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from tamer.recipes import squad

    config = run_config(args, args.train)
    cuda = torch.cuda.is_available() and config.device != "cpu"
    if cuda and config.gpu_mem_cap:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, int(config.gpu_mem_cap) / total), 0)
    tokenizer = squad.load_tokenizer(None, str(args.model))
    train_records, _ = squad.load_train_and_eval(
        str(args.train), config.eval_samples, config.seed
    )  # tamer's training questions
    examples, _ = squad.build_examples(train_records, tokenizer, config.max_seq_len)
    dataset = [{"input_ids": example.input_ids, "labels": example.labels} for example in examples]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.config.use_cache = False
    steps_per_epoch = len(dataset) // config.effective_batch_size
    training = TrainingArguments(
        output_dir=str(args.save) + ".trainer",
        per_device_train_batch_size=config.effective_batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=math.ceil(config.warmup_ratio * (config.max_steps or config.epochs * steps_per_epoch)),
        lr_scheduler_type="cosine",
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        bf16=cuda,
        use_cpu=not cuda,
        train_sampling_strategy="group_by_length",
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        dataloader_drop_last=True,
        remove_unused_columns=False,
    )
    collate = PaddingCollator(tokenizer.pad_token_id)
    clock = step_clock()
    trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collate, callbacks=[clock])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    metrics = trainer.train().metrics
    model.config.use_cache = True
    trainer.save_model(str(args.save))
    tokenizer.save_pretrained(str(args.save))
    paced = len(clock.ends) - 1  # as for tamer's runs: the pace after the first step, which carries the warm-up
    return {
        "steps": trainer.state.global_step,
        "train_seconds": metrics.get("train_runtime"),
        "train_questions": len(dataset),
        "questions_per_second": paced * config.effective_batch_size / (clock.ends[-1] - clock.ends[0])
        if paced > 0
        else None,
        "first_step_seconds": clock.ends[0] - clock.began if clock.ends else None,
        "peak_bytes": torch.cuda.max_memory_reserved()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_kind": "reserved" if cuda else "RSS",
        "plan": "HF Trainer: full FT, fp32 weights"
        + (", bf16 autocast, fused AdamW" if cuda else ", AdamW")
        + ", length-grouped, padded to the longest",
    }


def step_clock() -> Any:
    """A TrainerCallback noting when training began and when each optimizer step ended (after the device finished)."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.began, self.ends = 0.0, []

        def on_train_begin(self, *arguments: Any, **keywords: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, *arguments: Any, **keywords: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return Clock()


class PaddingCollator:
    """Right-padded input_ids, attention_mask and labels (-100 on padding), to the longest example of the batch."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(feature["input_ids"]) for feature in features)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            ids[row, :length] = torch.tensor(feature["input_ids"])
            labels[row, :length] = torch.tensor(feature["labels"])
            mask[row, :length] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ---------------------------------------------------------------------------------------------
# The table


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, one row per run, narrow enough for 80 columns with short labels."""
    lines = ["| run | EM | F1 | steps | q/s | first step s | peak GiB | wall s |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:

        def number(key: str, digits: int) -> str:
            value = row.get(key)  # noqa: B023  (called within this iteration)
            return "-" if value is None else f"{value:.{digits}f}"

        peak = (
            "-"
            if row.get("peak_bytes") is None
            else f"{row['peak_bytes'] / GIB:.1f}" + (" RSS" if row.get("peak_kind") == "RSS" else "")
        )
        lines.append(
            f"| {row['label']} | {number('exact_match', 3)} | {number('f1', 3)} | {row.get('steps', '-')} | "
            f"{number('questions_per_second', 1)} | {number('first_step_seconds', 1)} | {peak} | {number('wall_seconds', 0)} |"
        )
    return "\n".join(lines)


def paired(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """`other` minus `base` question by question (`tamer eval --predictions` rows, matched by id): the mean
    difference of EM and of F1 with its standard error (the spread of the per-question differences / sqrt(n)), and on
    how many questions the exact matches differ. Two means on the same questions are compared this way, not as two
    independent samples: most questions are answered alike by both and cancel."""
    by_id = {row["id"]: row for row in base}
    pairs = [(by_id[row["id"]], row) for row in other if row["id"] in by_id]
    found: dict[str, Any] = {"questions": len(pairs)}
    for metric in ("exact_match", "f1"):
        differences = [theirs[metric] - ours[metric] for ours, theirs in pairs]
        mean = sum(differences) / len(differences) if differences else 0.0
        spread = (
            math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
            if len(differences) > 1
            else 0.0
        )
        found[metric] = mean
        found[f"{metric}_se"] = spread / math.sqrt(len(differences)) if differences else 0.0
    found["disagree"] = sum(1 for ours, theirs in pairs if ours["exact_match"] != theirs["exact_match"])
    return found


def paired_text(rows: list[dict[str, Any]]) -> str:
    """Lines for each row scored with every reply kept, against the `tamer` row (or the first such row)."""
    kept = [row for row in rows if row.get("predictions") and Path(row["predictions"]).is_file()]
    if len(kept) < 2:
        return ""
    base = next((row for row in kept if row["label"] == "tamer"), kept[0])
    replies = {row["label"]: json.loads(Path(row["predictions"]).read_text())["predictions"] for row in kept}
    lines = [f"Question by question against {base['label']} (mean difference +- one standard error):"]
    for row in kept:
        if row is base:
            continue
        found = paired(replies[base["label"]], replies[row["label"]])
        row["paired"] = found
        lines.append(
            f"- {row['label']}: EM {found['exact_match'] * 100:+.1f} +- {found['exact_match_se'] * 100:.1f}, "
            f"F1 {found['f1'] * 100:+.1f} +- {found['f1_se'] * 100:.1f} points; "
            f"{found['disagree']} of {found['questions']} exact matches differ"
        )
    return "\n".join(lines)


def plans_text(rows: list[dict[str, Any]]) -> str:
    """One line per run: the plan it settled on, and its run id (and attempts, when an OOM made more than one)."""
    lines = []
    for row in rows:
        attempts = f", {row['attempts']} attempts" if (row.get("attempts") or 1) > 1 else ""
        lines.append(
            f"- {row['label']}: {row.get('plan') or '-'}"
            + (f" (run {row['run_id']}{attempts})" if row.get("run_id") else "")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The bench


def tiny_model(out: Path, seed: int) -> Path:
    """A two-layer random Llama (the tiny preset's shape) with the bundled tokenizer, as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tamer.presets import TINY_ARCHITECTURE
    from tamer.recipes import squad

    folder = out / "tiny-model"
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        LlamaForCausalLM(LlamaConfig(**TINY_ARCHITECTURE)).save_pretrained(folder)
        squad.load_tokenizer("bundled", "tiny").save_pretrained(folder)
    return folder


def bench_command(args: argparse.Namespace) -> None:
    from tamer.recipes.squad import BUNDLED_DATA

    args.out.mkdir(parents=True, exist_ok=True)
    if args.preset == "tiny":
        args.model = tiny_model(args.out, args.seed)
        args.data = args.data or BUNDLED_DATA
        args.learning_rate = args.learning_rate or 1e-3
    if args.model is None or args.data is None:
        raise SystemExit("error: pass --model DIR and --data SQUAD.json (or --preset tiny)")
    args.model = Path(args.model).resolve()
    bench = Bench(args)
    wanted = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(RUNS))
    if unknown:
        raise SystemExit(f"error: --runs {','.join(unknown)}: unknown; choose from {','.join(RUNS)}")
    train, evaluation, counts = split_by_article(json.loads(Path(args.data).read_text()), args.seed)
    train_file, eval_file = args.out / "train.json", args.out / "eval.json"
    train_file.write_text(json.dumps(train))
    eval_file.write_text(json.dumps(evaluation))
    bench.say(
        f"split by article (seed {args.seed}): {counts['train_articles']} articles, {counts['train_questions']} questions "
        f"train; {counts['eval_articles']} articles, {counts['eval_questions']} questions evaluate (first {args.limit} scored)"
    )
    rows: list[dict[str, Any]] = []
    if "base" in wanted:
        rows.append(
            {
                "label": "base",
                "plan": "the model as converted, no training",
                **score_folder(bench, "base", args.model, eval_file),
            }
        )
    if "tamer" in wanted:
        rows.append(tamer_run(bench, "tamer", train_file, eval_file, {}))
    plans = forced_plans(args, train_file) if {"lora", "lora-int8", "fp16"} & set(wanted) else {}
    if "lora" in wanted:
        for rate in args.lora_rates.split(","):
            label = "lora" if args.lora_rates == "default" else f"lora@{float(rate):g}"
            extra = {"start_plan": plans["lora"]} | (
                {} if rate == "default" else {"lora": {"learning_rate": float(rate)}}
            )
            rows.append(tamer_run(bench, label, train_file, eval_file, extra))
    for label in ("lora-int8", "fp16"):
        if label in wanted:
            rows.append(tamer_run(bench, label, train_file, eval_file, {"start_plan": plans[label]}))
    if "chat" in wanted:
        rows.append(chat_row(bench, train, evaluation))
    if "chat-span" in wanted:
        rows.append(chat_row(bench, train, evaluation, span=True))
    if "hf" in wanted:
        save = args.out / "hf-model"
        launched = time.time()
        trained = bench.own(
            "hf",
            "--train",
            str(train_file),
            "--model",
            str(args.model),
            "--save",
            str(save),
            *shared_options(args),
            log="hf-train",
        )
        trained["wall_seconds"] = (
            time.time() - launched
        )  # the whole command, as for `tamer run`: load, tokenize, train, save
        bench.say(f"hf: trained ({trained['steps']} steps, {trained['wall_seconds']:.0f} s)")
        rows.append({"label": "hf", **trained, **score_folder(bench, "hf", save, eval_file)})
    summary = {
        "counts": counts,
        "seed": args.seed,
        "epochs": args.epochs,
        "limit": args.limit,
        "rows": rows,
        "compare": [
            "tamer",
            "compare",
            *[row["run_id"] for row in rows if row.get("run_id")],
            "--data",
            str(eval_file),
            "--home",
            str(bench.home),
        ],
    }
    comparison = paired_text(rows)  # before quality.json: it adds each row's `paired`
    (args.out / "quality.json").write_text(json.dumps(summary, indent=2, default=str))
    text = (
        f"{table(rows)}\n\n"
        + (f"{comparison}\n\n" if comparison else "")
        + f"Split by article (seed {args.seed}): {counts['train_articles']} articles / {counts['train_questions']} "
        f"questions train, {counts['eval_articles']} / {counts['eval_questions']} evaluate; the first {args.limit} evaluation "
        f"questions scored. Epochs {args.epochs}"
        + (f", at most {args.max_steps} steps" if args.max_steps else "")
        + ".\n\nPlans:\n"
        + plans_text(rows)
        + "\n"
    )
    (args.out / "quality.md").write_text(text)
    print("\n" + text)
    if len(summary["compare"]) > 7:
        print("side by side: " + " ".join(summary["compare"]))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        nargs="?",
        default="bench",
        choices=["bench", "score", "hf"],
        help="bench (the default) runs everything; score and hf are its child processes",
    )
    parser.add_argument("folder", nargs="?", type=Path, help="score: the Hugging Face folder to score")
    parser.add_argument("--model", type=Path, help="The converted model folder (bench/real_model.py convert).")
    parser.add_argument("--data", type=Path, help="A SQuAD v1.1 JSON file, split here by article.")
    parser.add_argument(
        "--preset", choices=["tiny"], help="tiny: a random two-layer Llama and the bundled slice (CPU plumbing)."
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/quality"), help="Folder for the halves, the runs and the table."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the article split, the data order and the init.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, help="Stop every run after this many optimizer steps (a quick check).")
    parser.add_argument("--limit", type=int, default=1000, help="Evaluation questions scored.")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"Which rows, comma-separated: {','.join(RUNS)}.")
    parser.add_argument(
        "--lora-rates", default="default", help="LoRA peak learning rates, one run each (default: the config's)."
    )
    parser.add_argument(
        "--learning-rate", type=float, help="Peak learning rate of the full fine-tunes (default: the config's)."
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="Passed to tamer (default: auto).")
    parser.add_argument("--gpu-mem-cap", help="Cap on PyTorch's allocator for every run, e.g. 15GiB.")
    parser.add_argument(
        "--set", action="append", help="A config key for every run and the HF baseline, e.g. --set eval_samples=32."
    )
    parser.add_argument("--eval", type=Path, help="score: the evaluation half.")
    parser.add_argument("--train", type=Path, help="score / hf: the training half.")
    parser.add_argument("--save", type=Path, help="hf: where the trained model is saved.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.command == "bench":
        bench_command(args)
        return
    found = score_command(args) if args.command == "score" else hf_command(args)
    print(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
