"""How far a card reaches, before any GPU is used: what `tamer plan` answers in a few lines under its table.

    reach(config, facts, budget, policy, workload, shape, choice)  ->  Reach: all of the below, and its lines
    answer(fit, shape, workload, facts, needs)  ->  one line: the plan a run starts with, its predicted peak and
                                                    questions/s; or the smallest card it would need
    smallest_card(config, facts, policy, workload, shape)  ->  the smallest common card size any plan fits
    largest_preset(config, facts, budget, policy, workload) -> the largest preset shape (1B, 3B, 8B) that fits
    longest_sequence(...), biggest_micro_batch(...)         -> the longest rows and the biggest micro-batch for the
                                                               config's model, with the plan that trains them

Every answer is the planner's own decision (tamer/planner/candidates.py: the same candidates, estimates, margin and
order of preference as `tamer run`'s first attempt), asked again with one thing changed: the card's memory, the
shape, the sequence length or the micro-batch. Sequence lengths are searched up to LONGEST_SEARCHED tokens of
memory; the model's own context window is not checked.

Questions/s are the speed model's (tamer/planner/speed.py: relative speed x the H100 anchor's tokens/s), scaled by
the compute per token (the decoder layers' linear weights, against the anchor's Llama-3.2-1B) and by the card's
dense 16-bit tensor throughput against an H100 (CARD_TFLOPS) when the card is known. A rough figure (the anchors'
absolute tokens/s moved 20-30% between runs): for ordering cards and shapes, not a promise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tamer.plan import DeviceFacts, Plan
from tamer.planner.candidates import Candidate, PlannerPolicy, assess, best, candidate_plans, choose, model_change
from tamer.planner.estimate import GIB, ModelShape, Workload
from tamer.planner.speed import ANCHOR_TOKENS_PER_SECOND
from tamer.presets import LLAMA_3_1_8B_ARCHITECTURE, LLAMA_3_2_1B_ARCHITECTURE, LLAMA_3_2_3B_ARCHITECTURE

PRESET_SHAPES = (
    ("llama-3.2-1b", LLAMA_3_2_1B_ARCHITECTURE),
    ("llama-3.2-3b", LLAMA_3_2_3B_ARCHITECTURE),
    ("llama-3.1-8b", LLAMA_3_1_8B_ARCHITECTURE),
)
"""The preset shapes the "largest model" answer tries, smallest first."""

CARDS_GIB = {
    8: "RTX 4060",
    12: "RTX 3060",
    16: "T4, V100",
    24: "L4, A10, RTX 4090",
    32: "V100 32GB, RTX 5090",
    40: "A100 40GB",
    48: "L40S, A6000",
    80: "A100 80GB, H100",
    96: "H100 NVL",
    141: "H200",
}
"""Common card sizes (GiB, as the planner counts a card's memory) with examples, for "the smallest card it needs"."""

CARD_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "L4": 121, "V100": 125, "T4": 65}
"""Dense fp16/bf16 tensor-core TFLOPS by card name (vendors' data sheets; H100 SXM the anchor)."""
ASSUMED_WITHOUT_BF16 = "T4"
"""The card a plan for an unnamed card without bf16 (`--no-bf16`) is timed on; with bf16, an H100."""

ANCHOR_LINEAR_PARAMETERS = ModelShape.from_architecture(LLAMA_3_2_1B_ARCHITECTURE).linear_parameters
"""Compute per token of the anchors' model (Llama-3.2-1B): its decoder layers' linear weights."""

LONGEST_SEARCHED = 131_072
"""Sequence lengths are searched up to this many tokens (Llama 3's context), in steps of SEQUENCE_STEP."""
SEQUENCE_STEP = 256
BIGGEST_SEARCHED = 1024
"""Micro-batches are searched in powers of two up to this."""
LINE = 80
"""Columns an answer line fits."""


@dataclass(frozen=True)
class Fit:
    """One answer: the plan the planner would start with and what it predicts for it."""

    plan: Plan
    peak: int
    """Predicted peak bytes reserved by PyTorch's allocator."""
    speed: float
    """Relative speed (tamer/planner/speed.py)."""

    @classmethod
    def of(cls, candidate: Any) -> Fit:
        """From a Candidate or a Choice."""
        estimate = getattr(candidate, "estimate", None) or candidate.predicted
        return cls(candidate.plan, estimate.reserved, candidate.speed)

    def short(self) -> str:
        """`LoRA, nf4 base, micro-batch 8 x 1`: what the model trains as, and the batch geometry."""
        return f"{model_change(self.plan)}, micro-batch {self.plan.micro_batch_size} x {self.plan.grad_accumulation}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "description": self.plan.describe(),
            "peak": self.peak,
            "speed": self.speed,
        }


