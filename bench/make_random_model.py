"""Build a Llama model with seeded random weights and save it like a real checkpoint.

    python bench/make_random_model.py OUT_DIR [--preset llama-3.2-1b] [--dtype bf16]
    python bench/make_random_model.py OUT_DIR --preset llama-3.2-3b     # 3.21 B parameters, 6.4 GB in bf16
    python bench/make_random_model.py OUT_DIR --preset llama-3.1-8b     # 8.03 B parameters, 16 GB in bf16

A model of a preset's shape (tamer/presets.py: each one's published config.json) with random weights has the
real model's memory and speed, so GPU benchmarks and escalation runs need no hub access: train it with
`tamer run squad --model OUT_DIR --set tokenizer=bundled` (the planner reads OUT_DIR/config.json).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tamer.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    config = LlamaConfig(**PRESETS[args.preset]["architecture"])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype])
    model.save_pretrained(args.out_dir, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"saved {args.preset} ({params:,} parameters, {args.dtype}) to {args.out_dir} in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
