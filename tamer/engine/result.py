"""The result of a run: a Hugging Face model folder and its SQuAD score, in a child process.

    python -m tamer.engine.result RUN_DIR [--step N] [--eval [--em-f1]] [--export DIR] [--data FILE] [--limit N] [--batch-size N]
                                  [--merge-lora | --no-merge-lora] [--dtype auto|bf16|fp16|fp32] [--result FILE]

The supervisor starts it after a run completes (tamer/daemon/result.py), and `tamer export` / `tamer
eval` start it on demand, so the parent side never imports torch. It loads one checkpoint's weights
(full: `step-N/model`; LoRA: the base the manifest names plus `step-N/adapter`, merged), then:

- `--eval`: greedy answers to held-out questions with the training prompt, batched with left padding
  and a KV cache, stopping at end-of-sequence or `eval.squad_max_new_tokens`; SQuAD v1.1 EM and F1
  (tamer/recipes/squad_score.py) go to the `squad_scores` table. An OOM halves the evaluation batch.
  The chat, instruct and text recipes: the validation loss instead, on the run's validation rows or `--data`'s
  (an event, `validation`), and for chat and instruct with `--em-f1` (or eval.em_f1) EM and F1 of greedy
  replies (tamer/engine/data_eval.py).
- `--export DIR`: safetensors weights, config, tokenizer (a chat run's with its chat template), generation
  config and a model card.

Prints nothing on success but writes a JSON summary to `--result`; a user-fixable error is one line
on stderr and the exit code of its kind (tamer/errors.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tamer import outputs
from tamer.config import RunConfig, config_from_dict
from tamer.engine import data_eval
from tamer.engine.attempt import Attempt
from tamer.engine.generate import generate_answers
from tamer.engine.model import cudnn_attention_allowed, use_cudnn_attention
from tamer.errors import ConfigError, DataError, StateError, TamerError
from tamer.plan import Plan
from tamer.protocol import HELD_OUT
from tamer.recipes import prepare, squad
from tamer.recipes.squad_score import prediction_rows, score
from tamer.state import checkpoints, queries
from tamer.state.db import Database

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Trained:
    """One checkpoint's weights, ready to generate or export."""

    model: Any
    """The model to evaluate and export: full weights, or LoRA merged into its base."""
    checkpoint: checkpoints.Checkpoint
    plan: Plan
    base: str | None
    """LoRA: the base the adapter was trained on (a folder of the run, or the hub id); None for full weights."""
    adapter: Path | None


# ---------------------------------------------------------------------------------------------
# Loading


def run_config(run_dir: Path) -> tuple[dict[str, Any], RunConfig]:
    spec = json.loads((run_dir / "run.json").read_text())
    return spec, config_from_dict(spec["config"])


def find_checkpoint(run_dir: Path, step: int | None) -> checkpoints.Checkpoint:
    """The newest valid checkpoint, or checkpoint `step` (verified)."""
    if step is None:
        found, _ = checkpoints.newest_valid(run_dir)
        if found is None:
            raise StateError(f"run folder {run_dir} has no valid checkpoint; train it first (tamer resume RUN)")
        return found
    path = checkpoints.checkpoint_dir(run_dir) / f"step-{step}"
    manifest, problem = checkpoints.verify(path) if path.is_dir() else (None, "no such checkpoint")
    if manifest is None:
        kept = sorted(
            int(folder.name[5:])
            for folder in checkpoints.checkpoint_dir(run_dir).glob("step-*")
            if folder.name[5:].isdigit()
        )
        raise StateError(
            f"--step {step}: {problem} in {checkpoints.checkpoint_dir(run_dir)}; pick one of the kept steps: "
            f"{', '.join(map(str, kept)) or 'none'}"
        )
    return checkpoints.Checkpoint(path, manifest)


def base_of(run_dir: Path, config: RunConfig, manifest: dict[str, Any]) -> str:
    """The base weights a LoRA checkpoint was trained on (as tamer/engine/trainer.py resolves it)."""
    return str((run_dir / manifest["base"]).resolve()) if manifest.get("base") else config.model


