"""tamer's Triton 8-bit AdamW step (tamer/engine/adamw8bit.py) against bitsandbytes' own, on CPU.

The kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set before triton is imported: hence a child
process), on the same tensors bitsandbytes' CPU back end steps. On the GPU machine the same comparison on
the 1B shape is bench/optimizer_step.py (bench/results/optimizer-step-h200-2026-12-03.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("bitsandbytes")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, os, sys
    DEVICE = os.environ.get("TAMER_TEST_DEVICE", "cpu")
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch, bitsandbytes as bnb
    from tamer.engine.adamw8bit import triton_adamw8bit
    from tamer.engine.optim import clip_gradients

    LR = 1e-2
    torch.manual_seed(0)
    # a multiple of the 256-element block, a tensor ending in a partial block, one small enough for
    # bitsandbytes' 32-bit moments (< 4096 elements), and one with several partial-block programs
    SHAPES = [(16, 256), (1000, 7), (2048,), (65, 129)]
    if DEVICE == "cuda":
        SHAPES.append((512, 256))  # >= 1e5 elements: a paged optimizer keeps these moments in managed memory
    START = [torch.randn(shape).to(DEVICE) for shape in SHAPES]

    def gradients(step):
        g = torch.Generator().manual_seed(step)
        return [(torch.randn(shape, generator=g) * 10.0 ** (step % 3 - 2)).to(DEVICE) for shape in SHAPES]

    def run(cls, steps=4, scale=None, start=None, state=None, first=0, clip=None):
        params = [torch.nn.Parameter(t.clone()) for t in (start or START)]
        opt = cls(params, lr=LR, weight_decay=0.1)
        if state is not None:
            opt.load_state_dict(state)
        for step in range(first, first + steps):
            for p, g in zip(params, gradients(step)):
                p.grad = g.clone()
            if clip is not None:
                clip(opt, params)
            elif scale is not None:
                opt.grad_scale = torch.tensor(scale, device=DEVICE)
            opt.step()
        return params, opt

    def dequantized(state, k):
        codes, code, absmax = state[f"state{k}"], state[f"qmap{k}"], state[f"absmax{k}"]
        flat = code[codes.flatten().long()]
        n = flat.numel()
        flat = torch.nn.functional.pad(flat, (0, (-n) % 256)).view(-1, 256) * absmax[:, None]
        return flat.flatten()[:n]

    out = {}
    Triton = triton_adamw8bit(os.environ.get("TAMER_TEST_PAGED") == "1")
    bnb_params, bnb_opt = run(bnb.optim.AdamW8bit)
    tri_params, tri_opt = run(Triton)
    exact_params, _ = run(torch.optim.AdamW)
    out["bnb_vs_exact_max_lr_units"] = max(float((a - b).detach().abs().max()) for a, b in zip(bnb_params, exact_params)) / LR
    out["weights_vs_bnb_lr_units"] = max(float((a - b).detach().abs().max()) for a, b in zip(tri_params, bnb_params)) / LR
    out["moved_lr_units"] = min(float((a - s).detach().abs().max()) for a, s in zip(tri_params, START)) / LR
    mean = lambda xs, ys: sum(float((x - y).detach().abs().sum()) for x, y in zip(xs, ys)) / sum(x.numel() for x in xs)
    out["triton_from_exact"] = mean(tri_params, exact_params) / LR
    out["bnb_from_exact"] = mean(bnb_params, exact_params) / LR
    out["kinds"] = [str(tri_opt.state[p]["state1"].dtype) for p in tri_params]
    out["paged"] = [bool(getattr(tri_opt.state[p]["state1"], "is_paged", False)) for p in tri_params]
    out["same_keys"] = all(sorted(tri_opt.state[a]) == sorted(bnb_opt.state[b]) for a, b in zip(tri_params, bnb_params))
    worst_moment = 0.0
    for a, b in zip(tri_params, bnb_params):
        sa, sb = tri_opt.state[a], bnb_opt.state[b]
        if sa["state1"].dtype != torch.uint8:
            continue
        for k in (1, 2):
            da, db = dequantized(sa, k), dequantized(sb, k)
            worst_moment = max(worst_moment, float((da - db).abs().max() / db.abs().max()))
    out["moments_vs_bnb_of_absmax"] = worst_moment

    # the clipping factor applied in the kernel = the gradients scaled beforehand, bit for bit
    scaled_in_kernel, _ = run(Triton, scale=0.37)
    params = [torch.nn.Parameter(t.clone()) for t in START]
    opt = Triton(params, lr=LR, weight_decay=0.1)
    for step in range(4):
        for p, g in zip(params, gradients(step)):
            p.grad = g * 0.37
        opt.step()
    out["scale_bitwise"] = all(torch.equal(a, b) for a, b in zip(scaled_in_kernel, params))
    fused, _ = run(Triton, clip=lambda o, ps: clip_gradients(o, ps, 1.0))
    unfused, _ = run(Triton, clip=lambda o, ps: torch.nn.utils.clip_grad_norm_(ps, 1.0))
    out["clip_bitwise"] = all(torch.equal(a, b) for a, b in zip(fused, unfused))
    out["clip_changed_something"] = any(not torch.equal(a, b) for a, b in zip(fused, tri_params))

    # non-finite gradient elements (an overflow in a few elements): skipped as bitsandbytes' CUDA kernel skips
    # them; the rest of each block steps, nothing becomes NaN
    bad = [(0, (0, 0), float("nan")), (0, (3, 5), float("inf")), (3, (0, 0), float("-inf"))]
    runs = {}
    for name, cls in (("triton", Triton), ("bnb", bnb.optim.AdamW8bit)):
        params, opt = run(cls, steps=2)
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, gradients(2)):
            p.grad = g.clone()
        for index, at, value in bad:
            params[index].grad[at] = value
        opt.step()
        runs[name] = (params, opt, before)
    params, opt, before = runs["triton"]
    out["nonfinite_weights_kept"] = all(bool(params[i][at] == before[i][at]) for i, at, _ in bad)
    out["nonfinite_neighbours_moved"] = all(bool(params[i][at[0], at[1] + 1] != before[i][at[0], at[1] + 1]) for i, at, _ in bad)
    out["nonfinite_moments_zero"] = all(float(dequantized(opt.state[params[i]], k)[at[0] * params[i].shape[1] + at[1]]) == 0.0
                                        for i, at, _ in bad for k in (1, 2))
    out["nonfinite_all_finite"] = all(bool(torch.isfinite(p).all()) for p in params) and all(
        bool(torch.isfinite(opt.state[p][key]).all()) for p in params for key in ("absmax1", "absmax2") if key in opt.state[p])
    if DEVICE == "cuda":  # bitsandbytes' CPU back end has no such rule; its CUDA kernel is the reference
        out["nonfinite_vs_bnb_lr_units"] = max(float((a - b).detach().abs().max()) for a, b in zip(params, runs["bnb"][0])) / LR

    # checkpoints load both ways: two steps, save, two more by the other implementation
    for name, first, second in (("triton_then_bnb", Triton, bnb.optim.AdamW8bit), ("bnb_then_triton", bnb.optim.AdamW8bit, Triton)):
        half, opt = run(first, steps=2)
        state = opt.state_dict()
        resumed, _ = run(second, steps=2, start=[p.detach() for p in half], state=state, first=2)
        straight, _ = run(first, steps=4)
        fresh, _ = run(second, steps=2, start=[p.detach() for p in half], first=2)
        out[name] = max(float((a - b).detach().abs().max()) for a, b in zip(resumed, straight)) / LR
        out[name + "_without_state"] = max(float((a - b).detach().abs().max()) for a, b in zip(fresh, straight)) / LR
    json.dump(out, sys.stdout)
""")


