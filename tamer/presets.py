"""Presets: the starting configs `--preset NAME` names, as plain config keys (tamer/config.py validates them).

    tamer run squad --preset tiny        # a two-layer random Llama on the bundled SQuAD slice, CPU-sized
    tamer run chat --preset tiny         # the same model on the bundled chat sample, rendered with ChatML

A preset is the first layer of a config: the YAML file (`--config`), command-line options and `--set`
go over it. Adding one is adding an entry to PRESETS. RECIPE_DEFAULTS holds a preset's keys for one recipe
only, applied over the preset when that recipe runs (and under the YAML file and the options).

A preset's `architecture` is its model's published config.json (the fields that decide memory): what
`init: random` builds, and the shape the planner falls back to when the preset's own model's config.json is
not on this machine. A pretrained model's own config.json comes first (tamer/planner/shape.py), so
`--model` with another model never plans the preset's shape.
"""

from __future__ import annotations

from typing import Any

LLAMA_3_2_1B_ARCHITECTURE: dict[str, Any] = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

LLAMA_3_2_3B_ARCHITECTURE: dict[str, Any] = {
    **LLAMA_3_2_1B_ARCHITECTURE,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "head_dim": 128,
}
"""meta-llama/Llama-3.2-3B's config.json: the 1B's rope and vocabulary, tied embeddings, 3.21 B parameters."""

LLAMA_3_1_8B_ARCHITECTURE: dict[str, Any] = {
    **LLAMA_3_2_1B_ARCHITECTURE,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
}
"""meta-llama/Llama-3.1-8B's config.json: untied embeddings (a separate 0.5 B-parameter LM head), 8.03 B parameters."""

TINY_ARCHITECTURE: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


PRESETS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "model": "meta-llama/Llama-3.2-1B",
        "architecture": LLAMA_3_2_1B_ARCHITECTURE,
    },
    "llama-3.2-3b": {
        "model": "meta-llama/Llama-3.2-3B",
        "architecture": LLAMA_3_2_3B_ARCHITECTURE,
    },
    "llama-3.1-8b": {
        "model": "meta-llama/Llama-3.1-8B",
        "architecture": LLAMA_3_1_8B_ARCHITECTURE,
    },
    "tiny": {
        "model": "tiny-llama",
        "init": "random",
        "architecture": TINY_ARCHITECTURE,
        "tokenizer": "bundled",
        "data": "bundled",
        "learning_rate": 1e-3,
        "eval_samples": 64,
        "checkpoint_every": 10,
        "eval": {"squad_samples": 16, "squad_max_new_tokens": 16},
    },
}

RECIPE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # The bundled Mistral-v1 tokenizer has no chat template: the tiny preset's chat runs render ChatML.
    "tiny": {"chat": {"chat_template": "chatml"}},
}