def timing_card(facts: DeviceFacts) -> tuple[str, float]:
    """(card name, its 16-bit tensor throughput against an H100's) the questions/s are given for: the card's own
    when its name is in CARD_TFLOPS, else a T4 for a card without bf16 and an H100 otherwise."""
    name = facts.name or ""
    known = [card for card in CARD_TFLOPS if card.lower() in name.lower()]
    card = max(known, key=len) if known else "H100" if facts.bf16 else ASSUMED_WITHOUT_BF16
    return card, CARD_TFLOPS[card] / CARD_TFLOPS["H100"]


def questions_per_second(fit: Fit, shape: ModelShape, workload: Workload, facts: DeviceFacts) -> float:
    """Predicted questions (sequences) per second of `fit` on the card (see the module docstring)."""
    tokens = fit.speed * ANCHOR_TOKENS_PER_SECOND * ANCHOR_LINEAR_PARAMETERS / shape.linear_parameters
    per_sequence = workload.computed_per_sequence or workload.sequence_length
    return tokens * timing_card(facts)[1] / per_sequence


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.1f}"


def card_words(size_gib: int) -> str:
    return f"{size_gib} GiB ({CARDS_GIB[size_gib]})"


def answer(fit: Fit | None, shape: ModelShape, workload: Workload, facts: DeviceFacts, needs: int | None) -> str:
    """The one line: the plan a run starts with, its predicted peak and questions/s; or, when nothing fits, the
    smallest card that would (`needs`, GiB; None: none up to the largest in CARDS_GIB). At most LINE columns."""
    if fit is None:
        if needs is None:
            return f"no plan fits this card, nor any card up to {max(CARDS_GIB)} GiB"
        return f"no plan fits this card; the smallest that fits: {card_words(needs)}"
    card, _ = timing_card(facts)
    rate = questions_per_second(fit, shape, workload, facts)
    rate_text = f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"
    line = f"{fit.short()}: peak {_gib(fit.peak)} GiB, {rate_text} questions/s ({card})"
    return line if len(line) <= LINE else line.replace("micro-batch ", "")


def _first_fit(
    config: Any,
    facts: DeviceFacts,
    budget: int,
    policy: PlannerPolicy,
    workload: Workload,
    shape: ModelShape,
    plans: list[Plan] | None = None,
) -> Fit | None:
    """The planner's first choice (before its checkpointing refinements, which change no fit), or None."""
    plans = plans if plans is not None else candidate_plans(config, facts, policy)
    chosen: Candidate | None = best(assess(plans, shape, workload, facts, budget, policy))
    return Fit.of(chosen) if chosen else None


def smallest_card(
    config: Any, facts: DeviceFacts, policy: PlannerPolicy, workload: Workload, shape: ModelShape
) -> int | None:
    """The smallest size in CARDS_GIB (GiB) on which some plan is predicted to fit, or None."""
    plans = candidate_plans(config, facts, policy)
    for size in sorted(CARDS_GIB):
        if _first_fit(config, facts, size * GIB, policy, workload, shape, plans):
            return size
    return None


def largest_preset(
    config: Any, facts: DeviceFacts, budget: int, policy: PlannerPolicy, workload: Workload
) -> tuple[str, Fit] | None:
    """The largest of PRESET_SHAPES the planner fits on `budget` (the config's batch, sequences and policy), with the
    plan it would start with (its full choice, as `tamer run` would make it); None when not even the smallest fits."""
    found = None
    for name, architecture in PRESET_SHAPES:
        shape = ModelShape.from_architecture(architecture)
        choice = choose(config, facts, budget, policy, workload=workload, shape=shape)
        if choice is not None:
            found = (name, Fit.of(choice))
    return found


