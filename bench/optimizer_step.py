"""What the optimizer step of the planner's 1B plan costs: bitsandbytes' kernels vs tamer's Triton step.

    python bench/optimizer_step.py [--iters 20] [--out DIR]          # on the GPU machine
    python bench/optimizer_step.py --preset tiny --iters 3            # plumbing check (CPU if no CUDA)

bitsandbytes (0.45-0.50) synchronizes the device after every parameter's update kernel
(`Optimizer8bit.step` -> `sync_gpu(p)`: 146 waits per step on a 1B model). `unsynced` below runs the same
kernels in the same order without those waits, to measure what they cost. Answer on an H200
(bench/results/optimizer-step-h200-2026-12-03.md): little; the kernels themselves take ~35 ms (tamer's
Triton step: ~16 ms, bench/results/throughput-h200-2026-12-03.md). The
model is the preset's shape with fp32 master weights built on the device, gradients random (fixed seed).
Per row: median device time of the call (CUDA events, after 3 warm-ups) and host time until the call
returns. Then a bit-identity check: two copies of the same weights and moments stepped 3 times with
the same gradients by each flavour must be torch.equal (weights and 8-bit moments). No memory cap: the
cap changes what fits, not how fast a kernel runs. Prints a markdown table; --out writes optimizer.json.

tamer's Triton step (tamer/engine/adamw8bit.py) is timed alone and as the trainer runs it (total norm +
clipping factor handed to the kernel, vs clip_grad_norm_ + bitsandbytes' step), with a sweep over its launch
shape (quantisation blocks per program x warps), and checked against bitsandbytes after 3 steps: weight
difference in units of one step's largest update, share of 8-bit codes that differ, and each one's distance
from exact fp32 AdamW (torch.optim.AdamW) from the same start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tamer.config import PRESETS
from tamer.engine import adamw8bit


def unsynced(paged: bool) -> type[torch.optim.Optimizer]:
    """bitsandbytes' (paged) AdamW8bit whose step does not synchronize after every tensor (the paged
    flavour once at the end, as bitsandbytes does): same kernels, same order, same stream."""
    import bitsandbytes as bnb

    base = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit

    class Unsynced(base):  # type: ignore[misc, valid-type]
        @torch.no_grad()
        def step(self, closure=None):  # noqa: ANN001, ANN201
            if not self.initialized:
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            last = None
            for gindex, group in enumerate(self.param_groups):
                for pindex, parameter in enumerate(group["params"]):
                    if parameter.grad is None:
                        continue
                    if len(self.state[parameter]) == 0:
                        self.init_state(group, parameter, gindex, pindex)
                    self.prefetch_state(parameter)
                    self.update_step(group, parameter, gindex, pindex)
                    last = parameter
            if self.is_paged and last is not None and last.device.type == "cuda":
                torch.cuda.synchronize(last.device)

    return Unsynced


def timed(device: torch.device, fn, iters: int) -> tuple[float, float]:
    """(median device seconds, median host seconds until fn returns) over iters runs after 3 warm-ups."""
    for _ in range(3):
        fn()
    device_times, host_times = [], []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            began = time.perf_counter()
            fn()
            host_times.append(time.perf_counter() - began)
            end.record()
            torch.cuda.synchronize(device)
            device_times.append(start.elapsed_time(end) / 1000)
        else:
            began = time.perf_counter()
            fn()
            host_times.append(time.perf_counter() - began)
            device_times.append(host_times[-1])
    return statistics.median(device_times), statistics.median(host_times)


def three_steps(
    cls: type[torch.optim.Optimizer], parameters: list[torch.nn.Parameter], originals: list[torch.Tensor]
) -> torch.optim.Optimizer:
    """The weights reset to `originals`, then three steps (lr 1e-3, weight decay 0.01) of a fresh `cls` with
    the gradients the parameters hold; returns the optimizer."""
    with torch.no_grad():
        for parameter, original in zip(parameters, originals):
            parameter.copy_(original)
    optimizer = cls(parameters, lr=1e-3, weight_decay=0.01)
    for _ in range(3):
        optimizer.step()
    return optimizer


def sweep(device: torch.device, parameters: list[torch.nn.Parameter], iters: int) -> list[dict]:
    """The Triton step (not paged) at each launch shape; the module's defaults are restored after."""
    rows = []
    defaults = adamw8bit.BLOCKS_PER_PROGRAM, adamw8bit.NUM_WARPS
    for blocks in (1, 2, 4, 8):
        for warps in (2, 4, 8):
            adamw8bit.BLOCKS_PER_PROGRAM, adamw8bit.NUM_WARPS = blocks, warps
            optimizer = adamw8bit.triton_adamw8bit(False)(parameters, lr=1e-5, weight_decay=0.0)
            seconds, host = timed(device, optimizer.step, iters)
            rows.append(
                {
                    "what": f"sweep: Triton AdamW8bit, {blocks} blocks x {warps} warps",
                    "device_s": seconds,
                    "host_s": host,
                }
            )
            print(rows[-1], flush=True)
            del optimizer
            torch.cuda.empty_cache()
    adamw8bit.BLOCKS_PER_PROGRAM, adamw8bit.NUM_WARPS = defaults
    return rows