def compare(device: str, paged: bool = False) -> dict:
    """Run SCRIPT on `device` (cpu: in Triton's interpreter) and return what it measured."""
    path = os.pathsep.join(part for part in (str(ROOT), os.environ.get("PYTHONPATH", "")) if part)
    env = {**os.environ, "PYTHONPATH": path, "TAMER_TEST_DEVICE": device, "TAMER_TEST_PAGED": "1" if paged else "0"}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    finished = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict:
    return compare("cpu")


def check(results: dict) -> None:
    """Every assertion below, for the GPU test (tests/gpu/test_adamw8bit_gpu.py)."""
    for test in (
        test_weights_match_bitsandbytes_within_quantisation_noise,
        test_moments_match_bitsandbytes,
        test_gradient_scale_in_the_kernel_is_the_same_as_scaled_gradients,
        test_checkpoints_load_across_implementations,
        test_non_finite_gradient_elements_are_skipped_as_bitsandbytes_cuda_skips_them,
    ):
        test(results)
    assert results["nonfinite_vs_bnb_lr_units"] < 1.5 * results["bnb_vs_exact_max_lr_units"]


def test_weights_match_bitsandbytes_within_quantisation_noise(results: dict) -> None:
    """Four steps from the same weights with the same gradients: every tensor moved by several updates; no
    weight further from bitsandbytes' than bitsandbytes' own from exact fp32 AdamW (1.5x: a code at a rounding
    tie may land one level apart), and on average as close to exact AdamW as bitsandbytes is."""
    assert results["moved_lr_units"] > 1.0
    assert results["weights_vs_bnb_lr_units"] < 1.5 * results["bnb_vs_exact_max_lr_units"]
    assert results["triton_from_exact"] < 1.1 * results["bnb_from_exact"]


