"""Turning a plan into a model: load (hub, local, a checkpoint or a pinned base), quantize, LoRA,
gradient checkpointing, device, dtype."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tamer.config import RunConfig
from tamer.errors import ModelError
from tamer.plan import Plan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_error(model: str, error: Exception) -> ModelError:
    """A one-line ModelError that says what to do, from a hub/loading exception."""
    text = str(error)
    lowered = text.lower()
    hint = "or pass --model PATH to a local copy"
    if "gated" in lowered or "401" in text or "unauthorized" in lowered or "restricted" in lowered:
        return ModelError(
            f"model {model} is gated: accept its licence on the hub and log in (set HF_TOKEN or run `hf auth login`), {hint}"
        )
    if "not a valid model identifier" in lowered or "404" in text or "repository not found" in lowered:
        return ModelError(f"model {model} was not found on the hub or on disk; check the name, {hint}")
    if "connect" in lowered or "offline" in lowered or "resolve" in lowered:
        return ModelError(f"model {model} could not be fetched (the hub is unreachable); log in and retry, {hint}")
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ModelError(f"model {model} could not be loaded ({first_line[:200]}); {hint}")


def materialize_random_init(config: RunConfig, destination: Path) -> None:
    """Build `config.architecture` with seeded random weights and save it like a real checkpoint
    (fp32 safetensors + config.json), so every later load goes through from_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (destination / "config.json").is_file():
        return
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(LlamaConfig(**(config.architecture or {})))
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        os.replace(tmp, destination)
    finally:  # a full disk leaves nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)


def pin_base(weights_dir: Path, destination: Path) -> Path:
    """Keep a full-weights folder as the frozen base of later LoRA checkpoints (hard links: free)."""
    if (destination / "config.json").is_file():
        return destination
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for file in weights_dir.iterdir():
            try:
                os.link(file, tmp / file.name)
            except OSError:
                shutil.copy2(file, tmp / file.name)
        os.replace(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination


def build_model(config: RunConfig, plan: Plan, device: torch.device, base: str, adapter_dir: Path | None) -> Any:
    """The trainable model for `plan`: base weights from `base` (hub id or folder), LoRA adapters from
    `adapter_dir` when resuming a LoRA checkpoint."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": DTYPES[plan.weights_dtype]}
    if plan.quantization == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif plan.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[plan.compute_dtype or "bf16"],
        )
    if plan.quantization is not None:
        kwargs["device_map"] = {"": device.index if device.type == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except (OSError, ValueError) as error:
        raise model_error(config.model if not Path(base).exists() else base, error) from None
    model.config.use_cache = False
    if plan.quantization == "nf4":
        keep_four_bit_trainable(model)
    if plan.quantization is None:
        model.to(device)
    checkpointing_kwargs = {"use_reentrant": False}
    if plan.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    elif plan.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    if plan.gradient_checkpointing and plan.checkpoint_layers is not None:
        checkpoint_only_first(model, plan.checkpoint_layers)
    if plan.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        else:
            lora = config.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        if plan.gradient_checkpointing:
            # Checkpointed blocks with frozen inputs would get no gradient path to the adapters.
            model.enable_input_require_grads()
    elif adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    model.train()
    return model


def keep_four_bit_trainable(model: Any) -> None:
    """Stop bitsandbytes (0.49+) from repacking a 4-bit layer's weights for its CPU inference kernel the first time
    it runs in eval mode without gradients (on a CPU with AVX512-BF16): the repacked layer's matmul has no backward,
    so after an evaluation the gradients stopped reaching the adapters below it (seen with bitsandbytes 0.50.2)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def should_compile(setting: bool | str, plan: Plan, device: torch.device) -> bool:
    """Whether the decoder layers are compiled: true/false as asked; `auto` on one CUDA process with ordinary
    weights and no LoRA adapters, where compiled layers measured faster and leaner. Adapter-wrapped layers are
    left eager under `auto`: peft's wrappers give Dynamo about twice a plain layer's operations to compile (230 vs
    118 captured for SmolLM2-135M), plus a second graph for the first layer, whose input needs no gradient; the first
    step of such a plan waited 78 s on an H100 before it trained (issue 25), and on a CPU compiled LoRA steps were no
    faster than eager ones (bench/results/compile-lora-cpu-2026-12-06.md)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" and plan.quantization is None and not plan.lora and plan.world_size == 1


def use_cudnn_attention(setting: bool | str, batching_mode: str) -> bool:
    """`cudnn_attention`: true/false as asked; `auto` only for one batch shape (`max_len`), because cuDNN's
    attention builds a plan for every new shape (~0.3 s each on an H200, bench/new_length.py). `batching_mode`:
    the config's, or `generate` (decoding with a KV cache meets a new length at every token)."""
    if setting != "auto":
        return bool(setting)
    return batching_mode == "max_len"


def set_cudnn_attention(device: torch.device, enabled: bool) -> str | None:
    """Allow or forbid cuDNN's SDPA kernels for this process (before layers compile: a compiled graph keeps
    the kernel chosen when it was traced). Returns what changed, in words, or None (not CUDA, or unchanged)."""
    if device.type != "cuda":
        return None
    tag_compile_caches("cudnn_sdp", str(int(enabled)))
    if torch.backends.cuda.cudnn_sdp_enabled() == enabled:
        return None
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    return "cuDNN attention " + (
        "on"
        if enabled
        else "off: batch shapes vary and cuDNN plans each new one; SDPA takes "
        "PyTorch's memory-efficient kernel (cudnn_attention: true keeps cuDNN)"
    )


@contextlib.contextmanager
def cudnn_attention_allowed(device: torch.device, enabled: bool) -> Iterator[None]:
    """cuDNN's SDPA kernels allowed or forbidden inside the block (CUDA only), as they were after it."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def tag_compile_caches(name: str, value: str) -> None:
    """Put `tamer-name=value` into torch.compile's cache key tag (kept beside a tag of the user's own). torch's
    on-disk compile caches key a graph without the SDPA backend flags: a layer compiled once with cuDNN's
    attention was handed to a later run that forbids it (seen on an H200 with torch 2.11)."""
    config = getattr(getattr(torch, "compiler", None), "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):
        return
    prefix = f"tamer-{name}="
    kept = [part for part in str(config.cache_key_tag).split(",") if part and not part.startswith(prefix)]
    config.cache_key_tag = ",".join([*kept, prefix + value])


def compile_layers(model: Any, backend: str = "inductor") -> int:
    """torch.compile every decoder layer in place with dynamic shapes from the first call: one graph shared by
    the layers and by every batch shape, whatever shape an attempt happens to start with, so a resumed
    attempt runs the same kernels as an uninterrupted one (exact resume). Returns how many. A layer that
    fails to compile runs eagerly instead of ending the attempt.

    Under LoRA (compiled only when `compile: true`) the frozen embedding's output is made to require a gradient
    first: otherwise the first layer's input does not and the others' does, and Dynamo compiles a second graph
    for it (the same values either way)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and not getattr(get_base(), "_require_grads_hooks", None):
        model.enable_input_require_grads()
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    return len(layers)


