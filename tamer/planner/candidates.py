"""Candidate plans under a policy, their predicted memory and speed, and the choice among them.

    choose(config, facts, budget_bytes, policy, exclude, oom_hint) -> Choice | None

Candidates are built from the registry's rungs with `tamer.strategies.ladder.apply_rung` (so each
plan lists the rungs it corresponds to, prerequisites first, as the card ladder would), over:
DDP / FSDP (with several processes), checkpointing on/off, fp32 / autocast / bf16 weights (a LoRA base in bf16 is always allowed, a pure
bf16 full fine-tune only by policy), full fine-tune / LoRA / int8 base + LoRA / NF4 base + LoRA,
AdamW / 8-bit AdamW / paged 8-bit AdamW, chunked loss on/off, and the micro-batch halved down to the
policy's minimum. Expandable segments are always on for CUDA: free, and the first attempt starts a
process anyway. Pure bf16 weights and non-paged 8-bit AdamW have no rung yet: those plan fields are
set directly and no rung is listed for them.

The choice: a quantized base is for fitting, and for speed only when it is much faster: an int8 base when no plan
on an unquantized base fits or the int8 plan is QUANTIZED_BASE_SPEEDUP times as fast, an NF4 base likewise
against int8 (`quantized_tier`). Among the candidates predicted to fit with the safety margin on that base, the
fastest; candidates within
`SPEED_TIE` of it count as equally fast, and among those the one that changes the model least wins
(full fine-tune > LoRA on a 16-bit base > LoRA on int8 > LoRA on NF4; fp32 master weights > pure bf16), then
the lowest peak, then the fewest rungs. None when nothing is predicted to fit confidently: the caller falls
back to the card ladder.

After an OOM (`oom_hint`: Outcome.to_dict() plus "plan", the failed plan), the failing phase's
estimate is raised for every candidate until the failed plan would not fit (its non-weight components
multiplied by one factor), and a candidate is never picked when its raised estimate for that phase
reaches the failed plan's measured peak there. Only the components not known exactly from the
parameter count are raised (activations, logits, workspaces, autocast copies; not weights, gradients
or optimizer states): the shortfall the OOM measured is charged to what the estimate could have got
wrong. An OOM in the optimizer step therefore never leads to a plan that only shrinks the micro-batch:
the optimizer phase does not depend on it. And after an OOM the choice keeps the model if it can: the
fastest candidate among those that change it least (a full fine-tune that fits — smaller micro-batch,
more checkpointing, FSDP — before LoRA, LoRA before an int8 base, int8 before NF4), not the fastest overall.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, model_validator

from tamer.config import PlannerConfig, RunConfig
from tamer.errors import ConfigError
from tamer.plan import DeviceFacts, Plan
from tamer.planner.estimate import (
    CUDA_CONTEXT_BYTES,
    EXACT_COMPONENTS,
    GIB,
    PHASES,
    STATIC_COMPONENTS,
    Estimate,
    ModelShape,
    Workload,
    checkpointed_layers,
    chunking_applies,
    estimate,
    estimate_at_tokens,
)
from tamer.planner.shape import resolve as resolve_shape
from tamer.planner.speed import relative_speed
from tamer.strategies import registry
from tamer.strategies.ladder import apply_rung, initial_plan, unusable_rungs

SPEED_TIE = 0.02
"""Candidates this close to the fastest (relative) count as equally fast: the model is not finer."""

QUANTIZED_BASE_SPEEDUP = 1.5
"""A more quantized base (int8 over 16/32-bit, NF4 over int8) is chosen over a less quantized one that fits only when
predicted at least this much faster. Quantizing costs answer quality (QLoRA reports NF4 LoRA within about a point of
16-bit LoRA; int8 less), worth paying when it shortens the night by a third (the 3B on a card without bf16: LoRA on
fp32 weights at micro-batch 2 fits, the int8 base at micro-batch 8 is over twice as fast), not for a few percent."""

NEED_OVERSHOOT = 1.01
"""After an OOM, the failed phase's estimate is raised to this much above the memory it could not get."""