def load_trained(
    run_dir: Path,
    config: RunConfig,
    checkpoint: checkpoints.Checkpoint,
    device: torch.device,
    dtype: torch.dtype,
    merge: bool = True,
) -> Trained:
    """The checkpoint's model in `dtype` on `device`. A LoRA adapter trained on an int8 or NF4 base is merged
    into the unquantized base weights (the quantized codes x their scales approximate them; merging into int8
    or 4 bits would lose the adapter in rounding)."""
    from transformers import AutoModelForCausalLM

    plan = Plan.from_dict(checkpoint.manifest["plan"])
    if checkpoint.manifest["kind"] == "full":
        model = AutoModelForCausalLM.from_pretrained(checkpoint.path / "model", dtype=dtype)
        return Trained(model.to(device).eval(), checkpoint, plan, None, None)
    from peft import PeftModel

    base = base_of(run_dir, config, checkpoint.manifest)
    adapter = checkpoint.path / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), str(adapter))
    if merge:
        model = model.merge_and_unload()
    return Trained(model.to(device).eval(), checkpoint, plan, base, adapter)


def export_dtype(choice: str, plan: Plan) -> str:
    """`auto`: bf16 when the weights were kept in fp32 (master weights), else the dtype they trained in."""
    if choice != "auto":
        return choice
    return "bf16" if plan.weights_dtype == "fp32" else plan.weights_dtype


def pick_device(config: RunConfig) -> torch.device:
    if config.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", torch.cuda.current_device())
    if config.gpu_mem_cap:  # the same cap as training: evaluation must fit where training did
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, config.gpu_mem_cap / total), device)
    return device


def load_tokenizer(config: RunConfig) -> Any:
    """The run's tokenizer; a chat run's carries the template it trained with, so the export renders as training did."""
    tokenizer = squad.load_tokenizer(
        config.tokenizer if config.tokenizer else ("bundled" if config.init == "random" else None), config.model
    )
    if config.recipe == "chat":
        _, template = prepare.setup(config)
        tokenizer.chat_template = template.text
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Questions: held-out only


def evaluation_records(config: RunConfig, data: str | None) -> tuple[list[squad.Record], str]:
    """(records, label). Default: the run's validation slice (the `eval_samples` seeded picks that
    training never sees). Another file: its questions minus any the run trained on (by id)."""
    train, held_out = squad.load_train_and_eval(config.data, config.eval_samples, config.seed)
    if data is None or (config.data is not None and _same_source(data, config.data)):
        if not held_out:
            raise DataError(
                "no held-out questions to score: the run holds none out (eval_samples is 0); "
                "pass --data FILE with other SQuAD questions"
            )
        return held_out, HELD_OUT
    trained_ids = {record.id for record in train}
    records = [record for record in squad.load_records(data) if record.id not in trained_ids]
    if not records:
        raise DataError(f"--data {data}: every question in it was trained on; evaluate on other questions")
    return records, data


def _same_source(one: str, other: str) -> bool:
    if "bundled" in (one, other):
        return one == other
    return Path(one).expanduser().resolve() == Path(other).expanduser().resolve()


def prompts_for(
    records: list[squad.Record], tokenizer: Any, max_seq_len: int
) -> tuple[list[list[int]], list[list[str]], list[str]]:
    """Token ids of each question's prompt, exactly as training built it (BOS, `Context: ...\\nQuestion:
    ...\\nAnswer:`, the context cut to fit max_seq_len as in training), its gold answers, and its id. A
    question training would skip as too long is skipped here too."""
    examples, _ = squad.build_examples(records, tokenizer, max_seq_len)
    by_id = {record.id: record for record in records}
    prompts, golds, ids = [], [], []
    for example in examples:
        answer_begins = next(i for i, label in enumerate(example.labels) if label != squad.IGNORE_INDEX)
        prompts.append(example.input_ids[:answer_begins])
        record = by_id[example.id]
        golds.append(list(record.gold_answers or (record.answer,)))
        ids.append(record.id)
    return prompts, golds, ids


