"""The escalation ladder: which rung comes next after each kind of failure, for each device."""

from __future__ import annotations

from tamer.config import CARD_LADDER
from tamer.outcome import Outcome
from tamer.plan import DeviceFacts, Plan
from tamer.strategies.ladder import apply_rung, describe_ladder, next_plan

CUDA = DeviceFacts(kind="cuda", name="H100", bf16=True, fp16=True)
CPU = DeviceFacts(kind="cpu", name="cpu", bf16=True, fp16=False)


def fresh_plan() -> Plan:
    return Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)


def oom(phase: str = "backward", kind: str = "cuda_oom") -> Outcome:
    return Outcome(kind=kind, message="CUDA out of memory.", phase=phase, escalate=True)


def test_card_order_walk_on_cuda():
    """From a fresh plan, repeated OOMs climb the card ladder rung by rung, then split to 1, then stop."""
    plan = fresh_plan()
    steps = []
    while True:
        decision = next_plan(plan, oom(), CUDA, list(CARD_LADDER))
        if decision.plan is None:
            break
        assert decision.escalated
        assert decision.plan.effective_batch_size == 8
        steps.append((decision.applied, decision.plan.micro_batch_size))
        plan = decision.plan
    assert steps == [
        (["expandable_segments"], 8),
        (["gradient_checkpointing"], 8),
        (["mixed_precision"], 8),
        (["lora", "quantize_8bit"], 8),
        (["quantize_4bit"], 8),
        (["paged_adamw_8bit"], 8),
        (["split_micro_batch"], 4),
        (["split_micro_batch"], 2),
        (["split_micro_batch"], 1),
    ]
    assert plan.autocast_dtype == "bf16"
    assert plan.quantization == "nf4" and plan.compute_dtype == "bf16" and plan.lora
    assert plan.optimizer == "paged_adamw_8bit"
    assert plan.gradient_checkpointing
    assert plan.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert plan.env["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert plan.grad_accumulation == 8
    assert plan.rungs == (
        "expandable_segments",
        "gradient_checkpointing",
        "mixed_precision",
        "lora",
        "quantize_8bit",
        "quantize_4bit",
        "paged_adamw_8bit",
        "split_micro_batch",
        "split_micro_batch",
        "split_micro_batch",
    )


def test_exhausted_ladder_says_what_was_tried():
    """When no rung applies, the plan is None and the reason lists the rungs already applied."""
    plan = fresh_plan()
    for _ in range(9):
        plan = next_plan(plan, oom(), CUDA, list(CARD_LADDER)).plan
    decision = next_plan(plan, oom(), CUDA, list(CARD_LADDER))
    assert decision.plan is None
    assert not decision.escalated
    assert decision.applied == []
    assert "split_micro_batch x3" in decision.reason
    assert "gradient_checkpointing" in decision.reason
    assert ("split_micro_batch", "micro-batch is already 1") in decision.skipped


def test_prerequisite_is_recorded_in_reason():
    """Quantizing brings LoRA along, and the reason says LoRA came as its prerequisite."""
    plan = fresh_plan().replace(rungs=("expandable_segments", "gradient_checkpointing", "mixed_precision"))
    decision = next_plan(plan, oom(), CUDA, list(CARD_LADDER))
    assert decision.applied == ["lora", "quantize_8bit"]
    assert decision.reason == (
        "cuda_oom in backward at micro-batch 8: applied lora (prerequisite of quantize_8bit), quantize_8bit"
    )


def test_lora_is_skipped_once_applied_as_prerequisite():
    """After quantize_8bit brought LoRA, the next OOMs replace the int8 base by NF4, then skip lora as already applied."""
    plan = fresh_plan()
    for _ in range(4):
        plan = next_plan(plan, oom(), CUDA, list(CARD_LADDER)).plan
    decision = next_plan(plan, oom(), CUDA, list(CARD_LADDER))
    assert decision.applied == ["quantize_4bit"] and decision.plan.quantization == "nf4"
    decision = next_plan(decision.plan, oom(), CUDA, list(CARD_LADDER))
    assert decision.applied == ["paged_adamw_8bit"]
    assert ("lora", "already applied") in decision.skipped


def test_reason_names_kind_phase_micro_batch_and_rung():
    """The event-log sentence reads `<kind> in <phase> at micro-batch <n>: applied <rung>`."""
    plan = fresh_plan().replace(rungs=("expandable_segments",))
    decision = next_plan(plan, oom(), CUDA, list(CARD_LADDER))
    assert decision.reason == "cuda_oom in backward at micro-batch 8: applied gradient_checkpointing"


def test_cpu_skips_expandable_segments_with_reason():
    """On CPU the first rung is skipped because the CPU allocator has no segments."""
    decision = next_plan(fresh_plan(), oom(kind="host_oom"), CPU, list(CARD_LADDER))
    assert decision.skipped == [("expandable_segments", "CPU allocator has no segments")]
    assert decision.applied == ["gradient_checkpointing"]
    assert decision.plan.env == {}


def test_fp16_chosen_where_bf16_is_missing():
    """A device without bf16 but with fp16 gets fp16 autocast."""
    facts = DeviceFacts(kind="cuda", name="T4", bf16=False, fp16=True)
    plan = fresh_plan().replace(rungs=("expandable_segments", "gradient_checkpointing"))
    decision = next_plan(plan, oom(), facts, list(CARD_LADDER))
    assert decision.applied == ["mixed_precision"]
    assert decision.plan.autocast_dtype == "fp16"


def test_mixed_precision_skipped_without_16_bit_support():
    """A device with neither bf16 nor fp16 skips mixed_precision, saying why."""
    facts = DeviceFacts(kind="cuda", name="old", bf16=False, fp16=False)
    decision = next_plan(fresh_plan(), oom(), facts, ["mixed_precision", "split_micro_batch"])
    assert decision.skipped == [("mixed_precision", "device supports neither bf16 nor fp16 autocast")]
    assert decision.applied == ["split_micro_batch"]


def test_user_order_without_quantize_never_quantizes():
    """A ladder order that leaves both quantize rungs out climbs to the end without quantized weights."""
    order = [name for name in CARD_LADDER if not name.startswith("quantize_")]
    plan = fresh_plan()
    applied = []
    while (decision := next_plan(plan, oom(), CUDA, order)).plan is not None:
        applied += decision.applied
        plan = decision.plan
    assert "quantize_8bit" not in applied and "quantize_4bit" not in applied
    assert plan.quantization is None
    assert "lora" in applied and plan.micro_batch_size == 1


def test_prerequisite_left_out_of_order_blocks_the_rung():
    """quantize_8bit is skipped when the user's order forbids its prerequisite lora."""
    order = ["quantize_8bit", "split_micro_batch"]
    decision = next_plan(fresh_plan(), oom(), CUDA, order)
    assert decision.skipped == [("quantize_8bit", "needs lora, which the ladder order leaves out")]
    assert decision.applied == ["split_micro_batch"]


def test_bitsandbytes_missing_skips_8bit_rungs():
    """Without bitsandbytes the 8-bit and 4-bit rungs are skipped and LoRA alone is applied in their place."""
    facts = DeviceFacts(kind="cuda", name="H100", bf16=True, fp16=True, bitsandbytes=False)
    plan = fresh_plan().replace(rungs=("expandable_segments", "gradient_checkpointing", "mixed_precision"))
    decision = next_plan(plan, oom(), facts, list(CARD_LADDER))
    assert decision.skipped[-2:] == [
        ("quantize_8bit", "bitsandbytes is not usable on this device"),
        ("quantize_4bit", "bitsandbytes is not usable on this device"),
    ]
    assert decision.applied == ["lora"]


def test_eval_oom_halves_only_the_eval_batch():
    """An OOM in eval halves eval_batch_size and leaves every training field alone."""
    plan = fresh_plan()
    decision = next_plan(plan, oom(phase="eval"), CUDA, list(CARD_LADDER))
    assert decision.applied == ["eval_batch_size"]
    assert decision.escalated
    assert decision.plan == plan.replace(eval_batch_size=4)
    assert decision.reason.startswith("cuda_oom in eval at eval batch 8: halved the eval batch 8 -> 4"), decision.reason


def test_eval_oom_at_eval_batch_one_is_exhausted():
    """An eval OOM with eval batch already 1 leaves nothing to try."""
    decision = next_plan(fresh_plan().replace(eval_batch_size=1), oom(phase="eval"), CUDA, list(CARD_LADDER))
    assert decision.plan is None
    assert not decision.escalated


def test_crash_restarts_same_plan():
    """A crash (or any non-OOM outcome) restarts the same plan without escalating."""
    plan = fresh_plan()
    decision = next_plan(plan, Outcome(kind="crash", message="killed by SIGSEGV"), CUDA, list(CARD_LADDER))
    assert decision.plan == plan
    assert not decision.escalated
    assert decision.applied == []
    assert decision.reason == "restart without escalation: crash"


def test_odd_micro_batch_is_not_split():
    """An odd micro-batch cannot be halved exactly, so the split rung is skipped and the ladder ends."""
    plan = Plan(micro_batch_size=3, grad_accumulation=2, eval_batch_size=8)
    decision = next_plan(plan, oom(), CUDA, ["split_micro_batch"])
    assert decision.plan is None
    assert decision.skipped == [
        (
            "split_micro_batch",
            "micro-batch 3 is odd, so it cannot be halved exactly without changing the effective batch",
        )
    ]


def test_repeatable_rung_first_in_order_splits_before_others():
    """The order is the user's: with split first, the micro-batch halves before any other rung."""
    decision = next_plan(fresh_plan(), oom(), CUDA, ["split_micro_batch", *CARD_LADDER[:-1]])
    assert decision.applied == ["split_micro_batch"]
    assert decision.plan.micro_batch_size == 4


def test_describe_ladder_lists_declarations_in_order():
    """describe_ladder gives each rung's declarations, in the order asked for."""
    described = describe_ladder(list(CARD_LADDER))
    assert [rung["name"] for rung in described] == list(CARD_LADDER)
    quantize = next(rung for rung in described if rung["name"] == "quantize_8bit")
    assert quantize["requires"] == ["lora"]
    assert quantize["new_process"] and not quantize["exact"]
    split = described[-1]
    assert split["repeatable"] and split["exact"]
    assert split["changes"] == ["micro_batch_size", "grad_accumulation"]
    declarations = {"name", "summary", "changes", "requires", "conflicts", "new_process", "exact", "repeatable"}
    assert set(described[0]) == declarations


def test_conflicting_rung_is_skipped(monkeypatch):
    """A rung that conflicts with an applied rung, declared on either side, is skipped with the reason."""
    from dataclasses import dataclass

    from tamer.strategies import registry
    from tamer.strategies.base import Strategy

    @dataclass(frozen=True)
    class Flag(Strategy):
        """A stand-in rung that only records itself."""

        def apply(self, plan, facts):
            return plan.with_rung(self.name)

    rungs = {
        "first": Flag(name="first", summary="saves x; costs y", changes=(), conflicts=("second",)),
        "second": Flag(name="second", summary="saves x; costs y", changes=()),
        "third": Flag(name="third", summary="saves x; costs y", changes=(), conflicts=("first",)),
        "fourth": Flag(name="fourth", summary="saves x; costs y", changes=()),
    }
    monkeypatch.setattr(registry, "get", rungs.__getitem__)
    decision = next_plan(fresh_plan().replace(rungs=("first",)), oom(), CUDA, list(rungs))
    assert decision.skipped == [
        ("first", "already applied"),
        ("second", "conflicts with first (applied)"),
        ("third", "conflicts with first (applied)"),
    ]
    assert decision.applied == ["fourth"]


def test_apply_rung_brings_prerequisites_and_skips_what_cannot_apply():
    """apply_rung applies a named rung with its prerequisites, and leaves the plan alone when it cannot apply."""
    plan = apply_rung(fresh_plan(), "quantize_8bit", CUDA)
    assert plan.rungs == ("lora", "quantize_8bit")
    assert plan.quantization == "int8" and plan.lora
    assert apply_rung(plan, "lora", CUDA) == plan
    assert apply_rung(fresh_plan(), "expandable_segments", CPU) == fresh_plan()


def test_quantize_4bit_computes_in_bf16_where_the_card_has_it_and_fp16_on_a_t4():
    """quantize_4bit brings LoRA, stores the base as NF4 and picks the compute dtype from the card: bf16, else fp16."""
    plan = apply_rung(fresh_plan(), "quantize_4bit", CUDA)
    assert plan.rungs == ("lora", "quantize_4bit")
    assert (plan.quantization, plan.compute_dtype, plan.lora) == ("nf4", "bf16", True)
    t4 = DeviceFacts(kind="cuda", name="Tesla T4", bf16=False, fp16=True)
    assert apply_rung(fresh_plan(), "quantize_4bit", t4).compute_dtype == "fp16"
    assert "nf4 base (fp16 compute)" in apply_rung(fresh_plan(), "quantize_4bit", t4).describe()


def test_quantize_4bit_replaces_an_int8_base_and_int8_never_replaces_nf4():
    """An int8 plan can go to NF4 (keeping its LoRA); an NF4 plan never goes back to int8, nor to NF4 again."""
    int8 = apply_rung(fresh_plan(), "quantize_8bit", CUDA)
    nf4 = apply_rung(int8, "quantize_4bit", CUDA)
    assert nf4.rungs == ("lora", "quantize_8bit", "quantize_4bit") and nf4.quantization == "nf4"
    assert apply_rung(nf4, "quantize_8bit", CUDA) == nf4
    straight = apply_rung(fresh_plan(), "quantize_4bit", CUDA)
    decision = next_plan(straight, oom(), CUDA, ["quantize_8bit", "quantize_4bit", "split_micro_batch"])
    assert decision.skipped == [
        ("quantize_8bit", "base weights are already nf4"),
        ("quantize_4bit", "already applied"),
    ]
    assert decision.applied == ["split_micro_batch"]
