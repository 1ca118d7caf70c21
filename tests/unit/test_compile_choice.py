"""Which plans compile their decoder layers: `auto` only for one CUDA process with ordinary weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tamer.engine.model import should_compile  # noqa: E402
from tamer.plan import Plan  # noqa: E402

PLAN = Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8)
CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def test_auto_compiles_one_cuda_process_with_ordinary_weights():
    """auto: CUDA yes; CPU, int8 bases, LoRA adapters and several processes no."""
    assert should_compile("auto", PLAN, CUDA)
    assert not should_compile("auto", PLAN, CPU)
    assert not should_compile("auto", PLAN.replace(quantization="int8", lora=True), CUDA)
    assert not should_compile("auto", PLAN.replace(lora=True), CUDA)
    assert not should_compile("auto", PLAN.replace(world_size=2), CUDA)
    assert should_compile(True, PLAN.replace(lora=True), CUDA)


def test_compiled_lora_layers_share_one_graph():
    """With LoRA (compile: true), every decoder layer runs one Dynamo graph, the first included: its input is made to
    require a gradient, as the others' does (traced with the eager backend: no code generation)."""
    import torch._dynamo
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters
    from transformers import LlamaConfig, LlamaForCausalLM

    from tamer.engine.model import compile_layers
    from tamer.presets import TINY_ARCHITECTURE

    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(LlamaConfig(**{**TINY_ARCHITECTURE, "num_hidden_layers": 3})),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.config.use_cache = False  # as build_model leaves it: a KV cache would guard each layer apart
    torch._dynamo.reset()
    counters.clear()
    assert compile_layers(model, backend="eager") == 3
    ids = torch.randint(0, 32000, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


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


def test_cudnn_attention_only_for_one_batch_shape():
    """auto: cuDNN's attention (a plan per new shape) only where batches have one shape; true/false obeyed;
    the flag is set for CUDA processes before anything compiles and left alone on CPU; the batching mode
    decides, not the hash of what decides the result."""
    from tamer.config import build_config
    from tamer.engine.model import set_cudnn_attention, use_cudnn_attention

    assert use_cudnn_attention("auto", "max_len") and not use_cudnn_attention("auto", "packed")
    assert not use_cudnn_attention("auto", "bucket") and not use_cudnn_attention("auto", "longest")
    assert use_cudnn_attention(True, "packed") and not use_cudnn_attention(False, "max_len")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    tag = torch.compiler.config.cache_key_tag
    try:
        torch.compiler.config.cache_key_tag = "users-own"
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert set_cudnn_attention(CPU, False) is None and torch.backends.cuda.cudnn_sdp_enabled()
        said = set_cudnn_attention(CUDA, False)
        assert said and said.startswith("cuDNN attention off") and not torch.backends.cuda.cudnn_sdp_enabled()
        assert set_cudnn_attention(CUDA, False) is None  # unchanged: nothing to say
        assert torch.compiler.config.cache_key_tag == "users-own,tamer-cudnn_sdp=0"  # compiled graphs kept apart
        assert set_cudnn_attention(CUDA, True) == "cuDNN attention on" and torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.compiler.config.cache_key_tag == "users-own,tamer-cudnn_sdp=1"
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
        torch.compiler.config.cache_key_tag = tag
    assert build_config("tiny", sets=["cudnn_attention=true"]).cudnn_attention is True
    assert build_config("tiny").config_hash() == build_config("tiny", sets=["cudnn_attention=false"]).config_hash()


def test_decoding_forbids_cudnn_attention_inside_and_restores_it_after(monkeypatch):
    """SQuAD evaluation decodes with a KV cache (a new length at every token): under `auto` cuDNN's attention
    is forbidden while it decodes, whatever training chose, and the flag is as before afterwards."""
    from tamer.config import build_config
    from tamer.engine import result

    seen: list[bool] = []
    monkeypatch.setattr(
        result, "generate_answers", lambda *args: seen.append(torch.backends.cuda.cudnn_sdp_enabled()) or ([], 1)
    )
    monkeypatch.setattr(result, "prompts_for", lambda records, tokenizer, max_seq_len: ([], [], []))
    monkeypatch.setattr(result, "score", lambda answers, golds: {"exact_match": 0.0, "f1": 0.0, "questions": 0})
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 0)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        for sets, allowed in (([], False), (["cudnn_attention=true"], True)):
            result.evaluate(None, None, build_config("tiny", sets=sets), [], CUDA, 0)
            assert seen[-1] is allowed and torch.backends.cuda.cudnn_sdp_enabled()  # restored after
        result.evaluate(None, None, build_config("tiny"), [], CPU, 0)
        assert seen[-1] is True  # CPU: left alone
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
