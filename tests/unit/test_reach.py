"""What a 16 GB card can train, answered before any GPU is used (tamer/planner/reach.py, `tamer plan`): the plan each
preset shape starts with on 16 GB with and without bf16, the largest preset shape that fits, the smallest card a model
needs when it fits nowhere here, the longest rows and the biggest micro-batch. Pure arithmetic: no torch."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamer.config import build_config
from tamer.plan import DeviceFacts, Plan
from tamer.planner.estimate import GIB, ModelShape, Workload, estimate, estimate_at_tokens
from tamer.planner.planning import Planner
from tamer.planner.reach import (
    LINE,
    SEQUENCE_STEP,
    Fit,
    _first_fit,
    answer,
    biggest_micro_batch,
    largest_preset,
    longest_sequence,
    reach,
    smallest_card,
)
from tamer.presets import PRESETS


def card(gib: int, bf16: bool = True, bitsandbytes: bool = True) -> DeviceFacts:
    """An unnamed card of `gib` GiB, as `tamer plan --gpu-mem` assumes one without NVML."""
    return DeviceFacts(
        kind="cuda", name="GPU (assumed)", total_memory=gib * GIB, bf16=bf16, fp16=True, bitsandbytes=bitsandbytes
    )


def planner(preset: str, facts: DeviceFacts, *overrides: str) -> Planner:
    return Planner.for_run(build_config(preset, None, {}, list(overrides)), facts)


def reached(preset: str, facts: DeviceFacts, *overrides: str):
    p = planner(preset, facts, *overrides)
    return reach(p.config, facts, p.budget, p.policy, p.workload, p.shape, p.choose())


@pytest.mark.parametrize("bf16", [True, False])
def test_each_preset_shape_on_16_gb_starts_on_the_least_quantized_plan_that_fits(bf16):
    """On 16 GB the 1B fine-tunes fully; the 3B trains LoRA on a bf16 base where the card has bf16, and on a T4 on an
    int8 base (its fp32 LoRA base fits only at micro-batch 2, predicted at under 1/1.5 of the int8 plan's speed); the
    8B trains LoRA on an NF4 base computing in bf16 where the card has it and fp16 on a T4 (no plan on a 16-bit or
    int8 base fits it)."""
    facts = card(16, bf16)
    one, three, eight = (planner(p, facts).choose().plan for p in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"))
    assert not one.lora and one.quantization is None and one.autocast_dtype == ("bf16" if bf16 else "fp16")
    if bf16:
        assert three.lora and three.quantization is None and three.weights_dtype == "bf16"
    else:  # no fp16 base: a T4's unquantized LoRA base stays fp32, and fits only at a quarter of the micro-batch
        assert three.lora and three.quantization == "int8" and three.micro_batch_size == 8
    assert eight.lora and eight.quantization == "nf4" and eight.compute_dtype == ("bf16" if bf16 else "fp16")
    assert eight.autocast_dtype == ("bf16" if bf16 else "fp16")


@pytest.mark.parametrize("bf16", [True, False])
def test_the_largest_preset_on_16_gb_is_the_8b_on_nf4_and_on_8_gb_the_3b(bf16):
    """The largest preset shape a 16 GB card trains is the 8B, as LoRA on NF4; an 8 GB card stops at the 3B."""
    p = planner("llama-3.2-1b", card(16, bf16))
    name, fit = largest_preset(p.config, p.facts, p.budget, p.policy, p.workload)
    assert name == "llama-3.1-8b" and fit.plan.quantization == "nf4" and fit.peak < p.budget
    small = planner("llama-3.2-1b", card(8, bf16))
    assert largest_preset(small.config, small.facts, small.budget, small.policy, small.workload)[0] == "llama-3.2-3b"


def test_a_model_that_cannot_fit_names_the_smallest_card():
    """The 8B on 8 GB fits nowhere: the answer names the smallest card it fits (12 GiB as NF4); without quantization
    (planner.allow_quantization off, or no bitsandbytes) 24 GiB, as LoRA on a bf16 base."""
    for facts, overrides, needed in (
        (card(8), (), 12),
        (card(8), ("planner.allow_quantization=false",), 24),
        (card(8, bitsandbytes=False), (), 24),
    ):
        result = reached("llama-3.1-8b", facts, *overrides)
        assert result.smallest_card == needed and result.questions_per_second is None
        assert result.answer == f"no plan fits this card; the smallest that fits: {needed} GiB " + (
            "(RTX 3060)" if needed == 12 else "(L4, A10, RTX 4090)"
        )
        p = planner("llama-3.1-8b", dataclasses.replace(facts, total_memory=needed * GIB), *overrides)
        assert p.choose() is not None  # it does fit the card named
    assert reached("llama-3.1-8b", card(16)).smallest_card is None


def test_the_answer_is_one_line_with_the_plan_its_peak_and_questions_per_second():
    """Each shape's answer on 16 GB fits 80 columns and says the plan, the predicted peak and questions/s, timed on
    an H100 for a card with bf16 and on a T4 without; the 8B is slower than the 1B."""
    rates = {}
    for bf16 in (True, False):
        for preset in ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"):
            p = planner(preset, card(16, bf16))
            choice = p.choose()
            result = reach(p.config, p.facts, p.budget, p.policy, p.workload, p.shape, choice)
            assert len(result.answer) <= LINE and all(len(line) <= LINE for line in result.lines())
            assert result.answer.startswith(Fit.of(choice).short())
            assert f"peak {choice.predicted.reserved / GIB:.1f} GiB" in result.answer
            assert result.answer.endswith("questions/s (H100)" if bf16 else "questions/s (T4)")
            rates[preset, bf16] = result.questions_per_second
    assert rates["llama-3.1-8b", True] < rates["llama-3.2-3b", True] < rates["llama-3.2-1b", True]
    assert rates["llama-3.1-8b", False] < rates["llama-3.1-8b", True] / 10  # a T4 has 1/15 of an H100's 16-bit FLOPS


def test_longest_rows_and_biggest_micro_batch_are_the_limits():
    """The longest rows found fit and SEQUENCE_STEP more do not; the biggest micro-batch fits and twice it does not;
    the 8B reaches less far than the 3B on the same card."""
    facts = card(16)
    limits = {}
    for preset in ("llama-3.2-3b", "llama-3.1-8b"):
        p = planner(preset, facts)
        tokens, fit = longest_sequence(p.config, facts, p.budget, p.policy, p.workload, p.shape)
        assert fit.peak < p.budget and tokens % SEQUENCE_STEP == 0

        def fits(length: int, p: Planner = p) -> bool:
            sized = dataclasses.replace(p.workload, sequence_length=length, computed_per_sequence=length)
            return _first_fit(p.config, facts, p.budget, p.policy, sized, p.shape) is not None

        assert fits(tokens) and not fits(tokens + SEQUENCE_STEP)
        size, batch_fit = biggest_micro_batch(p.config, facts, p.budget, p.policy, p.workload, p.shape)
        assert batch_fit.plan.micro_batch_size == size and batch_fit.plan.grad_accumulation == 1
        doubled = p.config.model_copy(update={"effective_batch_size": 2 * size, "micro_batch_size": 2 * size})
        policy = p.policy.model_copy(update={"min_micro_batch": 2 * size})
        assert _first_fit(doubled, facts, p.budget, policy, p.workload, p.shape) is None
        limits[preset] = (tokens, size)
    assert limits["llama-3.1-8b"][0] < limits["llama-3.2-3b"][0]
    assert limits["llama-3.1-8b"][1] <= limits["llama-3.2-3b"][1]


def test_answer_without_any_card():
    """A model no card in the list fits is said so in one line."""
    assert answer(None, None, None, card(16), None) == "no plan fits this card, nor any card up to 141 GiB"
    p = planner("llama-3.1-8b", card(16))
    assert smallest_card(p.config, p.facts, p.policy, p.workload, p.shape) == 12


def test_tamer_plan_prints_and_returns_the_reach(tmp_path, monkeypatch):
    """`tamer plan squad --preset llama-3.1-8b --gpu-mem 16GiB --no-bf16` prints the answer line and the reach, within
    80 columns; --json carries the same answer and the NF4 plan with fp16 compute."""
    from tamer import cli

    monkeypatch.setattr("tamer.daemon.probe.nvml_facts", lambda: None)
    monkeypatch.setattr("tamer.daemon.probe.bitsandbytes_installed", lambda: True)
    args = ["plan", "squad", "--preset", "llama-3.1-8b", "--gpu-mem", "16GiB", "--no-bf16", "--home", str(tmp_path)]
    result = CliRunner().invoke(cli.app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)["reach"]
    assert data["largest_preset"]["preset"] == "llama-3.1-8b" and data["smallest_card_gib"] is None
    assert data["largest_preset"]["plan"]["compute_dtype"] == "fp16"
    text = CliRunner().invoke(cli.app, args, env={"COLUMNS": "80"})
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert data["answer"] in lines and data["answer"].startswith("LoRA, nf4 base, micro-batch 8 x 1: peak ")
    start = lines.index("what this card trains (predicted; 10% kept free):")
    assert lines[start + 2].startswith("largest preset: llama-3.1-8b as LoRA, nf4 base")
    assert all(len(line) <= 80 for line in lines[start:])
    for flag in ("--no-quantize", "--no-int8"):  # the older name still works
        without = json.loads(CliRunner().invoke(cli.app, [*args, flag, "--json"]).output)["reach"]
        assert without["answer"].startswith("no plan fits this card; the smallest that fits: ")
        assert without["largest_preset"]["preset"] == "llama-3.2-3b"
        assert without["largest_preset"]["plan"]["quantization"] is None


MEASURED = json.loads((Path(__file__).parent / "measured_reach_h100.json").read_text())
"""The plans tamer ran on an H100 under a 15 GiB cap (bench/reach.py) and the peaks their steps logged."""


def _measured_case(run: dict) -> tuple[ModelShape, Plan, Workload]:
    shape = ModelShape.from_architecture(PRESETS[run["preset"]]["architecture"])
    workload = Workload(**{k: tuple(v) if isinstance(v, list) else v for k, v in MEASURED["workload"].items()})
    return shape, Plan.from_dict(run["plan"]), workload


@pytest.mark.parametrize(
    "run", MEASURED["runs"], ids=lambda run: f"{run['preset']}-fp16" * run["fp16_pinned"] or run["preset"]
)
def test_peaks_measured_on_an_h100_are_within_ten_percent_of_the_prediction(run):
    """1B (full fine-tune), 3B (LoRA, bf16 base) and 8B (LoRA, NF4 base, bf16 and fp16 compute) as they ran: the
    predicted peak reserved is within 10% of the measured one; the 3B and 8B, whose tables by size reached their
    largest sizes in the run, within 2%, allocated too. Without the table's sizes (the longest micro-batch only), the
    8B's prediction was 7% low: the sizes the table lets checkpoint fewer layers peak higher."""
    shape, plan, workload = _measured_case(run)
    predicted = estimate(shape, plan, workload)
    assert abs(run["peak_reserved"] / predicted.reserved - 1) < 0.10
    if run["preset"] != "llama-3.2-1b":  # the 1B's 60 steps did not meet its worst size (peak 0.95 of predicted)
        assert abs(run["peak_reserved"] / predicted.reserved - 1) < 0.02
        assert abs(run["peak_allocated"] / predicted.allocated - 1) < 0.02
    if plan.quantization == "nf4":
        longest_only = estimate(shape, plan.replace(checkpoint_layers_by_tokens=()), workload)
        assert run["peak_reserved"] / longest_only.reserved > 1.05


def test_a_plan_with_a_table_by_size_is_estimated_at_its_worst_size():
    """The estimate of a plan whose checkpointing varies by micro-batch size is the largest of its sizes' estimates
    (each entry's size with that entry's layers, and the longest micro-batch with the plan's own count), carries the
    plan itself, and is above the longest micro-batch's alone when a shorter size keeps more layers' activations."""
    shape, plan, workload = _measured_case(next(r for r in MEASURED["runs"] if r["preset"] == "llama-3.1-8b"))
    longest = plan.micro_batch_size * workload.sequence_length
    sizes = [longest] + [tokens for tokens, _ in plan.checkpoint_layers_by_tokens]
    each = [estimate_at_tokens(shape, plan, workload, tokens) for tokens in sizes]
    found = estimate(shape, plan, workload)
    assert found.plan == plan and found.allocated == max(e.allocated for e in each)
    assert (
        found.allocated
        > each[0].allocated
        == estimate(shape, plan.replace(checkpoint_layers_by_tokens=()), workload).allocated
    )
    assert estimate_at_tokens(shape, plan, workload, 384).plan == plan  # none checkpointed up to 384 tokens
    assert plan.checkpointed_for(384, shape.num_layers) == 0