class PlannerPolicy(PlannerConfig):
    """What the planner may change about training to fit the card: the config's `planner` knobs (declared
    once, in PlannerConfig) and the rungs its ladder allows. `tamer run` and `tamer plan` both build it
    with `from_config`, so both pick the same plan."""

    model_config = ConfigDict(frozen=True)

    rungs: tuple[str, ...] | None = None
    """Rungs the planner may use (e.g. the config's ladder.order + chunked_loss); None = all registered."""
    required_rungs: tuple[str, ...] = ()
    """Rungs every plan it picks must have (the config's start_rungs, repeats counted): the fastest plan with them,
    not the user's geometry with them applied (which would drop autocast and the like)."""

    @model_validator(mode="after")
    def _known_rungs(self) -> PlannerPolicy:
        for name in (*(self.rungs or ()), *self.required_rungs):
            if name not in registry.names():
                raise ConfigError(f"planner.rungs: unknown rung '{name}'; known rungs: {', '.join(registry.names())}")
        return self

    @classmethod
    def from_config(cls, config: RunConfig) -> PlannerPolicy:
        """The policy of a RunConfig: its planner knobs, its ladder.order plus chunked_loss (which the
        planner may always use: it changes no result), and its start_rungs as required rungs."""
        return cls(
            **dict(config.planner),
            rungs=(*config.ladder.order, "chunked_loss"),
            required_rungs=tuple(config.start_rungs),
        )

    def allows(self, plan: Plan) -> bool:
        """Whether `plan` has every required rung (as often as required)."""
        have = Counter(plan.rungs)
        return all(have[name] >= count for name, count in Counter(self.required_rungs).items())


@dataclass(frozen=True)
class Candidate:
    """One plan with its prediction against a budget."""

    plan: Plan
    estimate: Estimate
    speed: float
    """Expected tokens/s relative to the reference plan (tamer/planner/speed.py)."""
    fits: str
    """`yes` (within the margin), `tight` (within the budget but not the margin) or `no`."""
    excluded: str | None = None
    """Why it may not be chosen although it may fit (failed before, steered away after an OOM)."""

    @property
    def change(self) -> str:
        return model_change(self.plan)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "description": self.plan.describe(),
            "key": plan_key(self.plan),
            "reserved": self.estimate.reserved,
            "device": self.estimate.device,
            "peak_phase": self.estimate.peak_phase,
            "dominant": self.estimate.phases[self.estimate.peak_phase].dominant(),
            "pageable": self.estimate.pageable,
            "fits": self.fits,
            "speed": self.speed,
            "change": self.change,
            "excluded": self.excluded,
        }


@dataclass(frozen=True)
class Choice:
    """The plan the planner picked, what it predicts for it, and why."""

    plan: Plan
    predicted: Estimate
    reason: str
    speed: float
    candidates: list[Candidate] = field(default_factory=list, repr=False)


def plan_key(plan: Plan) -> str:
    """What makes two plans train the same way (not the rungs' history, the eval batch, the child's leave to
    split in process, nor the checkpointing table by size, which the planner derives from the rest)."""
    data = {
        f.name: getattr(plan, f.name)
        for f in dataclasses.fields(plan)
        if f.name not in ("rungs", "eval_batch_size", "in_process_split_down_to", "checkpoint_layers_by_tokens")
    }
    return json.dumps(data, sort_keys=True)


def effective_key(plan: Plan, workload: Workload) -> str:
    """plan_key() with a chunked loss that does not chunk (fewer positions than one slice) counted as
    no chunked loss: the two train identically, so one failing rules out the other."""
    return plan_key(plan.replace(chunked_loss=chunking_applies(plan, workload)))


def _plan_of_key(key: str) -> Plan:
    return Plan.from_dict({**json.loads(key), "eval_batch_size": 1})


