"""What compiling LoRA-wrapped decoder layers costs at the first step: plain vs LoRA, compiled vs eager.

    python bench/compile_cost.py plain-eager plain-compiled lora-eager lora-compiled lora-compiled-one-graph

Each mode runs in its own process with a fresh inductor cache (a warm cache would hide the compile), on a
random model of SmolLM2-135M's shape (30 layers, hidden 576; tamer's `compile_layers`: each decoder layer
compiled with dynamic shapes), LoRA as tamer builds it (r 16, all seven projections, dropout 0.05): the
seconds of the first forward+backward of one 256-token sequence, of the three after it, and Dynamo's unique
graphs and captured operations. `lora-compiled` is what `compile: true` did before the first layer's input was made
to require a gradient; `lora-compiled-one-graph` is what it does now. Runs on a CPU (inductor's C++ backend) or a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("plain-eager", "plain-compiled", "lora-eager", "lora-compiled", "lora-compiled-one-graph")


def measure(mode: str) -> dict:
    import torch
    import torch._dynamo
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters
    from transformers import LlamaConfig, LlamaForCausalLM

    from tamer.engine.model import decoder_layers

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            tie_word_embeddings=True,
        )
    )
    model.config.use_cache = False
    if mode.startswith("lora"):
        model = get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                task_type="CAUSAL_LM",
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            ),
        )
        if mode.endswith("one-graph"):
            model.enable_input_require_grads()
    model.to(device).train()
    if "compiled" in mode:
        torch._dynamo.config.suppress_errors = True
        for layer in decoder_layers(model):
            layer.compile(dynamic=True)
    ids = torch.randint(0, 49152, (1, 256), device=device)
    seconds = []
    for _ in range(4):
        started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return {
        "mode": mode,
        "device": device,
        "first_step": seconds[0],
        "next_steps": seconds[1:],
        "unique_graphs": counters["stats"]["unique_graphs"],
        "operations_captured": counters["stats"]["calls_captured"],
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])))
        return
    modes = sys.argv[1:] or list(MODES)
    print("| mode | first step s | next steps s | graphs | operations |\n|---|---|---|---|---|")
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"error: unknown mode {mode}; choose from {', '.join(MODES)}")
        with tempfile.TemporaryDirectory(prefix="tamer-compile-") as cache:
            environment = {
                **os.environ,
                "TORCHINDUCTOR_CACHE_DIR": cache,
                "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
            }
            finished = subprocess.run(
                [sys.executable, __file__, "--one", mode], capture_output=True, text=True, env=environment
            )
        if finished.returncode:
            raise SystemExit(f"{mode} failed:\n{finished.stderr[-2000:]}")
        row = json.loads(finished.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {row['first_step']:.1f} | {' '.join(f'{s:.2f}' for s in row['next_steps'])} | {row['unique_graphs']} | "
            f"{row['operations_captured']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
