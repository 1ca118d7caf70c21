"""`tamer plan`: predict the peak memory and speed of candidate plans for a config and a card, without
a GPU, and show the plan the planner would pick (tamer/planner).

Registered on tamer/cli/common.py's app when tamer/cli/__init__.py imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tamer import output
from tamer.cli.common import (
    DataOption,
    HomeOption,
    JsonOption,
    ModelOption,
    _fail,
    _print_json,
    app,
    check_recipe,
    console,
)
from tamer.errors import ConfigError, TamerError
from tamer.plan import DeviceFacts
from tamer.planner.calibrate import Observation, observations
from tamer.planner.candidates import (
    Candidate,
    Choice,
    PlannerPolicy,
    assess,
    best,
    candidate_plans,
    change_rank,
    shape_of,
    usable_bytes,
)
from tamer.planner.estimate import CUDA_CONTEXT_BYTES, GIB, Workload
from tamer.planner.planning import Planner
from tamer.planner.reach import reach
from tamer.units import format_size, parse_size


def _gib(num_bytes: int | float | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / GIB:.1f}"


def _dominated(candidate: Candidate, other: Candidate) -> bool:
    """Whether `other` is at least as fast, as small and as faithful as `candidate`, and better in one
    (or the same in all three with fewer rungs)."""
    mine = (candidate.speed, -candidate.estimate.reserved, tuple(-x for x in change_rank(candidate.plan)))
    theirs = (other.speed, -other.estimate.reserved, tuple(-x for x in change_rank(other.plan)))
    if mine == theirs:
        return len(other.plan.rungs) < len(candidate.plan.rungs)
    return all(b >= a for a, b in zip(mine, theirs))


def worth_showing(candidates: list[Candidate]) -> list[Candidate]:
    """The best plan that fits for each kind of model change (full, LoRA, int8 ...), and the plans
    faster than the chosen one that do not fit and that no other beats on speed, peak and model
    change at once (what more memory would buy). Everything undominated when nothing fits."""
    chosen = best(candidates)
    if chosen is None:
        return [c for c in candidates if not any(_dominated(c, other) for other in candidates)]
    by_change: dict[tuple[int, int], list[Candidate]] = {}
    for candidate in candidates:
        by_change.setdefault(change_rank(candidate.plan), []).append(candidate)
    shown = [picked for group in by_change.values() if (picked := best(group)) is not None]
    faster = [c for c in candidates if c.fits != "yes" and c.speed > chosen.speed]
    shown += [c for c in faster if not any(_dominated(c, other) for other in faster)]
    return shown


def _chosen(
    run_config: Any,
    facts: DeviceFacts,
    budget: int,
    policy: PlannerPolicy,
    workload: Workload,
    correction: float,
    choice: Choice | None,
) -> tuple[list[Candidate], Candidate | None]:
    """Every candidate and the one the supervisor would start from (the planner's choice, layers refined)."""
    if choice is None:
        shape = shape_of(run_config)
        return assess(
            candidate_plans(run_config, facts, policy), shape, workload, facts, budget, policy, correction=correction
        ), None
    chosen = next((c for c in choice.candidates if c.plan == choice.plan), None)
    if chosen is None:  # the choice with fewer checkpointed layers is not among the candidates assessed
        chosen = Candidate(plan=choice.plan, estimate=choice.predicted, speed=choice.speed, fits="yes")
        return choice.candidates + [chosen], chosen
    return choice.candidates, chosen


def _device(gpu_mem: str | None, bf16: bool | None) -> DeviceFacts:
    """The card: NVML's if there is one (its memory unless --gpu-mem), else one assumed from the options."""
    from tamer.daemon.probe import bitsandbytes_installed, nvml_facts

    found = nvml_facts()
    total = parse_size(gpu_mem, "--gpu-mem") if gpu_mem is not None else None
    if total is not None and total <= CUDA_CONTEXT_BYTES:
        raise ConfigError(
            f"--gpu-mem {gpu_mem}: a card of {format_size(total)} cannot even hold the CUDA context "
            f"({format_size(CUDA_CONTEXT_BYTES)}); give the card's memory, e.g. 16GiB"
        )
    if found:
        return DeviceFacts(
            kind="cuda",
            name=found["name"],
            total_memory=total or found["total_memory"],
            compute_capability=tuple(found["compute_capability"]),
            bf16=found["bf16"] if bf16 is None else bf16,
            fp16=True,
            bitsandbytes=bitsandbytes_installed(),
        )
    return DeviceFacts(
        kind="cuda",
        name="GPU (assumed)",
        total_memory=total,
        bf16=True if bf16 is None else bf16,
        fp16=True,
        bitsandbytes=bitsandbytes_installed(),
    )


def _shape_source(run_config: Any) -> Any:
    """Where the planner's shape comes from (tamer/planner/shape.py); a hub model's config.json is fetched into the hub
    cache when it is not there yet (as `tamer run`'s preflight does), unless the hub is unreachable."""
    from tamer.hub import check_causal, looks_local, offline_requested, probe
    from tamer.planner.shape import resolve

    found = resolve(run_config)
    if found.shape is None and run_config.init == "pretrained" and not looks_local(run_config.model):
        check_causal(
            run_config.model, offline_requested() or probe() is not None
        )  # fetches config.json, or says why not
        found = resolve(run_config)
    return found


def _past(home: Path | None, shape: Any, facts: DeviceFacts) -> list[Observation]:
    from tamer.state.db import Database
    from tamer.state.home import Home

    path = Home.resolve(home).db_path
    if not path.exists():
        return []
    db = Database(path, create=False)
    try:
        return observations(db, shape, facts.name)
    finally:
        db.close()


@app.command("plan")
def plan_command(
    recipe: Annotated[
        str, typer.Argument(help="Recipe to plan for: squad, chat, instruct or text (these three measure --data).")
    ] = "squad",
    preset: Annotated[
        str, typer.Option(help="Starting config: llama-3.2-1b, llama-3.2-3b, llama-3.1-8b or tiny.")
    ] = "llama-3.2-1b",
    model: ModelOption = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="YAML file of config keys over the preset.")
    ] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override one key: --set micro_batch_size=4 (repeatable).")
    ] = None,
    data: DataOption = None,
    gpu_mem: Annotated[
        Optional[str], typer.Option("--gpu-mem", help="The card's memory, e.g. 16GiB (default: the GPU's, via NVML).")
    ] = None,
    gpu_mem_cap: Annotated[
        Optional[str],
        typer.Option(
            "--gpu-mem-cap", help="Cap PyTorch's allocator, as `tamer run --gpu-mem-cap` (default: the config's)."
        ),
    ] = None,
    bf16: Annotated[
        Optional[bool],
        typer.Option(
            "--bf16/--no-bf16",
            help="Whether the card has bf16 (default: NVML's answer, else yes); --no-bf16 for T4-class cards.",
        ),
    ] = None,
    seq_len: Annotated[
        Optional[int], typer.Option(help="Tokens per sequence (default: the config's max_seq_len).")
    ] = None,
    tokens_per_sequence: Annotated[
        Optional[int],
        typer.Option(
            help="Tokens computed per sequence on average, for speed (default: the data's mean, SQuAD's for squad, under the config's batching)."
        ),
    ] = None,
    supervised_per_sequence: Annotated[
        Optional[int],
        typer.Option(
            help="Supervised tokens per sequence, answer + EOS (sets planner.supervised_per_sequence; default: the config's)."
        ),
    ] = None,
    logits: Annotated[
        str, typer.Option(help="Positions the LM head sees: supervised (tamer's loss) or all (Hugging Face's).")
    ] = "supervised",
    padded: Annotated[
        bool, typer.Option("--padded/--unpadded", help="Whether batches carry a padding mask (the recipe's do).")
    ] = True,
    allow_lora: Annotated[
        Optional[bool],
        typer.Option(
            "--lora/--no-lora",
            help="Whether LoRA (and with it a quantized base, which trains only under LoRA) may be used (sets planner.allow_lora; default: the config's).",
        ),
    ] = None,
    allow_quantization: Annotated[
        Optional[bool],
        typer.Option(
            "--quantize/--no-quantize",
            "--int8/--no-int8",
            help="Whether quantized base weights (int8, NF4) may be used (sets planner.allow_quantization; default: the config's; --int8/--no-int8 is the older name).",
        ),
    ] = None,
    allow_pure_bf16: Annotated[
        Optional[bool],
        typer.Option(
            "--pure-bf16/--no-pure-bf16",
            help="Whether pure bf16 weights (no fp32 master copy) may be used (sets planner.allow_pure_bf16; default: the config's).",
        ),
    ] = None,
    min_micro_batch: Annotated[
        Optional[int],
        typer.Option(
            help="Smallest micro-batch to split down to (sets planner.min_micro_batch; default: the config's)."
        ),
    ] = None,
    safety_margin: Annotated[
        Optional[float],
        typer.Option(
            help="Fraction of the memory kept free after the CUDA context (sets planner.safety_margin; default: the config's)."
        ),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="List every candidate, not only those no other beats.")
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Predict peak memory and speed of candidate plans, show the plan the planner would pick, and what the card can
    train: the model's plan, predicted peak and questions/s in one line (or the smallest card it needs), the largest
    preset shape, the longest rows and the biggest micro-batch it is predicted to fit (tamer/planner/reach.py).

    No GPU needed: the memory of the card comes from NVML or --gpu-mem. The planner's knobs and the
    rungs it may use are the config's (`planner`, `ladder.order`), as `tamer run` uses them; the
    options above override them. Past attempts of the same model on the same card (in --home) show how
    far off the predictions were. This is the first attempt's choice; after an OOM the supervisor
    chooses again with the failing phase's unknowns (activations, logits, workspaces) raised by the
    shortfall it measured, and keeps the model if it can (a full fine-tune that fits before LoRA). With
    several GPUs it also compares the step time with one GPU's (the gradient all-reduce).

    For a 16 GB T4 (no bf16: fp16 autocast, fp16 compute on a 4-bit base): --gpu-mem 16GiB --no-bf16.

    Example: tamer plan squad --preset llama-3.2-1b --gpu-mem 15GiB
    """
    from tamer.config import build_config

    try:
        check_recipe(recipe)
        if logits not in ("supervised", "all"):
            raise ConfigError(f"--logits {logits}: expected supervised or all")
        overrides = {
            "gpu_mem_cap": gpu_mem_cap,
            "planner.allow_lora": allow_lora,
            "planner.allow_quantization": allow_quantization,
            "planner.allow_pure_bf16": allow_pure_bf16,
            "planner.min_micro_batch": min_micro_batch,
            "planner.safety_margin": safety_margin,
            "planner.supervised_per_sequence": supervised_per_sequence,
            "recipe": recipe,
            "data": data,
        }
        run_config = build_config(preset, config, {"model": model, **overrides}, set_ or [])
        source = _shape_source(run_config)
        measured = None
        if recipe != "squad":  # sized on this data's token lengths, as `tamer run` plans it
            from tamer.recipes.prepare import prepare

            measured = prepare(run_config).profile
        facts = _device(gpu_mem, bf16)
        if facts.total_memory is None and run_config.gpu_mem_cap is None:
            raise ConfigError("no GPU found through NVML: pass --gpu-mem SIZE (the card's memory, e.g. 16GiB)")
        shape = shape_of(run_config)
        past = _past(home, shape, facts)
        planner = Planner.for_run(
            run_config,
            facts,
            shape=shape,
            data=measured,
            past=lambda: past,
            sequence_length=seq_len,
            logits_tokens=logits,
            padded=padded,
            computed_per_sequence=tokens_per_sequence,
        )
        choice = planner.choose()
    except TamerError as error:
        _fail(error)
    budget, policy, workload, correction = planner.budget, planner.policy, planner.workload, planner.correction()
    candidates, chosen = _chosen(run_config, facts, budget, policy, workload, correction, choice)
    note = None
    if chosen is not None:
        from tamer.planner.world import compare_with_one_gpu

        note = compare_with_one_gpu(run_config, facts, budget, policy, workload, chosen.plan, chosen.speed, shape)
    reached = reach(run_config, facts, budget, policy, workload, shape, chosen)
    shown = candidates if show_all else worth_showing(candidates)
    shown = sorted(shown, key=lambda c: (-c.speed, c.estimate.reserved))
    fitting = [c.speed for c in candidates if c.fits == "yes"]
    reference = max(fitting) if fitting else max(c.speed for c in candidates)
    usable = usable_bytes(budget, policy.safety_margin)
    if as_json:
        _print_json(
            {
                "device": facts.to_dict(),
                "budget": budget,
                "usable": usable,
                "correction": correction,
                "workload": workload.__dict__,
                "parameters": shape.parameters,
                "shape": {"origin": source.origin, "text": source.describe()},
                "candidates": [{**c.to_dict(), "relative_speed": c.speed / reference} for c in shown],
                "chosen": chosen.to_dict() if chosen else None,
                "world_size": note.to_dict() if note else None,
                "past_attempts": [o.to_dict() for o in past],
                "reach": reached.to_dict(),
            }
        )
        return
    positions = (
        f"{workload.supervised_per_sequence} supervised positions per sequence at the LM head"
        if workload.logits_tokens == "supervised"
        else "every position at the LM head"
    )
    output.say(console, f"{run_config.model}: {source.describe()}")
    output.say(
        console,
        f"{run_config.effective_batch_size} sequences x {workload.sequence_length} tokens per step, {positions}",
    )
    computed = workload.computed_per_sequence or workload.sequence_length
    output.say(
        console,
        f"batching {workload.batching}: memory for the longest micro-batch (micro-batch x {workload.sequence_length} tokens); "
        f"speed at {computed} computed tokens per sequence ({run_config.effective_batch_size * computed:,} per step)",
    )
    output.say(
        console,
        f"budget: {_gib(budget)} GiB on {facts.name} - {_gib(CUDA_CONTEXT_BYTES)} GiB CUDA context, "
        f"{policy.safety_margin:.0%} kept free -> {_gib(usable)} GiB for PyTorch's allocator"
        + (f"; calibrated x{correction:.2f} from {len(past)} past attempts" if correction != 1.0 else ""),
    )
    table = output.table("#", "peak GiB", "peak in", "fits", "speed", "model", "plan")
    for index, candidate in enumerate(shown, 1):
        fits = candidate.fits if candidate.excluded is None else f"{candidate.fits} (excluded)"
        mark = " <-" if candidate is chosen else ""
        table.add_row(
            f"{index}{mark}",
            _gib(candidate.estimate.reserved),
            candidate.estimate.where(),
            fits,
            f"{candidate.speed / reference:.2f}x",
            candidate.change,
            candidate.plan.describe(),
        )
    output.print_table(console, table)
    output.say(
        console,
        f"{len(shown)} of {len(candidates)} candidates shown"
        + ("" if show_all else " (--all for every one)")
        + "; speed relative to the fastest plan that fits; peak = PyTorch's peak reserved",
    )
    if run_config.ladder.mode == "card":
        output.say(
            console,
            "ladder.mode is card: `tamer run` starts from the config's first plan and escalates in ladder.order; "
            "it does not use the pick below",
        )
    if chosen is None:
        output.say(console, "chosen: none predicted to fit with the margin; the card ladder would take over")
    else:
        phases = ", ".join(f"{name} {_gib(chosen.estimate.reserved_in(name))}" for name in chosen.estimate.phases)
        output.say(console, f"chosen: {chosen.plan.describe()}", indent="  ")
        output.say(
            console,
            f"  peak learning rate {run_config.learning_rate_for(chosen.plan):g}"
            + (" (lora.learning_rate: LoRA adapters)" if chosen.plan.lora else " (learning_rate)"),
        )
        output.say(
            console,
            f"  rungs: {', '.join(chosen.plan.rungs) or 'none'}; model: {chosen.change}; "
            f"peak reserved by phase (GiB): {phases}"
            + (
                f"; paged optimizer state {_gib(chosen.estimate.pageable)} GiB outside it"
                if chosen.estimate.pageable
                else ""
            ),
            indent="  ",
        )
        if chosen.plan.checkpoint_layers_by_tokens:
            output.say(console, f"  checkpointing by size: {chosen.plan.describe_by_size()}", indent="  ")
        if note is not None:
            output.say(console, f"  {note.text(run_config.effective_batch_size)}", indent="  ")
    output.say(console, f"what this card trains (predicted; {policy.safety_margin:.0%} kept free):")
    for line in reached.lines():
        output.say(console, line, indent="  ")
    if past:
        history = output.table("run", "attempt", "outcome", "predicted GiB", "measured GiB", "error", "plan")
        for o in past:
            error = (
                f"{(o.predicted.reserved - o.measured_reserved) / o.measured_reserved:+.0%}"
                if o.measured_reserved
                else "-"
            )
            if not o.trained and o.measured_reserved:
                error += " (OOM: measured is a lower bound)"
            history.add_row(
                o.run_id,
                str(o.attempt),
                o.outcome or "-",
                _gib(o.predicted.reserved),
                _gib(o.measured_reserved),
                error,
                o.plan.describe(),
            )
        output.say(console, "past attempts of this model on this card:")
        output.print_table(console, history)
