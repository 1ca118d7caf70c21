"""The planner plans any Llama/Mistral/Qwen-style model from its own config.json (tamer/planner/shape.py), the
3B and 8B presets plan something sensible, and the shape's origin is said. Pure arithmetic and JSON: no torch.

Parameter counts below are what transformers builds for each config (counted on the meta device, 2026-12-06)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamer.config import build_config
from tamer.errors import ConfigError
from tamer.plan import DeviceFacts
from tamer.planner import choose, device_budget
from tamer.planner.candidates import shape_of
from tamer.planner.estimate import GIB, ModelShape
from tamer.planner.shape import from_config_json, resolve
from tamer.presets import LLAMA_3_1_8B_ARCHITECTURE, LLAMA_3_2_1B_ARCHITECTURE, LLAMA_3_2_3B_ARCHITECTURE, PRESETS

SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}
"""bench/real_model.py's conversion of SmolLM2-135M-Instruct (transformers 5.25)."""
QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": None,
    "vocab_size": 32000,
}
T4_16GB = DeviceFacts(kind="cuda", name="Tesla T4", total_memory=15 * GIB + 640 * 2**20, bf16=False, fp16=True)
CARD_16GB = DeviceFacts(kind="cuda", name="GPU (assumed)", total_memory=16 * GIB, bf16=True, fp16=True)
H100 = DeviceFacts(kind="cuda", name="NVIDIA H100 80GB HBM3", total_memory=80 * GIB, bf16=True, fp16=True)