def clip_and_step(device: torch.device, parameters: list[torch.nn.Parameter], iters: int) -> list[dict]:
    """What the trainer runs per step: clipping + the paged 8-bit step, bitsandbytes' way and tamer's."""
    import bitsandbytes as bnb

    from tamer.engine.optim import clip_gradients

    rows = []
    saved = [p.grad.clone() for p in parameters]
    for name, cls in (
        ("clip_grad_norm_ + bitsandbytes PagedAdamW8bit", bnb.optim.PagedAdamW8bit),
        ("clip factor in the kernel + tamer Triton PagedAdamW8bit", adamw8bit.triton_adamw8bit(True)),
    ):
        optimizer = cls(parameters, lr=1e-5, weight_decay=0.0)

        def step() -> None:  # timed within this iteration, before `optimizer` is deleted
            clip_gradients(optimizer, parameters, 1.0)  # noqa: B023, F821
            optimizer.step()  # noqa: B023, F821

        seconds, host = timed(device, step, iters)
        rows.append({"what": name, "device_s": seconds, "host_s": host})
        print(rows[-1], flush=True)
        del optimizer
        torch.cuda.empty_cache()
        for parameter, grad in zip(parameters, saved):
            parameter.grad.copy_(grad)
    return rows


def compare_with_bitsandbytes(parameters: list[torch.nn.Parameter]) -> dict:
    """Three steps (lr 1e-3, weight decay 0.01) from the same weights with the same gradients by
    bitsandbytes' AdamW8bit, tamer's Triton AdamW8bit and torch's fp32 AdamW."""
    import bitsandbytes as bnb

    originals = [p.detach().clone() for p in parameters]
    finals, codes = {}, {}
    for name, cls in (
        ("bitsandbytes", bnb.optim.AdamW8bit),
        ("triton", adamw8bit.triton_adamw8bit(False)),
        ("fp32", torch.optim.AdamW),
    ):
        optimizer = three_steps(cls, parameters, originals)
        finals[name] = [p.detach().clone() for p in parameters]
        codes[name] = [
            optimizer.state[p]["state1"].clone()
            for p in parameters
            if optimizer.state[p].get("state1", torch.empty(0)).dtype == torch.uint8
        ]
        del optimizer
    with torch.no_grad():
        for parameter, original in zip(parameters, originals):
            parameter.copy_(original)

    def largest(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return max(float((x - y).abs().max()) for x, y in zip(a, b)) / 1e-3

    def mean(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return sum(float((x - y).abs().sum()) for x, y in zip(a, b)) / sum(x.numel() for x in a) / 1e-3

    differing = sum(int((x != y).sum()) for x, y in zip(codes["bitsandbytes"], codes["triton"]))
    return {
        "triton_vs_bnb_max_lr_units": largest(finals["triton"], finals["bitsandbytes"]),
        "triton_vs_bnb_mean_lr_units": mean(finals["triton"], finals["bitsandbytes"]),
        "bnb_vs_fp32_mean_lr_units": mean(finals["bitsandbytes"], finals["fp32"]),
        "triton_vs_fp32_mean_lr_units": mean(finals["triton"], finals["fp32"]),
        "first_moment_codes_differing": differing / sum(x.numel() for x in codes["triton"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-3.2-1b", choices=sorted(PRESETS))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import bitsandbytes as bnb
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(LlamaConfig(**PRESETS[args.preset]["architecture"]))
    parameters = list(model.parameters())
    generator = torch.Generator(device).manual_seed(1)
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, device=device, generator=generator) * 1e-3
    count = sum(p.numel() for p in parameters)
    flavours = {
        "bitsandbytes AdamW8bit": bnb.optim.AdamW8bit,
        "AdamW8bit without the per-tensor sync": unsynced(False),
        "bitsandbytes PagedAdamW8bit": bnb.optim.PagedAdamW8bit,
        "PagedAdamW8bit without the per-tensor sync": unsynced(True),
    }
    rows = []
    if device.type == "cuda" and adamw8bit.unavailable(device) is None:
        flavours["tamer Triton AdamW8bit"] = adamw8bit.triton_adamw8bit(False)
        flavours["tamer Triton PagedAdamW8bit"] = adamw8bit.triton_adamw8bit(True)
        every = type("Prefetching", (adamw8bit.triton_adamw8bit(True),), {"prefetch_every_step": True})
        flavours["tamer Triton PagedAdamW8bit, prefetching every step"] = every
        rows += sweep(device, parameters, args.iters)
        rows += clip_and_step(device, parameters, args.iters)
        closeness = compare_with_bitsandbytes(parameters)
        print(closeness, flush=True)
    else:
        closeness = {}
    seconds, host = timed(device, lambda: torch.nn.utils.clip_grad_norm_(parameters, 1.0), args.iters)
    rows.append({"what": "clip_grad_norm_ (foreach)", "device_s": seconds, "host_s": host})
    for name, cls in flavours.items():
        optimizer = cls(parameters, lr=1e-5, weight_decay=0.0)
        seconds, host = timed(device, optimizer.step, args.iters)
        rows.append({"what": f"{name}.step", "device_s": seconds, "host_s": host})
        print(rows[-1], flush=True)
        del optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()

    identical = {}
    originals = [p.detach().clone() for p in parameters]
    for paged in (False, True):
        stock = bnb.optim.PagedAdamW8bit if paged else bnb.optim.AdamW8bit
        results = []
        for cls in (stock, unsynced(paged)):
            optimizer = three_steps(cls, parameters, originals)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            results.append(
                (
                    [p.detach().clone() for p in parameters],
                    [v.clone() for p in parameters for v in optimizer.state[p].values() if isinstance(v, torch.Tensor)],
                )
            )
            del optimizer
        (w0, s0), (w1, s1) = results
        identical["paged" if paged else "plain"] = all(torch.equal(a, b) for a, b in zip(w0 + s0, w1 + s1))
        moved = any(not torch.equal(a, b) for a, b in zip(w0, originals))
        assert moved, "the optimizer did not change the weights: the check would prove nothing"
        del results, w0, s0, w1, s1

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{args.preset}: {count / 1e9:.3f} B parameters in {len(parameters)} tensors, fp32; device {name}; "
        f"torch {torch.__version__}, bitsandbytes {bnb.__version__}"
    )
    print("| what | device s (median) | host s until return | speed-up vs bitsandbytes |\n|---|---|---|---|")
    stock_time = {}
    for row in rows:
        ratio = "-"
        if row["what"].startswith("bitsandbytes"):
            stock_time["Paged" in row["what"]] = row["device_s"]
        elif "without" in row["what"] or row["what"].startswith("tamer Triton"):
            ratio = f"{stock_time['Paged' in row['what']] / row['device_s']:.2f}x"
        print(f"| {row['what']} | {row['device_s']:.4f} | {row['host_s']:.4f} | {ratio} |")
    print(f"bit-identical after 3 steps (weights and moments): {identical}")
    if closeness:
        print(f"Triton vs bitsandbytes after 3 steps: {closeness}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "optimizer.json").write_text(
            json.dumps(
                {
                    "device": name,
                    "parameters": count,
                    "tensors": len(parameters),
                    "rows": rows,
                    "identical": identical,
                    "closeness": closeness,
                },
                indent=1,
            )
        )
    if not all(identical.values()):
        raise SystemExit("the unsynced step is not bit-identical to bitsandbytes'")


if __name__ == "__main__":
    main()
