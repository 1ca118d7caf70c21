"""The torch-free tokenizer (tamer/recipes/tokens.py): the same ids as transformers' tokenizer of the same files,
its special tokens and chat template read from a hub cache without the network."""

from __future__ import annotations

import json
import shutil

import pytest

from tamer.errors import ModelError
from tamer.recipes import tokens
from tamer.recipes.squad import BUNDLED_TOKENIZER, load_tokenizer
from tests.unit.test_hub import cache_repo, hub_cache  # noqa: F401  (the fixture)

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}"


def test_ids_and_special_tokens_match_transformers():
    """Encoding without special tokens gives transformers' ids for the same text; BOS and EOS are the same tokens."""
    ours, theirs = tokens.load("bundled", "tiny"), load_tokenizer("bundled", "tiny")
    text = "Context: The Louvre, in Paris.\nQuestion: Where?"
    assert ours.ids(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id) == (1, 2)


def test_a_cached_hub_tokenizer_loads_offline_with_its_chat_template(hub_cache, monkeypatch):  # noqa: F811
    """With HF_HUB_OFFLINE=1 a cached repository's tokenizer.json and tokenizer_config.json are read (its chat
    template and special tokens in AddedToken form); the files it never had count as absent."""
    config = {"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>", "chat_template": TEMPLATE}
    cache_repo(hub_cache, "org/chatty", "model", {"tokenizer_config.json": json.dumps(config)})
    snapshot = next((hub_cache / "models--org--chatty" / "snapshots").iterdir())
    shutil.copy(BUNDLED_TOKENIZER / "tokenizer.json", snapshot / "tokenizer.json")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = tokens.load(None, "org/chatty")
    assert (loaded.chat_template, loaded.bos_id, loaded.eos_id) == (TEMPLATE, 1, 2)
    assert loaded.described == "the tokenizer of model org/chatty"
    with pytest.raises(ModelError, match="tokenizer org/absent: could not reach the hub and there is no cached copy"):
        tokens.load("org/absent", "tiny")