def model_change(plan: Plan) -> str:
    """How much the plan changes what is trained: full, full (bf16 weights), LoRA, LoRA on int8 or on NF4."""
    if plan.quantization:
        return f"LoRA, {plan.quantization} base"
    if plan.lora:
        return "LoRA" + (", bf16 base" if plan.weights_dtype == "bf16" else "")
    return "full" + (", bf16 weights" if plan.weights_dtype == "bf16" else "")


BASE_TIERS = {None: 0, "int8": 1, "nf4": 2}
"""How far a plan quantizes the frozen base: unquantized, int8 (256 levels per row), NF4 (16 per block of 64)."""


def base_tier(plan: Plan) -> int:
    """0 for an unquantized base, 1 for int8, 2 for NF4: the planner takes a higher tier only when no lower one fits."""
    return BASE_TIERS[plan.quantization]


def change_rank(plan: Plan) -> tuple[int, int]:
    """Smaller changes the model less: full > LoRA on a 16-bit base > LoRA on int8 > LoRA on NF4; fp32 master
    weights > pure bf16."""
    level = 1 + base_tier(plan) if plan.lora else 0
    return level, 1 if plan.weights_dtype == "bf16" and not plan.quantization else 0


def cap_budget(gpu_mem_cap: int | None) -> int | None:
    """Device bytes a child under `gpu_mem_cap` (a cap on PyTorch's allocator, RunConfig.gpu_mem_cap) may use, CUDA
    context included; None without a cap."""
    return None if gpu_mem_cap is None else gpu_mem_cap + CUDA_CONTEXT_BYTES


def within_cap(room: int, capped: int | None) -> int:
    """`room` (device bytes) no larger than a cap_budget()."""
    return room if capped is None else min(room, capped)


def device_budget(total_memory: int | None, gpu_mem_cap: int | None = None) -> int:
    """Device bytes the child may use, CUDA context included: the card's memory, or a cap on PyTorch's
    allocator (as RunConfig.gpu_mem_cap) plus the context, whichever is smaller."""
    capped = cap_budget(gpu_mem_cap)
    if total_memory:
        return within_cap(total_memory, capped)
    if capped is None:
        raise ConfigError("the device's memory is unknown: pass --gpu-mem SIZE (e.g. 16GiB) or a gpu_mem_cap")
    return capped


def usable_bytes(budget_bytes: int, safety_margin: float) -> int:
    """Bytes PyTorch's allocator may reserve under `budget_bytes` with the margin kept free."""
    return int((budget_bytes - CUDA_CONTEXT_BYTES) * (1 - safety_margin))


def _micro_batch_splits(micro_batch_size: int, minimum: int) -> list[int]:
    """How many times the micro-batch can be halved exactly while staying >= minimum: [0, 1, ...]."""
    splits = [0]
    while micro_batch_size % 2 == 0 and micro_batch_size // 2 >= minimum:
        micro_batch_size //= 2
        splits.append(splits[-1] + 1)
    return splits


