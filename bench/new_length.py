"""Why a packed row of a length not seen before costs more: forward+backward of the 1B model's decoder, built
as tamer builds it (fp32 weights, bf16 autocast, checkpointing on the first k layers, compiled layers with
dynamic shapes), on packed rows of a sequence of lengths with repeats, each timed with CUDA sync, with
dynamo's recompilation count after each call.

    python bench/new_length.py --model /tmp/llama1b [--checkpointed 8] [--lengths 1920,1984,1920,2048,...]
    TORCH_LOGS=recompiles python bench/new_length.py ...   # and why each recompilation happened

Prints one line per call: length, first time seen or not, seconds, recompilations so far.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpointed", type=int, default=8)
    parser.add_argument("--lengths", default="1920,1920,1984,1984,2048,1920,2112,2112,1856,1984,2176,2240,2176,1920")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    import torch._dynamo.utils
    from transformers import AutoModelForCausalLM

    from tamer.engine.model import checkpoint_only_first, compile_layers

    device = torch.device("cuda", 0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpoint_only_first(model, args.checkpointed)
    model.train()
    if not args.no_compile:
        compile_layers(model)
    seen: set[int] = set()
    for length in (int(x) for x in args.lengths.split(",")):
        ids = torch.randint(3, 30000, (1, length), device=device)
        positions = (torch.arange(length, device=device) % 213).unsqueeze(0)  # samples of ~213 tokens, packed
        torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = model.model(input_ids=ids, position_ids=positions).last_hidden_state
        hidden.float().pow(2).mean().backward()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        model.zero_grad(set_to_none=True)
        frames = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
        print(f"length {length:5d} {'new ' if length not in seen else 'seen'} {seconds:7.3f} s  unique graphs so far {frames}",
              flush=True)
        seen.add(length)


if __name__ == "__main__":
    main()
