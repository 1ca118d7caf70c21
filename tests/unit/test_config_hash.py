"""config_hash: what decides a training result, and nothing else. Runs in existing homes resume only when the hash
their checkpoints carry is the one their config gives today, so the values below are pinned."""

from __future__ import annotations

import pytest

from tamer.config import build_config

# Computed by tamer at 3492a19 (before config_hash was derived from the fields' marks); they must never change.
PINNED = [
    ("llama-3.2-1b", {}, [], "a52d3f7c817d4a67"),
    ("tiny", {"recipe": "chat"}, [], "edab6212c63bab68"),
    (
        "tiny",
        {"recipe": "chat"},
        ["train_on=all", "eval.em_f1=true", "notify.webhook=https://x.y", "trackers=[tensorboard]"],
        "99b6f182c23c1535",
    ),
]


@pytest.mark.parametrize(
    ("preset", "options", "sets", "expected"), PINNED, ids=["squad-default", "chat-tiny", "chat-tiny-keys"]
)
def test_the_hash_of_existing_configs_never_changes(preset, options, sets, expected):
    """The default squad config and tiny chat configs hash as they always did (existing runs resume)."""
    assert build_config(preset, options=options, sets=sets).config_hash() == expected


def test_every_key_is_marked_as_result_affecting_or_not():
    """Every RunConfig key carries a result mark (True, False or when_set): a new key cannot count silently."""
    from tamer.config import RESULT_MARKS, RunConfig, result_mark

    unmarked = [name for name, field in RunConfig.model_fields.items() if result_mark(field) not in RESULT_MARKS]
    assert not unmarked, f"mark these keys with json_schema_extra={{'result': True | False | 'when_set'}}: {unmarked}"


def test_the_marks_decide_what_the_hash_sees():
    """A result key changes the hash; a key marked False does not; a when_set key counts only once it is set."""
    base = build_config("tiny", options={"recipe": "chat"})
    assert build_config("tiny", options={"recipe": "chat"}, sets=["seed=7"]).config_hash() != base.config_hash()
    assert build_config("tiny", options={"recipe": "chat"}, sets=["max_restarts=3"]).config_hash() == base.config_hash()
    assert (
        build_config("tiny", options={"recipe": "chat"}, sets=["train_on=assistant"]).config_hash()
        == base.config_hash()
    )
    assert (
        build_config("tiny", options={"recipe": "chat"}, sets=["train_on=last_assistant"]).config_hash()
        != base.config_hash()
    )