def candidate_plans(config: Any, facts: DeviceFacts, policy: PlannerPolicy) -> list[Plan]:
    """Every distinct plan the policy allows, built from rungs (see the module docstring), that has the policy's
    required rungs."""
    allowed = set(policy.rungs) if policy.rungs is not None else set(registry.names())
    allowed -= unusable_rungs(config, facts)
    start = initial_plan(config, facts)
    models = ["full"]
    if policy.allow_lora:
        models.append("lora")
        if policy.allow_quantization and facts.bitsandbytes:
            models += ["int8", "nf4"]
    optimizers = ["adamw"] + (["adamw_8bit", "paged_adamw_8bit"] if facts.bitsandbytes else [])
    splits = _micro_batch_splits(start.micro_batch_size, policy.min_micro_batch)
    parallels = ["ddp", "fsdp"] if start.world_size > 1 else ["ddp"]
    plans: dict[str, Plan] = {}
    for precision, checkpointing, model, optimizer, chunked, split, parallel in itertools.product(
        ("fp32", "autocast", "bf16"), (False, True), models, optimizers, (False, True), splits, parallels
    ):
        if precision == "bf16" and not _bf16_weights_allowed(model, facts, policy):
            continue
        if parallel == "fsdp" and (model != "full" or optimizer != "adamw"):
            continue
        rungs = ["expandable_segments"] if facts.kind == "cuda" and "expandable_segments" in allowed else []
        rungs += ["gradient_checkpointing"] if checkpointing else []
        rungs += ["mixed_precision"] if precision == "autocast" else []
        rungs += ["fsdp"] if parallel == "fsdp" else []
        rungs += {"full": [], "lora": ["lora"], "int8": ["lora", "quantize_8bit"], "nf4": ["lora", "quantize_4bit"]}[
            model
        ]
        rungs += ["paged_adamw_8bit"] if optimizer == "paged_adamw_8bit" else []
        rungs += ["chunked_loss"] if chunked else []
        rungs += ["split_micro_batch"] * split
        if not set(rungs) <= allowed:
            continue
        plan = start
        if precision == "bf16":
            plan = plan.replace(weights_dtype="bf16")
        if optimizer == "adamw_8bit":
            plan = plan.replace(optimizer="adamw_8bit")
        for name in rungs:
            plan = apply_rung(plan, name, facts)
        if policy.allows(plan):
            plans.setdefault(plan_key(plan), plan)
    return list(plans.values())


def _bf16_weights_allowed(model: str, facts: DeviceFacts, policy: PlannerPolicy) -> bool:
    """bf16 weights: for a full fine-tune only when the policy allows pure bf16 (no fp32 master copy);
    under LoRA always (the base is frozen and the adapters stay fp32); never for int8 or NF4, whose
    unquantized parts are upcast to fp32 anyway."""
    if not facts.bf16 or model in ("int8", "nf4"):
        return False
    return model == "lora" or policy.allow_pure_bf16