def checkpoint_only_first(model: Any, count: int) -> None:
    """Selective activation checkpointing: after transformers enabled it on every decoder layer, turn it
    off on all but the first `count` (a layer checks its own flag on each call)."""
    layers = list(model.model.layers)
    for layer in layers[count:]:
        layer.gradient_checkpointing = False


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a causal LM, through a PEFT wrapper if there is one."""
    get_base = getattr(model, "get_base_model", None)
    causal_lm = get_base() if callable(get_base) else model
    return list(causal_lm.model.layers)


class LayerCheckpointing:
    """Checkpoint the first k decoder layers of the next micro-batch, k from the plan's table by size
    (Plan.checkpoint_layers_by_tokens): a layer reads its flag at each call (transformers 5.24 reads it inside
    the compiled function: compiled layers then hold one graph per value, each compiled once), so switching
    costs a few attribute writes. Exact: recomputation gives the same activations, so which layers are
    checkpointed changes memory and time, not the result."""

    def __init__(self, model: Any) -> None:
        self.layers = decoder_layers(model)
        self.current: int | None = None
        self.used: set[int] = set()

    def for_tokens(self, plan: Plan, tokens: int) -> tuple[int, bool]:
        """(layers checkpointed for a micro-batch of `tokens` computed tokens, whether this count is new)."""
        count = plan.checkpointed_for(tokens, len(self.layers))
        if count != self.current:
            for index, layer in enumerate(self.layers):
                layer.gradient_checkpointing = index < count
            self.current = count
        new = count not in self.used
        self.used.add(count)
        return count, new


def trainable_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]
