"""Where one optimizer step of the planner's 1B plan goes, by batch layout, checkpointed layers and optimizer.

    python bench/step_anatomy.py --gpu-mem-cap 15GiB [--iters 20] [--out DIR]
    python bench/step_anatomy.py --preset tiny --device cpu --iters 3        # plumbing check

The model is built in place with random weights (fp32 master weights, the planner's full fine-tune plan:
bf16 autocast, answer-only loss through tamer's SupervisedLoss), under the memory cap. The 8 samples of a
step are real SQuAD examples of the bundled slice (tamer's own prompt and tokenizer), so lengths are
realistic. Each row is the median over --iters timed repetitions after 3 warm-ups, timed with CUDA events:

- forward+backward of the 8 samples laid out as: padded to 512 (8 x 512), padded to the batch's longest,
  bucketed (padded to the next multiple of 64), and packed into one row (position ids restarted per sample,
  no attention across samples, no padding);
- packed, with activation checkpointing on k of the 16 decoder layers;
- clip_grad_norm_ + optimizer.step for bitsandbytes PagedAdamW8bit and AdamW8bit.
Prints a markdown table; --out writes anatomy.json. An OOM in one row is reported as OOM, not fatal.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from tamer.config import PRESETS
from tamer.engine.collate import pad_batch
from tamer.engine.loss import SupervisedLoss
from tamer.recipes import squad
from tamer.units import parse_size


def timed(device: torch.device, fn, iters: int) -> float:
    """Median seconds of fn() over iters runs after 3 warm-ups."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def layouts(examples: list[squad.Example], pad_id: int) -> dict[str, list[dict[str, torch.Tensor]]]:
    """The same samples as one micro-batch in each layout (a list of micro-batches each)."""
    longest = max(len(e.input_ids) for e in examples)
    out = {
        "padded 8 x 512": [pad_batch(examples, pad_id, 512)],
        f"padded to longest (8 x {longest})": [pad_batch(examples, pad_id, None)],
        f"bucket of 64 (8 x {-(-longest // 64) * 64})": [pad_batch(examples, pad_id, -(-longest // 64) * 64)],
    }
    ids, labels, positions = [], [], []
    for example in examples:
        ids += list(example.input_ids)
        labels += list(example.labels)
        positions += list(range(len(example.input_ids)))
    out[f"packed (1 x {len(ids)})"] = [
        {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([positions])}
    ]
    return {
        name: [{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)} for batch in batches]
        for name, batches in out.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--gpu-mem-cap", default=None)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd decoder layers")
    parser.add_argument("--skip-eager", action="store_true", help="skip the selective-checkpointing rows")
    args = parser.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda" and args.gpu_mem_cap:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(parse_size(args.gpu_mem_cap) / total, device)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[args.preset]["architecture"])
    config._attn_implementation = "sdpa"
    with device:  # random init on the device: seconds, not a minute on the host
        model = LlamaForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    loss_module = SupervisedLoss(model, 1024)
    tokenizer = squad.load_tokenizer("bundled", "tiny")
    records, _ = squad.load_train_and_eval("bundled", 0, 0)
    examples, _ = squad.build_examples(random.Random(0).sample(records, 8), tokenizer, 512)
    supervised = sum(squad.answer_token_count(e) for e in examples)
    rows: list[dict] = []

    def fwd_bwd(batches):
        def run():
            for batch in batches:
                moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    summed = forward(moved)
                (summed / supervised).backward()

        return run

    def forward(batch):
        if "position_ids" in batch:  # packed: no attention mask, transformers masks across samples by position ids
            import torch.nn.functional as F

            from tamer.engine.loss import _causal_lm

            lm = _causal_lm(model)
            hidden = lm.model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).last_hidden_state
            targets = batch["labels"][:, 1:]
            mask = targets != -100
            # the next token of a sample's last position belongs to the next sample: its label is -100 there anyway
            return F.cross_entropy(lm.lm_head(hidden[:, :-1][mask]).float(), targets[mask], reduction="sum")
        return loss_module(**batch)

    def record(name: str, fn, tokens: int | None = None) -> None:
        try:
            seconds = timed(device, fn, args.iters)
            peak = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
            rows.append({"what": name, "seconds": seconds, "tokens": tokens, "peak_reserved_gib": peak})
        except torch.OutOfMemoryError:
            rows.append({"what": name, "seconds": None, "tokens": tokens, "peak_reserved_gib": None})
        model.zero_grad(set_to_none=False)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        print(rows[-1], flush=True)

    for parameter in model.parameters():  # gradients exist from the start, as in training
        parameter.grad = torch.zeros_like(parameter)
    useful = sum(len(e.input_ids) for e in examples)
    for name, batches in layouts(examples, tokenizer.pad_token_id).items():
        computed = sum(int(b["input_ids"].numel()) for b in batches)
        record(f"fwd+bwd, all layers checkpointed, {name}", fwd_bwd(batches), computed)
    packed = [b for n, b in layouts(examples, tokenizer.pad_token_id).items() if n.startswith("packed")][0]
    layers = list(model.model.layers)
    for k in () if args.skip_eager else (len(layers) // 2, len(layers) // 4, 0):
        for index, layer in enumerate(layers):
            layer.gradient_checkpointing = index < k
        record(f"fwd+bwd, packed, {k} of {len(layers)} layers checkpointed", fwd_bwd(packed), useful)
    for layer in layers:
        layer.gradient_checkpointing = True
    if args.compile:
        began = time.perf_counter()
        for layer in layers:
            layer.compile(dynamic=False)
        named = layouts(examples, tokenizer.pad_token_id)
        for name, batches in named.items():
            if name.startswith("padded to longest"):
                continue
            began = time.perf_counter()
            fwd_bwd(batches)()
            if device.type == "cuda":
                torch.cuda.synchronize()
            print(f"first compiled call ({name}): {time.perf_counter() - began:.1f} s", flush=True)
            record(
                f"fwd+bwd, compiled layers, all checkpointed, {name}",
                fwd_bwd(batches),
                sum(int(b["input_ids"].numel()) for b in batches),
            )

    if device.type == "cuda":
        import bitsandbytes as bnb

        parameters = [p for p in model.parameters()]
        for label, cls in (("PagedAdamW8bit", bnb.optim.PagedAdamW8bit), ("AdamW8bit", bnb.optim.AdamW8bit)):
            optimizer = cls(parameters, lr=1e-5)

            def step(optimizer=optimizer):
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()

            record(f"clip + {label}.step", step)
            del optimizer, step
            if device.type == "cuda":
                torch.cuda.empty_cache()

        try:
            from torchao.optim import AdamW8bit as AoAdamW8bit
        except ImportError as error:
            print(f"torchao not importable ({error}); its row is skipped")
        else:
            optimizer = AoAdamW8bit(parameters, lr=1e-5)
            began = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            torch.cuda.synchronize()
            print(f"first torchao AdamW8bit step (compiles): {time.perf_counter() - began:.1f} s", flush=True)

            def ao_step(optimizer=optimizer):
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()

            record("clip + torchao AdamW8bit.step", ao_step)
            del optimizer
            torch.cuda.empty_cache()
    print(
        f"\n8 SQuAD samples: {useful} useful tokens, {supervised} supervised; device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    print("| what | seconds (median) | computed tokens | peak reserved GiB |\n|---|---|---|---|")
    for row in rows:
        seconds = f"{row['seconds']:.4f}" if row["seconds"] is not None else "OOM"
        peak = f"{row['peak_reserved_gib']:.1f}" if row["peak_reserved_gib"] is not None else "-"
        print(f"| {row['what']} | {seconds} | {row['tokens'] or '-'} | {peak} |")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "anatomy.json").write_text(json.dumps({"useful_tokens": useful, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
