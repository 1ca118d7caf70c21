"""Which plans compile their decoder layers: `auto` only for one CUDA process with ordinary weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tamer.engine.model import should_compile  # noqa: E402
from tamer.plan import Plan  # noqa: E402

PLAN = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def test_auto_compiles_one_cuda_process_with_ordinary_weights():
    """auto: CUDA yes; CPU, int8 bases and several processes no."""
    assert should_compile("auto", PLAN, CUDA)
    assert not should_compile("auto", PLAN, CPU)
    assert not should_compile("auto", PLAN.replace(quantization="int8", lora=True), CUDA)
    assert not should_compile("auto", PLAN.replace(world_size=2), CUDA)


def test_true_and_false_are_obeyed():
    """An explicit true/false wins over the device."""
    assert should_compile(True, PLAN, CPU) and not should_compile(False, PLAN, CUDA)


def test_yaml_spellings_of_compile_parse():
    """`--set compile=off` (YAML's false), `true` and `auto` are accepted; anything else is a config error."""
    from tamer.config import build_config
    from tamer.errors import ConfigError

    assert build_config("tiny", sets=["compile=off"]).compile is False
    assert build_config("tiny", sets=["compile=true"]).compile is True
    assert build_config("tiny").compile == "auto"
    with pytest.raises(ConfigError, match="compile"):
        build_config("tiny", sets=["compile=sometimes"])