def model_folder(tmp_path: Path, config: dict, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_smollm2_config_json_is_read_exactly(tmp_path):
    """SmolLM2-135M's config.json gives 30 layers, hidden 576, 9 heads, 3 KV heads of 64, vocab 49,152, a tied head,
    and exactly the 134,515,008 parameters transformers loads; the origin is its config.json."""
    folder = model_folder(tmp_path, SMOLLM2_135M)
    found = resolve(build_config("llama-3.2-1b", options={"model": str(folder)}))
    shape = found.shape
    assert (shape.num_layers, shape.hidden_size, shape.num_heads, shape.num_kv_heads, shape.head_dim) == (
        30,
        576,
        9,
        3,
        64,
    )
    assert shape.vocab_size == 49152 and shape.tie_word_embeddings and shape.parameters == 134_515_008
    assert found.origin == str(folder / "config.json")
    assert found.describe().startswith(f"shape from {folder}/config.json: 30 layers, hidden 576, 9 heads (3 KV) of 64")


@pytest.mark.parametrize(
    "config, parameters",
    [
        (QWEN2_5_0_5B, 494_032_768),
        (MISTRAL_7B, 7_241_732_096),
        ({"model_type": "llama", **LLAMA_3_2_3B_ARCHITECTURE}, 3_212_749_824),
        ({"model_type": "llama", **LLAMA_3_1_8B_ARCHITECTURE}, 8_030_261_248),
    ],
)
def test_parameter_counts_match_transformers(config, parameters):
    """Qwen2's q/k/v biases (its model type, not a key, says so), Mistral's missing head_dim (hidden / heads), and the
    3B (tied) and 8B (untied) presets count what transformers builds."""
    shape, problem = from_config_json(config, "config.json")
    assert problem is None and shape.parameters == parameters


def test_qwen2_biases_are_on_q_k_v_only():
    """A Qwen2 shape has biases on q, k and v and none on o; a Llama shape none."""
    names = {name for name, _, _ in from_config_json(QWEN2_5_0_5B, "c")[0].tensors() if name.endswith(".bias")}
    assert {name.split(".")[-2] for name in names} == {"q_proj", "k_proj", "v_proj"}
    assert not any(name.endswith(".bias") for name, _, _ in ModelShape.from_architecture(SMOLLM2_135M).tensors())


def test_models_the_planner_does_not_know_are_unknown_with_a_reason():
    """A GPT-2 config, a mixture of experts and a Llama config without its widths are not planned, each with why."""
    assert "model_type 'gpt2'" in from_config_json({"model_type": "gpt2", "n_embd": 768}, "c")[1]
    assert (
        "mixture-of-experts"
        in from_config_json({**MISTRAL_7B, "model_type": "mistral", "num_local_experts": 8}, "c")[1]
    )
    assert "lacks hidden_size" in from_config_json({"model_type": "llama", "num_hidden_layers": 2}, "c")[1]


def test_precedence_user_architecture_then_config_json_then_preset(tmp_path):
    """An architecture the user wrote wins over config.json; the preset's does not; the preset's model without its
    config.json on this machine plans the preset; another model without one is unknown and shape_of says why."""
    folder = model_folder(tmp_path, SMOLLM2_135M)
    user = build_config("llama-3.2-1b", options={"model": str(folder)}, sets=["architecture.num_hidden_layers=4"])
    assert resolve(user).origin == "the config's architecture" and resolve(user).shape.num_layers == 4
    assert resolve(build_config("llama-3.2-1b", options={"model": str(folder)})).shape.num_layers == 30
    preset = resolve(build_config("llama-3.2-1b"))  # meta-llama/Llama-3.2-1B is in no hub cache here
    assert preset.origin == "preset llama-3.2-1b" and preset.shape == ModelShape.from_architecture(
        LLAMA_3_2_1B_ARCHITECTURE
    )
    other = build_config("llama-3.2-1b", options={"model": "someone/not-cached-anywhere"})
    assert resolve(other).shape is None and "not on this machine" in resolve(other).problem
    with pytest.raises(ConfigError, match="someone/not-cached-anywhere"):
        shape_of(other)


def test_random_init_plans_the_architecture_it_builds(tmp_path):
    """With `init: random` the child builds `architecture`, so that is the shape, even beside a config.json."""
    folder = model_folder(tmp_path, SMOLLM2_135M)
    found = resolve(build_config("llama-3.2-1b", options={"model": str(folder), "init": "random"}))
    assert found.origin == "preset llama-3.2-1b" and found.shape.num_layers == 16


def test_a_cached_hub_models_config_json_is_read(tmp_path, monkeypatch):
    """A hub id whose config.json is in the hub cache plans that config, not the preset's."""
    from tests.unit.test_hub import cache_repo

    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cache_repo(cache, "HuggingFaceTB/SmolLM2-135M", "model", {"config.json": json.dumps(SMOLLM2_135M)})
    found = resolve(build_config("llama-3.2-1b", options={"model": "HuggingFaceTB/SmolLM2-135M"}))
    assert found.shape is not None and found.shape.num_layers == 30 and found.origin.endswith("config.json")


def test_smollm2_plans_small_without_checkpointing_or_paged_adam(tmp_path):
    """SmolLM2-135M on a 16 GB card: a full fine-tune without checkpointing and with torch AdamW, predicted far below
    the 12.6 GiB the 1B preset's shape predicted for it (issue 28), and the same on a T4 (fp16 autocast)."""
    folder = model_folder(tmp_path, SMOLLM2_135M)
    config = build_config("llama-3.2-1b", options={"model": str(folder)})
    for card in (CARD_16GB, T4_16GB):
        choice = choose(config, card, device_budget(card.total_memory))
        assert not choice.plan.lora and not choice.plan.gradient_checkpointing
        assert choice.plan.optimizer == "adamw" and choice.plan.autocast_dtype == ("bf16" if card.bf16 else "fp16")
        assert choice.predicted.reserved < 8 * GIB
    one_b = choose(build_config("llama-3.2-1b"), CARD_16GB, device_budget(H100.total_memory, 15 * GIB))
    assert one_b.predicted.reserved > 12 * GIB and one_b.plan.gradient_checkpointing


def test_3b_and_8b_presets_plan_sensibly():
    """The 3B fine-tunes fully on an 80 GB H100 and with LoRA under a 15 GiB cap; the 8B (32 GB of fp32 weights and
    as much in gradients) keeps a full fine-tune on the H100 only with checkpointing and paged 8-bit AdamW, and under
    15 GiB only LoRA on an NF4 base is predicted to fit it (no plan on a 16-bit or int8 base does)."""
    for name in ("llama-3.2-3b", "llama-3.1-8b"):
        assert PRESETS[name]["model"].startswith("meta-llama/")
    three, eight = build_config("llama-3.2-3b"), build_config("llama-3.1-8b")
    assert not choose(three, H100, device_budget(H100.total_memory)).plan.lora
    assert choose(three, H100, device_budget(H100.total_memory, 15 * GIB)).plan.lora
    on_h100 = choose(eight, H100, device_budget(H100.total_memory))
    assert (
        not on_h100.plan.lora and on_h100.plan.gradient_checkpointing and on_h100.plan.optimizer == "paged_adamw_8bit"
    )
    assert on_h100.predicted.reserved < 0.9 * 80 * GIB
    capped = choose(eight, H100, device_budget(H100.total_memory, 15 * GIB))
    assert capped.plan.quantization == "nf4" and capped.plan.compute_dtype == "bf16" and capped.plan.lora
    assert all(c.fits != "yes" for c in capped.candidates if c.plan.quantization != "nf4")


def test_plan_command_says_where_the_shape_came_from(tmp_path, monkeypatch):
    """`tamer plan --model DIR` plans DIR's shape and says it came from DIR/config.json."""
    from tamer import cli

    monkeypatch.setattr("tamer.daemon.probe.nvml_facts", lambda: None)
    folder = model_folder(tmp_path, SMOLLM2_135M)
    result = CliRunner().invoke(
        cli.app,
        ["plan", "squad", "--model", str(folder), "--gpu-mem", "16GiB", "--json", "--home", str(tmp_path / "home")],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["parameters"] == 134_515_008 and data["shape"]["origin"] == str(folder / "config.json")
    assert data["chosen"]["plan"]["optimizer"] == "adamw"
