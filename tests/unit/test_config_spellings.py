"""Config rough edges: floats in any spelling, "did you mean" for unknown keys, other trainers' names
refused with tamer's, strict start_plan, and settings that used to be silently ignored."""

from __future__ import annotations

import pytest

from tamer.config import build_config
from tamer.errors import ConfigError


@pytest.mark.parametrize(
    "spelling, value", [("1e-4", 1e-4), ("2E-5", 2e-5), ("3.0e-4", 3e-4), (".5e-3", 5e-4), ("+1e-3", 1e-3)]
)
def test_float_fields_take_any_float_spelling(spelling, value, tmp_path):
    """`learning_rate: 1e-4` in YAML and `--set learning_rate=2E-5` are numbers, not strings."""
    path = tmp_path / "config.yaml"
    path.write_text(f"learning_rate: {spelling}\n")
    assert build_config("tiny", path).learning_rate == pytest.approx(value)
    assert build_config("tiny", sets=[f"learning_rate={spelling}"]).learning_rate == pytest.approx(value)


def test_a_word_is_still_not_a_float():
    """Text that is no number spelling (nan, a word) stays an error."""
    for text in ("nan", "fast", "1e"):
        with pytest.raises(ConfigError, match="learning_rate: expected a number"):
            build_config("tiny", sets=[f"learning_rate={text}"])


def test_unknown_key_suggests_the_close_one():
    """A misspelt key, top-level or nested, names the key it is closest to."""
    with pytest.raises(ConfigError, match="learnin_rate: unknown key; did you mean learning_rate"):
        build_config("tiny", sets=["learnin_rate=0.1"])
    with pytest.raises(ConfigError, match="ladder.modes: unknown key; did you mean mode"):
        build_config("tiny", sets=["ladder.modes=card"])


@pytest.mark.parametrize(
    "name, tamer_name",
    [
        ("gradient_accumulation_steps", "effective_batch_size"),
        ("per_device_train_batch_size", "micro_batch_size"),
        ("num_train_epochs", "epochs"),
    ],
)
def test_other_trainers_names_are_refused_with_tamers(name, tamer_name):
    """HF/axolotl spellings are refused with the tamer key to use instead."""
    with pytest.raises(ConfigError, match=f"{name}: not a tamer key.*{tamer_name}"):
        build_config("tiny", sets=[f"{name}=2"])


@pytest.mark.parametrize(
    "plan, message",
    [
        ("{gradient_checkpoint: true}", "did you mean gradient_checkpointing"),
        ("{optimizer: adam}", "start_plan.optimizer: expected one of"),
    ],
)
def test_start_plan_is_strict(plan, message):
    """An unknown key or an impossible value in start_plan is an error, not silently ignored."""
    with pytest.raises(ConfigError, match=message):
        build_config("tiny", sets=[f"start_plan={plan}"])


def test_start_plan_that_is_a_plan_is_accepted():
    """A well-formed start_plan still builds (the strict check refuses only what is wrong)."""
    config = build_config(
        "tiny", sets=["start_plan={micro_batch_size: 4, grad_accumulation: 2, gradient_checkpointing: true}"]
    )
    assert config.start_plan["gradient_checkpointing"] is True


@pytest.mark.parametrize("cap", ["0", "0GiB"])
def test_zero_gpu_mem_cap_is_an_error(cap):
    """--gpu-mem-cap 0 is refused instead of training somewhere else."""
    with pytest.raises(ConfigError, match="gpu_mem_cap: .* no memory at all"):
        build_config("tiny", options={"gpu_mem_cap": cap})


def test_start_rungs_must_be_allowed_by_the_ladder():
    """A start rung that ladder.order leaves out is an error; chunked_loss (the planner's) is not."""
    with pytest.raises(ConfigError, match="start_rungs\\[0\\]: 'lora' is not in ladder.order"):
        build_config("tiny", sets=["start_rungs=[lora]", "ladder.order=[gradient_checkpointing]"])
    assert build_config(
        "tiny", sets=["start_rungs=[chunked_loss]", "ladder.order=[gradient_checkpointing]"]
    ).start_rungs == ["chunked_loss"]


def test_model_with_the_tiny_preset_is_an_error():
    """--model with --preset tiny would be ignored, so it is refused with what to run instead."""
    with pytest.raises(ConfigError, match="--model my/model: the tiny preset .* --preset llama-3.2-1b --model MODEL"):
        build_config("tiny", options={"model": "my/model"})
