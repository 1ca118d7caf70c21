"""Why a packed row of a length not seen before costs more: forward+backward of the 1B model's decoder, built
as tamer builds it (fp32 weights, bf16 autocast, checkpointing on the first k layers, compiled layers with
dynamic shapes), on packed rows of a sequence of lengths with repeats, each timed with CUDA sync, with
dynamo's recompilation count after each call.

    python bench/new_length.py --model /tmp/llama1b [--checkpointed 8] [--lengths 1920,1984,1920,2048,...]
    TORCH_LOGS=recompiles python bench/new_length.py ...   # and why each recompilation happened
    python bench/new_length.py --model /tmp/llama1b --no-compile --profile   # where a new length's time goes
    python bench/new_length.py --model /tmp/llama1b --no-cudnn-attention     # as tamer runs packed rows

Prints one line per call: length, first time seen or not, seconds, recompilations so far, and the caching
allocator's device allocations (cudaMalloc / mapped pages) during the call. With --profile, the first new
and the first seen call of each length after the first are traced (torch.profiler) and the ops whose host
time differs most between a new and a seen length are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpointed", type=int, default=8)
    parser.add_argument("--lengths", default="1920,1920,1984,1984,2048,1920,2112,2112,1856,1984,2176,2240,2176,1920")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--no-cudnn-attention",
        action="store_true",
        help="forbid cuDNN's SDPA kernels (tamer's default for packed rows)",
    )
    parser.add_argument(
        "--fixed-mask",
        action="store_true",
        help="pass a 4-D block-diagonal bool mask built here instead of position-id packing",
    )
    args = parser.parse_args()
    import torch._dynamo.utils
    from transformers import AutoModelForCausalLM

    from tamer.engine.model import checkpoint_only_first, compile_layers

    device = torch.device("cuda", 0)
    if args.no_cudnn_attention:
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    checkpoint_only_first(model, args.checkpointed)
    model.train()
    if not args.no_compile:
        compile_layers(model)
    seen: set[int] = set()
    traced: dict[bool, dict[int, dict[str, tuple[float, int]]]] = {True: {}, False: {}}
    for length in (int(x) for x in args.lengths.split(",")):
        ids = torch.randint(3, 30000, (1, length), device=device)
        positions = (torch.arange(length, device=device) % 213).unsqueeze(0)  # samples of ~213 tokens, packed
        extra = {}
        if args.fixed_mask:
            sample = torch.arange(length, device=device) // 213
            causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            extra["attention_mask"] = (causal & (sample[:, None] == sample[None, :]))[None, None]
        new = length not in seen
        profiling = args.profile and len(seen) > 0 and length not in traced[new]
        torch.cuda.synchronize()
        allocations = torch.cuda.memory_stats().get("num_device_alloc", 0)
        profiler = _profiler() if profiling else contextlib.nullcontext()
        began = time.perf_counter()
        with profiler as prof:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                hidden = model.model(input_ids=ids, position_ids=positions, **extra).last_hidden_state
            hidden.float().pow(2).mean().backward()
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        allocations = torch.cuda.memory_stats().get("num_device_alloc", 0) - allocations
        model.zero_grad(set_to_none=True)
        frames = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
        print(
            f"length {length:5d} {'new ' if new else 'seen'} {seconds:7.3f} s  unique graphs so far {frames}"
            f"  device allocations {allocations}",
            flush=True,
        )
        if profiling:
            traced[new][length] = _host_times(prof)
        seen.add(length)
    if args.profile:
        _compare(traced)


def _profiler():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])


def _host_times(prof) -> dict[str, tuple[float, int]]:
    """Self host time (s) and calls per op name, CUDA runtime / driver calls included."""
    return {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}


def _compare(traced: dict[bool, dict[int, dict[str, tuple[float, int]]]]) -> None:
    """Mean self host time per op over the traced new lengths minus over the traced seen ones: the top 25."""

    def mean(runs: dict[int, dict[str, tuple[float, int]]]) -> dict[str, tuple[float, float]]:
        names = {name for run in runs.values() for name in run}
        return {
            name: (
                sum(run.get(name, (0.0, 0))[0] for run in runs.values()) / len(runs),
                sum(run.get(name, (0.0, 0))[1] for run in runs.values()) / len(runs),
            )
            for name in names
        }

    if not traced[True] or not traced[False]:
        print("profile: need at least one traced new and one traced seen length")
        return
    new, old = mean(traced[True]), mean(traced[False])
    rows = sorted(new, key=lambda name: new[name][0] - old.get(name, (0.0, 0.0))[0], reverse=True)
    print(
        f"profile: {len(traced[True])} new lengths vs {len(traced[False])} seen; self host seconds per call "
        f"(new / seen) and op calls (new / seen), largest differences first"
    )
    for name in rows[:25]:
        n, o = new[name], old.get(name, (0.0, 0.0))
        print(f"  {n[0] - o[0]:+8.4f}  {n[0]:8.4f} / {o[0]:8.4f}  calls {n[1]:7.0f} / {o[1]:7.0f}  {name[:90]}")


if __name__ == "__main__":
    main()
