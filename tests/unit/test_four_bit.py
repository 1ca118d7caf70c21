"""The planner's NF4 storage model (tamer/planner/estimate.py `nf4_bytes`, `weights_bytes`) against the bytes
bitsandbytes really allocates on a CPU: one tensor quantized as transformers' BitsAndBytesConfig does it (NF4,
blocksize 64, double quantization), and a whole tiny model loaded 4-bit the way the child loads it. Skipped without
bitsandbytes."""

from __future__ import annotations

import pytest

from tamer.plan import Plan
from tamer.planner.estimate import ModelShape, nf4_bytes, weights_bytes
from tamer.presets import TINY_ARCHITECTURE

bnb = pytest.importorskip("bitsandbytes")
torch = pytest.importorskip("torch")


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (a tensor shared by two owners counts once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _quant_state_tensors(state) -> list:
    return [state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]


@pytest.mark.parametrize("shape", [(64, 128), (2048, 8192), (100, 77), (576, 1536)])
def test_nf4_bytes_is_what_bitsandbytes_allocates_for_one_tensor(shape):
    """Packed codes, 8-bit absmax per 64, fp32 absmax per 256 of those, the two code books and the offset: the sum of
    the storages bitsandbytes' quantize_4bit returns, to the byte, also where the size is not a multiple of 64."""
    weight = torch.randn(*shape)
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert _storage_bytes([packed, *_quant_state_tensors(state)]) == nf4_bytes(weight.numel())


def test_nf4_bytes_counts_double_quantization():
    """Without double quantization bitsandbytes keeps an fp32 absmax per 64 weights: more than nf4_bytes (negative
    control: the model is of the compressed layout, not of any 4-bit layout)."""
    weight = torch.randn(2048, 8192)
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=False, quant_type="nf4")
    plain = _storage_bytes([packed, state.absmax, state.code])
    assert plain > nf4_bytes(weight.numel()) + weight.numel() // 64 * 2


def test_a_model_loaded_4bit_holds_the_bytes_weights_bytes_predicts(tmp_path):
    """The tiny Llama loaded as the child loads an NF4 plan (tamer/engine/model.py: NF4, double quantization, fp32
    for the rest, prepare_model_for_kbit_training) holds exactly `weights_bytes` of parameters and quantization
    state."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_ARCHITECTURE)).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path,
        dtype=torch.float32,
        device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tensors = list(model.parameters())
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == 7 * TINY_ARCHITECTURE["num_hidden_layers"]
    tensors += [t for m in linears for t in _quant_state_tensors(m.weight.quant_state)]
    plan = Plan(8, 1, 8, lora=True, quantization="nf4", compute_dtype="bf16")
    assert _storage_bytes(tensors) == weights_bytes(ModelShape.from_architecture(TINY_ARCHITECTURE), plan)