def _hints(oom_hint: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    if oom_hint is None:
        return []
    if isinstance(oom_hint, Mapping):
        return [oom_hint]
    return list(oom_hint)


def _measured_need(hint: Mapping[str, Any], limit: int) -> int:
    """Bytes the failed phase needed at least: more than the allocator could have (it did not fit),
    and what PyTorch held when it failed plus what it asked for, when the OOM message says so."""
    sizes = hint.get("sizes") or {}
    held, asked = sizes.get("allocated_by_pytorch"), sizes.get("tried_to_allocate")
    return max(limit, held + asked) if held is not None and asked is not None else limit


def _failed_plan(hint: Mapping[str, Any]) -> Plan:
    raw = hint["plan"]
    return raw if isinstance(raw, Plan) else Plan.from_dict(raw)


@dataclass(frozen=True)
class _Steering:
    """What one OOM teaches: the phase, the factor for its estimates, the reserved bytes it needed."""

    phase: str
    factor: float
    need: int
    kept: tuple[str, ...] = EXACT_COMPONENTS
    """The components the factor leaves alone."""


def _steering(
    hint: Mapping[str, Any], shape: ModelShape, workload: Workload, correction: float, limit: int
) -> _Steering | None:
    if hint.get("plan") is None:
        return None
    failed = _failed_plan(hint)
    predicted = estimate(shape, failed, workload).with_correction(correction)
    phase = hint.get("phase") if hint.get("phase") in PHASES else predicted.peak_phase
    need = _measured_need(hint, limit)
    phase_estimate = predicted.phases[phase]
    # The shortfall goes to the components not known exactly; a phase made only of exact ones (an
    # optimizer step without workspace) puts it on everything but the weights.
    kept = EXACT_COMPONENTS if phase_estimate.total > phase_estimate.sum_of(EXACT_COMPONENTS) else STATIC_COMPONENTS
    fixed = phase_estimate.sum_of(kept)
    varying = phase_estimate.total - fixed
    need_allocated = NEED_OVERSHOOT * need / ((1 + predicted.fragmentation) * correction)
    factor = max(1.0, (need_allocated - fixed) / varying) if varying > 0 else 1.0
    return _Steering(phase=phase, factor=factor, need=need, kept=kept)


def assess(
    plans: list[Plan],
    shape: ModelShape,
    workload: Workload,
    facts: DeviceFacts,
    budget_bytes: int,
    policy: PlannerPolicy,
    exclude: Iterable[str] = (),
    oom_hint: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
    correction: float = 1.0,
) -> list[Candidate]:
    """Each plan's estimate (corrected and steered), speed and fit against `budget_bytes`."""
    limit = budget_bytes - CUDA_CONTEXT_BYTES
    usable = usable_bytes(budget_bytes, policy.safety_margin)
    steerings: dict[str, _Steering] = {}
    for hint in _hints(oom_hint):
        steering = _steering(hint, shape, workload, correction, limit)
        if steering is None:
            continue
        earlier = steerings.get(steering.phase)
        if earlier is not None:  # several OOMs in one phase: the strongest evidence of each kind
            steering = _Steering(
                steering.phase,
                max(steering.factor, earlier.factor),
                max(steering.need, earlier.need),
                steering.kept if len(steering.kept) < len(earlier.kept) else earlier.kept,
            )
        steerings[steering.phase] = steering
    failed = [_plan_of_key(key) for key in exclude] + [
        _failed_plan(h) for h in _hints(oom_hint) if h.get("plan") is not None
    ]
    excluded_keys = {effective_key(plan, workload) for plan in failed}
    distinct: dict[str, Plan] = {}
    for plan in sorted(plans, key=lambda plan: len(plan.rungs)):  # of equivalent plans, the one with fewer rungs
        distinct.setdefault(effective_key(plan, workload), plan)
    candidates = []
    for key, plan in distinct.items():
        predicted = estimate(shape, plan, workload).with_correction(correction)
        excluded = "failed before" if key in excluded_keys else None
        for steering in steerings.values():
            predicted = predicted.with_phase_scaled(steering.phase, steering.factor, steering.kept)
            if excluded is None and predicted.reserved_in(steering.phase) >= steering.need:
                excluded = (
                    f"after the OOM in {steering.phase}: predicted {predicted.reserved_in(steering.phase) / GIB:.1f} GiB "
                    f"there, not below the {steering.need / GIB:.1f} GiB that failed"
                )
        fits = "yes" if predicted.reserved <= usable else "tight" if predicted.reserved <= limit else "no"
        paging = predicted.pageable > 0 and _typical_reserved(predicted, shape, workload) + predicted.pageable > limit
        candidates.append(
            Candidate(plan, predicted, relative_speed(plan, workload, facts, paging, shape.num_layers), fits, excluded)
        )
    return candidates


def _typical_reserved(predicted: Estimate, shape: ModelShape, workload: Workload) -> int:
    """The peak reserved by the typical micro-batch, which the speed is predicted at: the plan's peak, except for
    a table by size (Plan.checkpoint_layers_by_tokens), whose peak may come from rarer sizes."""
    plan = predicted.plan
    if not plan.checkpoint_layers_by_tokens:
        return predicted.reserved
    typical = plan.micro_batch_size * (workload.computed_per_sequence or workload.sequence_length)
    at = estimate_at_tokens(shape, plan, workload, min(typical, plan.micro_batch_size * workload.sequence_length))
    return at.with_correction(predicted.correction).reserved


def _preference(candidate: Candidate) -> tuple[Any, ...]:
    # 32-bit AdamW moments before 8-bit ones (quantized, and paged ones live in managed memory): 8-bit AdamW is
    # for fitting. Its speed is not modelled, so without this a small model that fits with torch AdamW got the
    # lowest-peak plan, paged 8-bit AdamW (SmolLM2-135M on a 16 GB card, issue 28).
    eight_bit = candidate.plan.optimizer != "adamw"
    return change_rank(candidate.plan), eight_bit, candidate.estimate.reserved, len(candidate.plan.rungs)


def quantized_tier(eligible: list[Candidate], switch: bool = True) -> int:
    """The base tier the choice is made in: the least quantized one with a fitting candidate, moving to a more
    quantized tier only when its fastest candidate is predicted QUANTIZED_BASE_SPEEDUP times as fast as the tier
    chosen so far (`switch`; never after an OOM, where the model is kept if it can be)."""
    fastest: dict[int, float] = {}
    for candidate in eligible:
        tier = base_tier(candidate.plan)
        fastest[tier] = max(fastest.get(tier, 0.0), candidate.speed)
    tiers = sorted(fastest)
    chosen = tiers[0]
    for tier in tiers[1:] if switch else []:
        if fastest[tier] >= fastest[chosen] * QUANTIZED_BASE_SPEEDUP:
            chosen = tier
    return chosen


def best(candidates: list[Candidate], keep_model: bool = False) -> Candidate | None:
    """The fastest candidate that fits with the margin and is not excluded, on the least quantized base that fits
    unless a more quantized one is much faster (`quantized_tier`: quantizing is for fitting); near-ties go to the one that changes the model least, then torch
    AdamW's 32-bit moments over 8-bit ones, then the lowest peak, then the fewest rungs. `keep_model` (after an
    OOM): only among the candidates that change the model least (full > LoRA > int8 base > NF4 base), fastest
    first."""
    eligible = [c for c in candidates if c.fits == "yes" and c.excluded is None]
    if not eligible:
        return None
    tier = quantized_tier(eligible, switch=not keep_model)
    eligible = [c for c in eligible if base_tier(c.plan) == tier]
    if keep_model:
        least = min(change_rank(c.plan)[0] for c in eligible)
        eligible = [c for c in eligible if change_rank(c.plan)[0] == least]
    fastest = max(c.speed for c in eligible)
    tied = [c for c in eligible if c.speed >= fastest * (1 - SPEED_TIE)]
    return min(tied, key=_preference)


Assessor = Callable[..., list[Candidate]]
"""`assess` bound to one device, budget, policy, exclusions, OOM hints and correction (see `choose`):
`assessor(plans, workload=..., exclude=...)`."""


def fewest_checkpointed_layers(chosen: Candidate, shape: ModelShape, assessor: Assessor) -> Candidate:
    """`chosen` with checkpointing on only its first k decoder layers, for the smallest k predicted to fit
    with the margin (each layer not recomputed saves its share of the recomputation), unless that is
    predicted slower (the memory it takes pushes paged optimizer state to the host): then the fastest k;
    `chosen` itself when it does not checkpoint every layer or no smaller k fits or is faster."""
    plan = chosen.plan
    if not plan.gradient_checkpointing or plan.checkpoint_layers is not None:
        return chosen
    variants = [plan.replace(checkpoint_layers=count) for count in range(1, shape.num_layers)]
    fitting = [candidate for candidate in assessor(variants) if candidate.fits == "yes" and candidate.excluded is None]
    return max(fitting + [chosen], key=lambda candidate: candidate.speed)  # the first of equals: the smallest k


def checkpointing_by_tokens(
    chosen: Candidate, shape: ModelShape, workload: Workload, assessor: Assessor, step: int = 64
) -> Candidate:
    """`chosen` with fewer layers checkpointed for shorter micro-batches: packed rows and length buckets vary
    in size, and the plan's checkpoint_layers is chosen for the longest one (micro-batch x max_seq_len
    tokens). For each k below it, the most tokens (a multiple of `step`) predicted to fit with the margin
    when only k layers are checkpointed; entries kept where they raise the limit. Its speed is predicted at
    the typical micro-batch (workload.computed_per_sequence). One process, length-grouped batching only."""
    plan = chosen.plan
    if (
        not plan.gradient_checkpointing
        or plan.world_size != 1
        or workload.batching not in ("packed", "bucket")
        or plan.checkpoint_layers_by_tokens
    ):
        return chosen
    most = checkpointed_layers(plan, shape)
    longest = plan.micro_batch_size * workload.sequence_length
    table: list[tuple[int, int]] = []
    for layers in range(most):
        fitting = 0
        for tokens in range(step, longest, step):
            sized = dataclasses.replace(workload, sequence_length=-(-tokens // plan.micro_batch_size))
            [candidate] = assessor([plan.replace(checkpoint_layers=layers)], workload=sized)
            if candidate.fits != "yes":
                break
            fitting = tokens
        if fitting > (table[-1][0] if table else 0):
            table.append((fitting, layers))
    if not table:
        return chosen
    improved = plan.replace(checkpoint_layers=most, checkpoint_layers_by_tokens=tuple(table))
    [candidate] = assessor([improved], exclude=())
    return dataclasses.replace(candidate, excluded=chosen.excluded)


def shape_of(config: Any) -> ModelShape:
    """The shape `config` trains (tamer/planner/shape.py: the model's config.json, the user's or the preset's
    architecture), or a ConfigError saying why it is unknown."""
    found = resolve_shape(config)
    if found.shape is None:
        raise ConfigError(
            f"the planner needs the shape of {config.model}: {found.problem}; pass --model PATH to a local "
            "model folder, or set `architecture` (LlamaConfig fields) in the config"
        )
    return found.shape


def choose(
    config: Any,
    facts: DeviceFacts,
    budget_bytes: int | None = None,
    policy: PlannerPolicy | None = None,
    exclude: Iterable[str] = (),
    oom_hint: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
    *,
    workload: Workload | None = None,
    correction: float = 1.0,
    shape: ModelShape | None = None,
) -> Choice | None:
    """The plan to try next for `config` on a device with `budget_bytes` (default: the card's memory,
    CUDA context included; see device_budget), or None when no candidate is predicted to fit with the
    margin. `exclude`: plan_key() of plans that failed; `oom_hint`: the last OOM (or several), each an
    Outcome.to_dict() with "plan" added; `correction`: calibrate.correction_factor(); `shape`: the model to plan
    (default: the config's, `shape_of`)."""
    policy = policy or PlannerPolicy()
    budget = budget_bytes if budget_bytes is not None else device_budget(facts.total_memory)
    workload = workload or Workload.from_config(config)
    shape = shape or shape_of(config)

    def assessor(plans: list[Plan], workload: Workload = workload, exclude: Iterable[str] = exclude) -> list[Candidate]:
        return assess(plans, shape, workload, facts, budget, policy, exclude, oom_hint, correction)

    candidates = assessor(candidate_plans(config, facts, policy))
    steered = [h.get("phase") for h in _hints(oom_hint) if h.get("plan") is not None]
    chosen = best(candidates, keep_model=bool(steered))
    if chosen is None:
        return None
    if policy.selective_checkpointing:
        chosen = fewest_checkpointed_layers(chosen, shape, assessor)
        if policy.checkpointing_by_size:
            chosen = checkpointing_by_tokens(
                chosen, shape, workload, assessor, step=getattr(config, "batch_multiple", 64) or 64
            )
    usable = usable_bytes(budget, policy.safety_margin)
    predicted = chosen.estimate
    reason = (
        f"fastest plan predicted to fit: {predicted.reserved / GIB:.1f} GiB peak reserved ({predicted.where()}) "
        f"of {usable / GIB:.1f} GiB usable ({budget / GIB:.1f} GiB - {CUDA_CONTEXT_BYTES / GIB:.1f} GiB CUDA context, "
        f"{policy.safety_margin:.0%} margin); model: {chosen.change}"
    )
    if steered:
        reason += (
            f"; steered by the OOM in {', '.join(str(phase) for phase in steered)} "
            "(the fastest plan that changes the model least)"
        )
    return Choice(plan=chosen.plan, predicted=predicted, reason=reason, speed=chosen.speed, candidates=candidates)