def evaluate(
    model: Any,
    tokenizer: Any,
    config: RunConfig,
    records: list[squad.Record],
    device: torch.device,
    limit: int | None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """EM and F1 of greedy answers to `records` (the first `limit`, else eval.squad_samples), decoded
    `batch_size` at a time (else eval.squad_batch_size)."""
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    count = limit if limit is not None else config.eval.squad_samples
    prompts, golds, ids = prompts_for(records[:count], tokenizer, config.max_seq_len)
    with cudnn_attention_allowed(device, use_cudnn_attention(config.cudnn_attention, "generate")):
        answers, batch_size = generate_answers(
            model,
            tokenizer,
            prompts,
            batch_size or config.eval.squad_batch_size,
            config.eval.squad_max_new_tokens,
            device,
        )
    result = score(answers, golds)
    seconds = time.perf_counter() - started
    return {
        **result,
        "seconds": seconds,
        "batch_size": batch_size,
        "questions_per_second": result["questions"] / seconds if seconds else None,
        "peak_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "examples": [{"answer": answer, "gold": gold} for answer, gold in zip(answers[:5], golds[:5])],
        "predictions": prediction_rows(ids, answers, golds),
    }


def store_scores(
    db: Database, run_id: str, step: int, attempt: int | None, plan: Plan, result: dict[str, Any], data: str
) -> None:
    """Two rows (exact_match, f1) in squad_scores, and a `squad_eval` event."""
    if attempt is None:
        attempt = queries.last_attempt_number(db, run_id)
    common = {
        "run_id": run_id,
        "step": step,
        "attempt": attempt,
        "plan": plan.describe(),
        "questions": result["questions"],
        "seconds": result["seconds"],
        "data": data,
        "wall_time": time.time(),
    }
    db.insert_squad_scores([{**common, "metric": metric, "value": result[metric]} for metric in ("exact_match", "f1")])
    db.event(
        run_id,
        "squad_eval",
        f"SQuAD EM {result['exact_match']:.3f}, F1 {result['f1']:.3f} on {result['questions']} "
        f"{data} questions at step {step} ({result['seconds']:.1f} s)",
        attempt=attempt,
        step=step,
        exact_match=result["exact_match"],
        f1=result["f1"],
        questions=result["questions"],
        data=data,
        batch_size=result["batch_size"],
    )


def write_predictions(path: Path, summary: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    """`tamer eval --predictions FILE`: what was asked and every reply, with its gold answers and scores, as one
    JSON object (its first key is tamer's signature, so a later `--predictions` may replace it; tamer/outputs.py)."""
    result = summary["eval"]
    document = {
        "tamer": "eval predictions",
        "run_id": summary["run_id"],
        "step": summary["step"],
        "plan": summary["plan"],
        "data": result["data"],
        "exact_match": result["exact_match"],
        "f1": result["f1"],
        "questions": result["questions"],
        "predictions": predictions,
    }
    data = json.dumps(document, indent=1, ensure_ascii=False).encode()
    outputs.write_file_atomic(path, data, "write the predictions")


def evaluate_during_training(attempt: Attempt, model: Any, tokenizer: Any) -> None:
    """`eval.squad_every`: score `model` (the one being trained) in the training child, between steps. One
    process only: under DDP/FSDP the ranks would have to decode together, so it is skipped there (the
    end-of-run pass still runs)."""
    if attempt.group.distributed:
        if attempt.state.step == attempt.config.eval.squad_every:
            attempt.report.event(
                "squad_eval_skipped",
                "eval.squad_every: SQuAD evaluation during training runs in one process only; "
                "the run is scored once it ends",
            )
        return
    attempt.report.beat("eval")
    _, held_out = squad.load_train_and_eval(attempt.config.data, attempt.config.eval_samples, attempt.config.seed)
    model.eval()
    cache_setting = model.config.use_cache
    model.config.use_cache = True
    try:
        with attempt.autocast():
            result = evaluate(model, tokenizer, attempt.config, held_out, attempt.device, None)
    finally:
        model.config.use_cache = cache_setting
        model.train()
    store_scores(attempt.report.db, attempt.run_id, attempt.state.step, attempt.number, attempt.plan, result, HELD_OUT)
    attempt.report.beat("between_steps")


def evaluate_data(
    db: Database,
    run_id: str,
    config: RunConfig,
    trained: Trained,
    tokenizer: Any,
    device: torch.device,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """chat, instruct, text: the validation loss (an event), and EM/F1 of replies when asked (stored as SQuAD's are)."""
    prepared = prepare.prepare(config) if args.data is None else prepare.prepare_file(config, args.data)
    label = HELD_OUT if args.data is None else args.data
    if not prepared.evaluation:
        raise DataError("nothing to evaluate: the run holds out no validation rows (eval_samples 0); pass --data FILE")
    step = trained.checkpoint.step
    loss = data_eval.validation_loss(
        trained.model, prepared.evaluation, tokenizer.pad_token_id, config, device, args.batch_size
    )
    db.event(
        run_id,
        "validation",
        f"validation loss {loss['eval_loss']:.4f} on {loss['eval_samples']} {label} examples at step {step} "
        f"({loss['seconds']:.1f} s)",
        step=step,
        data=label,
        **loss,
    )
    result = {**loss, "data": label}
    if args.em_f1 or config.eval.em_f1 or args.predictions is not None:
        if config.recipe == "text":
            raise ConfigError("--em-f1: scores chat and instruct replies; the text recipe has only the validation loss")
        scores = data_eval.em_f1(trained.model, tokenizer, config, prepared, device, args.limit, args.batch_size)
        store_scores(db, run_id, step, None, trained.plan, scores, label)
        result.update(scores)
    return result


# ---------------------------------------------------------------------------------------------
# Export


def export(
    trained: Trained, tokenizer: Any, destination: Path, dtype: str, merge: bool, card: str, run_id: str
) -> dict[str, Any]:
    """Write the model folder into a fresh hidden folder beside `destination`, then one rename (tamer/outputs.py:
    only an earlier tamer export or an empty folder is ever replaced); nothing is left behind on a failure."""
    from transformers import GenerationConfig

    started = time.perf_counter()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tamer-tmp-", dir=destination.parent))
    except OSError as error:
        raise outputs.os_problem(error, destination, "create the export folder") from None
    try:
        adapter_only = trained.adapter is not None and not merge
        if adapter_only:
            # The checkpoint's adapter as trained, its config pointing at the base it was trained on.
            for file in trained.adapter.iterdir():
                shutil.copy2(file, tmp / file.name)
            adapter_config = json.loads((tmp / "adapter_config.json").read_text())
            adapter_config["base_model_name_or_path"] = trained.base
            (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        else:
            trained.model.config.use_cache = True  # training turned the KV cache off
            trained.model.to(DTYPES[dtype]).save_pretrained(tmp, safe_serialization=True)
        GenerationConfig(
            max_new_tokens=32,
            do_sample=False,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / outputs.EXPORT_MARKER).write_text(
            json.dumps({"run_id": run_id, "step": trained.checkpoint.step, "time": time.time()})
        )
        tmp.chmod(0o755)  # mkdtemp makes it private; an export is an ordinary folder
        outputs.replace_folder(tmp, destination)
    except OSError as error:
        raise outputs.os_problem(error, destination, "write the export") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours alone (mkdtemp); gone once renamed
    size = sum(file.stat().st_size for file in destination.rglob("*") if file.is_file())
    return {
        "path": str(destination),
        "dtype": None if adapter_only else dtype,
        "adapter_only": adapter_only,
        "bytes": size,
        "seconds": time.perf_counter() - started,
        "step": trained.checkpoint.step,
    }


def model_card(
    db: Database,
    run_id: str,
    config: RunConfig,
    trained: Trained,
    dtype: str,
    merge: bool,
    scores: dict[str, Any] | None,
) -> str:
    """README.md of the export: what was trained, on what, under which plans and why, and how well."""
    run = db.run(run_id)
    attempts = db.attempts(run_id)
    task = "SQuAD" if config.recipe == "squad" else f"{config.recipe} data"
    data, held_out = _data_described(config)
    lines = [
        f"# {run_id}: {config.model} fine-tuned on {task} by tamer",
        "",
        f"- Base model: `{config.model}`" + (" (random init)" if config.init == "random" else ""),
        f"- Data: {data}; held out for evaluation: {held_out}",
        f"- Steps: {trained.checkpoint.step} of {run['total_steps']} (effective batch {config.effective_batch_size}, "
        f"peak learning rate {config.learning_rate_for(trained.plan):g}, max sequence {config.max_seq_len} tokens)",
        f"- Checkpoint: `{trained.checkpoint.path}`",
        "",
        "## Plans",
        "",
    ]
    for attempt in attempts:
        lines.append(
            f"- attempt {attempt['attempt']}: {attempt['plan_summary']} ({attempt['outcome'] or 'running'}); "
            f"why: {attempt['reason'] or '-'}"
        )
    if trained.adapter is not None:
        how = "merged into the base weights" if merge else f"kept as an adapter; the base is `{trained.base}`"
        if trained.plan.quantization and merge:
            how += f" (the base trained as {trained.plan.quantization}; the merge uses its unquantized weights)"
        lines += ["", f"LoRA adapter (r={config.lora.r}, alpha={config.lora.alpha}): {how}."]
    if merge or trained.adapter is None:
        lines += ["", f"Weights: {dtype}."]
        if trained.plan.weights_dtype == "fp32" and dtype != "fp32":
            lines[-1] += (
                f" Training kept fp32 master weights; this export rounds them to {dtype} "
                "(`tamer export RUN --dtype fp32` keeps the exact trained values)."
            )
    lines += ["", "## Evaluation", ""]
    if scores:
        lines.append(
            f"{'SQuAD v1.1' if config.recipe == 'squad' else 'Exact match and F1 (SQuAD v1.1 scoring)'} by greedy generation "
            f"on {scores['questions']} {scores['data']} {'questions' if config.recipe == 'squad' else 'validation rows'}: "
            f"exact match {scores['exact_match']:.3f}, F1 {scores['f1']:.3f} (step {scores['step']})."
        )
    elif config.recipe != "squad" and run["final_eval_loss"] is not None:
        lines.append(f"Validation loss {run['final_eval_loss']:.4f} (the last one training recorded).")
    else:
        lines.append("Not evaluated yet: `tamer eval " + run_id + "`.")
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(FOLDER)",
        "tokenizer = AutoTokenizer.from_pretrained(FOLDER)",
        *USE[config.recipe],
        "```",
        "",
    ]
    return "\n".join(lines)


USE = {
    "squad": [
        'prompt = "Context: ...\\nQuestion: ...\\nAnswer:"',
        "answer = model.generate(**tokenizer(prompt, return_tensors='pt'), max_new_tokens=32)",
    ],
    "chat": [
        'ids = tokenizer.apply_chat_template([{"role": "user", "content": "..."}], add_generation_prompt=True, return_tensors="pt")',
        "reply = model.generate(ids, max_new_tokens=128)  # rendered with the chat template it trained with",
    ],
    "instruct": [
        'prompt = "### Instruction:\\n...\\n\\n### Response:\\n"  # the prompt_template it trained with',
        "completion = model.generate(**tokenizer(prompt, return_tensors='pt'), max_new_tokens=128)",
    ],
    "text": ["text = model.generate(**tokenizer('...', return_tensors='pt'), max_new_tokens=128)"],
}
"""The model card's example, by recipe."""


def _data_described(config: RunConfig) -> tuple[str, str]:
    """(what the run trained on, what it held out for validation) in the model card's words."""
    if config.recipe == "squad":
        data = {None: "rajpurkar/squad (hub, train split)", "bundled": "the SQuAD v1.1 slice bundled with tamer"}.get(
            config.data, config.data
        )
        return data, (
            f"{config.eval_samples} seeded picks (seed {config.seed}) of the "
            + ("validation split" if config.data is None else "questions")
            + ", never trained on"
        )
    data = f"the {config.recipe} sample bundled with tamer" if config.data == "bundled" else f"`{config.data}`"
    if config.eval_data is not None:
        return data, f"`{config.eval_data}`"
    share = (
        f"{config.validation_split:.0%} of its rows"
        if config.validation_split is not None
        else f"{config.eval_samples} rows"
    )
    return data, f"{share} (seeded picks, seed {config.seed}), never trained on"


def last_scores(db: Database, run_id: str, step: int) -> dict[str, Any] | None:
    rows = [row for row in db.squad_scores(run_id) if row["step"] == step]
    if not rows:
        return None
    latest = {row["metric"]: row for row in rows}
    any_row = next(iter(latest.values()))
    return {
        "exact_match": latest.get("exact_match", {}).get("value"),
        "f1": latest.get("f1", {}).get("value"),
        "questions": any_row["questions"],
        "data": any_row["data"],
        "step": step,
    }


# ---------------------------------------------------------------------------------------------
# The command


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(prog="python -m tamer.engine.result")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int)
    parser.add_argument("--eval", action="store_true", dest="evaluate")
    parser.add_argument("--em-f1", action="store_true", dest="em_f1")
    parser.add_argument("--export", type=Path, dest="export_dir")
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--predictions", type=Path)
    parser.add_argument("--merge-lora", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--dtype", choices=["auto", *DTYPES])
    parser.add_argument("--result", type=Path)
    args = parser.parse_args(argv)
    try:
        summary = produce(args)
    except TamerError as error:
        sys.stderr.write(f"error: {error}\n")
        return error.exit_code
    if args.result:
        checkpoints.write_json_atomic(args.result, summary)
    return 0


def produce(args: argparse.Namespace) -> dict[str, Any]:
    spec, config = run_config(args.run_dir)
    if args.predictions is not None and config.recipe == "text":
        raise ConfigError("--predictions: the text recipe has no replies to keep, only the validation loss")
    if config.torch_threads:  # the run's thread count, as in training (fixed when the run was created)
        torch.set_num_threads(config.torch_threads)
    run_id = spec["run_id"]
    db = Database(spec["db_path"], create=False)
    checkpoint = find_checkpoint(args.run_dir, args.step)
    if args.export_dir is not None and checkpoint.step == 0 and args.step is None:
        raise StateError(
            f"run {run_id} has not trained a step: its only checkpoint, step 0, holds the weights it started "
            f"from; train it first (tamer resume {run_id}), or pass --step 0 to export those anyway"
        )
    plan = Plan.from_dict(checkpoint.manifest["plan"])
    merge = config.export.merge_lora if args.merge_lora is None else args.merge_lora
    dtype = export_dtype(args.dtype or config.export.dtype, plan)
    device = pick_device(config)
    # Evaluate what is exported, except on CPU where bf16 matmuls are slow: there, in fp32.
    working_dtype = DTYPES[dtype] if device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(config)
    trained = load_trained(args.run_dir, config, checkpoint, device, working_dtype, merge=True)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "step": checkpoint.step,
        "plan": plan.describe(),
        "device": str(device),
    }
    if args.evaluate and config.recipe == "squad":
        records, label = evaluation_records(config, args.data)
        result = evaluate(trained.model, tokenizer, config, records, device, args.limit, args.batch_size)
        store_scores(db, run_id, checkpoint.step, None, plan, result, label)
        summary["eval"] = {**result, "data": label}
    elif args.evaluate:
        summary["eval"] = evaluate_data(db, run_id, config, trained, tokenizer, device, args)
    if args.evaluate:
        predictions = summary["eval"].pop("predictions", None)
        if args.predictions is not None and predictions is not None:
            write_predictions(args.predictions, summary, predictions)
            summary["eval"]["predictions_file"] = str(args.predictions)
    if args.export_dir is not None:
        card = model_card(db, run_id, config, trained, dtype, merge, last_scores(db, run_id, checkpoint.step))
        exported = export(trained, tokenizer, args.export_dir, dtype, merge, card, run_id)
        db.event(
            run_id,
            "export",
            f"exported step {checkpoint.step} to {exported['path']} "
            f"({'adapter' if exported['adapter_only'] else exported['dtype']}, {exported['bytes'] / 1e6:.1f} MB, "
            f"{exported['seconds']:.1f} s)",
            **exported,
        )
        summary["export"] = exported
    db.close()
    return summary


if __name__ == "__main__":
    sys.exit(main())
