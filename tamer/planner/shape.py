"""The shape the planner plans for (layers, widths, heads, vocabulary, tied head), and where it came from.

    found = resolve(config)          # ShapeSource: .shape (None when unknown), .describe()
    found.describe()                 # "shape from /models/smollm2/config.json: 30 layers, hidden 576, ..."

Precedence, first that applies:
1. `init: random`: the config's `architecture` (what the child builds), whether the preset's or the user's;
2. an `architecture` the user wrote (YAML or `--set`; anything other than the preset's own);
3. the pretrained model's own config.json: a local folder's, or the hub cache's copy of a hub id's (`tamer run`'s
   preflight puts it there); read as JSON, no torch, no network. Llama, Mistral, Qwen2 and Qwen3 configs are
   read (Qwen2's q/k/v biases counted; Qwen3's q/k norms, 2 x head_dim weights a layer, left out);
   mixture-of-experts models and other types are not planned: the run escalates by measurement instead;
4. the preset's `architecture`, when the model is the preset's own (its config.json is not on this machine);
5. unknown: the planner does not plan (the card ladder takes over) and `tamer plan` says why.
So `--model DIR` plans DIR's shape, never the preset's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tamer.hub import config_json_on_disk
from tamer.planner.estimate import ModelShape
from tamer.presets import PRESETS

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""config.json `model_type`s whose decoder layers are a Llama's (q/k/v/o and gate/up/down projections, RMSNorm)."""
REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
EXPERT_FIELDS = ("num_local_experts", "num_experts")


@dataclass(frozen=True)
class ShapeSource:
    """The shape (None when unknown), where it came from, and why it is unknown."""

    shape: ModelShape | None
    origin: str
    """`/models/x/config.json`, `preset llama-3.2-1b`, `the config's architecture`; empty when unknown."""
    problem: str | None = None

    def describe(self) -> str:
        """One clause for the `created` event and `tamer plan`."""
        if self.shape is None:
            return f"shape unknown ({self.problem})"
        return f"shape from {self.origin}: {summary(self.shape)}"


def summary(shape: ModelShape) -> str:
    """`30 layers, hidden 576, 9 heads (3 KV) of 64, MLP 1,536, vocab 49,152, tied embeddings: 134.5 M parameters`."""
    biases = ", q/k/v biases" if shape.qkv_bias else ", attention biases" if shape.attention_bias else ""
    return (
        f"{shape.num_layers} layers, hidden {shape.hidden_size:,}, {shape.num_heads} heads ({shape.num_kv_heads} KV) of "
        f"{shape.head_dim}, MLP {shape.intermediate_size:,}, vocab {shape.vocab_size:,}, "
        f"{'tied' if shape.tie_word_embeddings else 'untied'} embeddings{biases}: {shape.parameters / 1e6:,.1f} M parameters"
    )


def preset_architecture(config: Any) -> dict[str, Any] | None:
    return PRESETS.get(config.preset, {}).get("architecture")


def from_config_json(data: Any, where: str) -> tuple[ModelShape | None, str | None]:
    """(the shape of a config.json's fields, None) or (None, why it cannot be planned)."""
    if not isinstance(data, dict):
        return None, f"{where} is not a JSON object"
    model_type = data.get("model_type")
    if model_type not in MODEL_TYPES:
        return None, (
            f"{where} names model_type {model_type!r}; the planner knows {', '.join(MODEL_TYPES)} decoders "
            "(set `architecture` to plan another with a Llama's shape)"
        )
    if any((data.get(name) or 0) > 1 for name in EXPERT_FIELDS):
        return None, f"{where} is a mixture-of-experts model, which the planner does not model"
    missing = [name for name in REQUIRED_FIELDS if not isinstance(data.get(name), int)]
    if missing:
        return None, f"{where} lacks {', '.join(missing)}"
    return ModelShape.from_architecture(data), None


def resolve(config: Any) -> ShapeSource:
    """The shape `config` trains, by the precedence of the module docstring."""
    preset = preset_architecture(config)
    if config.architecture and (config.init == "random" or config.architecture != preset):
        origin = f"preset {config.preset}" if config.architecture == preset else "the config's architecture"
        return ShapeSource(ModelShape.from_architecture(config.architecture), origin)
    path = config_json_on_disk(config.model)
    if path is not None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return ShapeSource(None, "", f"{path} could not be read ({error})")
        shape, problem = from_config_json(data, str(path))
        return ShapeSource(shape, str(path), problem)
    if preset and config.model == PRESETS[config.preset].get("model"):
        return ShapeSource(ModelShape.from_architecture(preset), f"preset {config.preset}")
    return ShapeSource(
        None,
        "",
        f"the config.json of {config.model} is not on this machine (neither a local folder nor in the hub cache)",
    )