def test_moments_match_bitsandbytes(results: dict) -> None:
    assert results["kinds"][:4] == ["torch.uint8", "torch.uint8", "torch.float32", "torch.uint8"]
    assert results["same_keys"]
    assert results["moments_vs_bnb_of_absmax"] < 0.03  # one code level near the top of the map is ~1.6%


def test_gradient_scale_in_the_kernel_is_the_same_as_scaled_gradients(results: dict) -> None:
    assert results["scale_bitwise"]
    assert results["clip_bitwise"] and results["clip_changed_something"]


def test_checkpoints_load_across_implementations(results: dict) -> None:
    """A run resumed by the other implementation continues as if it had not changed (within the noise above),
    and the moments it loaded count: without them it lands far off."""
    for name in ("triton_then_bnb", "bnb_then_triton"):
        assert results[name] < 1.5 * results["bnb_vs_exact_max_lr_units"]
        assert results[name + "_without_state"] > 4 * results[name]


def test_a_kernel_that_cannot_be_built_falls_back_to_bitsandbytes(monkeypatch) -> None:
    """A Triton that cannot build the kernel for the card (Triton lists compute capability 8.0+; a T4 is 7.5)
    must not end an unattended run: the step says why and runs bitsandbytes' kernels on the same state,
    giving bitsandbytes' own result bit for bit."""
    import bitsandbytes as bnb
    import torch

    from tamer.engine import adamw8bit

    def broken() -> None:
        raise RuntimeError("PassManager::run failed\nmore lines")

    monkeypatch.setattr(adamw8bit, "_kernel", broken)
    torch.manual_seed(0)
    start = [torch.randn(64, 256), torch.randn(2048)]
    finals = []
    for cls in (bnb.optim.AdamW8bit, adamw8bit.triton_adamw8bit(False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (step + 1))
            opt.step()
        finals.append((params, opt))
    (reference, _), (fallen_back, optimizer) = finals
    assert optimizer.fallback_reason == "RuntimeError: PassManager::run failed"
    assert all(torch.equal(a, b) for a, b in zip(reference, fallen_back))
    assert optimizer.state[fallen_back[0]]["step"] == 3


def test_non_finite_gradient_elements_are_skipped_as_bitsandbytes_cuda_skips_them(results: dict) -> None:
    """A NaN or inf in a few gradient elements (an overflow) must not poison their 256-element block's absmax
    and with it every later step: those weights stay, their moments restart at 0, their neighbours step."""
    assert results["nonfinite_weights_kept"] and results["nonfinite_neighbours_moved"]
    assert results["nonfinite_moments_zero"] and results["nonfinite_all_finite"]


def test_a_bitsandbytes_without_the_internals_the_kernel_uses_gets_its_own_step(monkeypatch) -> None:
    """The bitsandbytes internals the Triton step calls are checked once, when the optimizer is built: with them
    (the installed bitsandbytes) the Triton step is used; without one, bitsandbytes' own step runs from the first
    step, bit for bit, and the reason names what is missing."""
    import bitsandbytes as bnb
    import torch

    from tamer.engine import adamw8bit

    params = [torch.nn.Parameter(torch.randn(64, 256))]
    assert (
        adamw8bit.triton_adamw8bit(False)(params, lr=1e-2).fallback_reason is None
    )  # the tested bitsandbytes has them
    monkeypatch.setattr(
        adamw8bit, "BITSANDBYTES_INTERNALS", (*adamw8bit.BITSANDBYTES_INTERNALS, "renamed_in_a_later_release")
    )
    monkeypatch.setattr(
        adamw8bit, "_kernel", lambda: pytest.fail("the Triton kernel ran without the internals it needs")
    )
    torch.manual_seed(0)
    start = [torch.randn(64, 256), torch.randn(2048)]
    finals = []
    for cls in (bnb.optim.AdamW8bit, adamw8bit.triton_adamw8bit(False)):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = cls(params, lr=1e-2, weight_decay=0.1)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.1 * (step + 1))
            opt.step()
        finals.append((params, opt))
    (reference, _), (own, optimizer) = finals
    assert "renamed_in_a_later_release" in optimizer.fallback_reason and "0.50.x" in optimizer.fallback_reason
    assert all(torch.equal(a, b) for a, b in zip(reference, own))