def longest_sequence(
    config: Any, facts: DeviceFacts, budget: int, policy: PlannerPolicy, workload: Workload, shape: ModelShape
) -> tuple[int, Fit] | None:
    """The longest rows (a multiple of SEQUENCE_STEP, up to LONGEST_SEARCHED tokens) some plan is predicted to train,
    the micro-batch split as far as the policy allows, with that plan; None when not even SEQUENCE_STEP fits."""
    plans = candidate_plans(config, facts, policy)

    def fit(tokens: int) -> Fit | None:
        sized = dataclasses.replace(workload, sequence_length=tokens, computed_per_sequence=tokens)
        return _first_fit(config, facts, budget, policy, sized, shape, plans)

    low, high = 0, LONGEST_SEARCHED // SEQUENCE_STEP  # in steps; low fits (0: nothing yet), high + 1 does not
    found = None
    while low < high:
        middle = (low + high + 1) // 2
        if (candidate := fit(middle * SEQUENCE_STEP)) is not None:
            low, found = middle, candidate
        else:
            high = middle - 1
    return None if found is None else (low * SEQUENCE_STEP, found)


def biggest_micro_batch(
    config: Any, facts: DeviceFacts, budget: int, policy: PlannerPolicy, workload: Workload, shape: ModelShape
) -> tuple[int, Fit] | None:
    """The biggest micro-batch per process (a power of two up to BIGGEST_SEARCHED, at the workload's sequence length,
    not split) some plan is predicted to train, with that plan; None when not even 1 fits."""
    found = None
    size = 1
    while size <= BIGGEST_SEARCHED:
        world = config.distributed.world_size
        sized = config.model_copy(update={"effective_batch_size": size * world, "micro_batch_size": size})
        fit = _first_fit(sized, facts, budget, policy.model_copy(update={"min_micro_batch": size}), workload, shape)
        if fit is None:
            break
        found = (size, fit)
        size *= 2
    return found


@dataclass(frozen=True)
class Reach:
    """What `tamer plan` says under its table: the answer for the config's model and how far the card reaches."""

    answer: str
    questions_per_second: float | None
    smallest_card: int | None
    """GiB of the smallest card in CARDS_GIB that fits the model, when this one does not."""
    largest: tuple[str, Fit] | None
    longest: tuple[int, Fit] | None
    biggest: tuple[int, Fit] | None
    sequence_length: int

    def lines(self) -> list[str]:
        """The answer, then the largest preset shape, the longest rows and the biggest micro-batch: each at most
        LINE columns."""
        lines = [self.answer]
        if self.largest is None:
            lines.append("largest preset: none fits, not even llama-3.2-1b")
        else:
            lines.append(f"largest preset: {self.largest[0]} as {self.largest[1].short()}")
        if self.longest is not None:
            lines.append(f"longest rows: {self.longest[0]:,} tokens as {self.longest[1].short()}")
        if self.biggest is not None:
            size, fit = self.biggest
            lines.append(f"biggest micro-batch: {size} x {self.sequence_length:,} tokens as {fit.short()}")
        return [line if len(line) <= LINE else line.replace("micro-batch ", "") for line in lines]

    def to_dict(self) -> dict[str, Any]:
        def pair(found: tuple[Any, Fit] | None, key: str) -> dict[str, Any] | None:
            return None if found is None else {key: found[0], **found[1].to_dict()}

        return {
            "answer": self.answer,
            "questions_per_second": self.questions_per_second,
            "smallest_card_gib": self.smallest_card,
            "largest_preset": pair(self.largest, "preset"),
            "longest_sequence": pair(self.longest, "tokens"),
            "biggest_micro_batch": pair(self.biggest, "micro_batch_size"),
        }


def reach(
    config: Any,
    facts: DeviceFacts,
    budget: int,
    policy: PlannerPolicy,
    workload: Workload,
    shape: ModelShape,
    choice: Any,
) -> Reach:
    """Every answer for `config`'s model (`shape`) on a card of `budget` device bytes; `choice` is the planner's
    (a Choice or a Candidate; None when nothing fits)."""
    fit = Fit.of(choice) if choice is not None else None
    needs = None if fit else smallest_card(config, facts, policy, workload, shape)
    return Reach(
        answer=answer(fit, shape, workload, facts, needs),
        questions_per_second=questions_per_second(fit, shape, workload, facts) if fit else None,
        smallest_card=needs,
        largest=largest_preset(config, facts, budget, policy, workload),
        longest=longest_sequence(config, facts, budget, policy, workload, shape),
        biggest=biggest_micro_batch(config, facts, budget, policy, workload, shape),
        sequence_length=workload.sequence_length,
    )
