"""On a CUDA GPU with bitsandbytes: the quantize_4bit plan (LoRA on an NF4 base, bf16 compute) trains, is SIGKILLed
mid-run, resumes on the same plan from its checkpoint to the uninterrupted run's losses, samples and adapters, bit
for bit, and its export (merged into the full-precision base) loads in transformers.

    pytest -m gpu tests/gpu/test_reach_gpu.py                                  # the tiny preset's shape
    TAMER_REACH_MODEL=/tmp/1b pytest -m gpu tests/gpu/test_reach_gpu.py        # a model folder, e.g. the random 1B
                                                                           # (bench/make_random_model.py)
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from tests.integration.runs import (
    attempts,
    final_steps,
    final_weights,
    kill_child_at_step,
    run_id_of,
    sample_ids,
    start,
    tamer,
)

MODEL = os.environ.get("TAMER_REACH_MODEL")
STEPS = 12
SHAPE = ["--model", MODEL, "--set", "tokenizer=bundled"] if MODEL else ["--preset", "tiny"]
ARGS = [
    "run",
    "squad",
    *SHAPE,
    "--data",
    "bundled",
    "--device",
    "cuda",
    "--max-steps",
    str(STEPS),
    "--set",
    "checkpoint_every=4",
    "--set",
    "start_rungs=[quantize_4bit]",
    "--set",
    "eval.squad_samples=0",
    "--set",
    "export.enabled=false",
    "--set",
    "restart_backoff=0",
    "--set",
    "kill_backoff=0",
]
DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
"""cuBLAS without split reductions whose order varies between runs (the same setting for both runs)."""


def _needs_bitsandbytes() -> None:
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted NF4 run."""
    _needs_bitsandbytes()
    home = tmp_path_factory.mktemp("reach")
    result = tamer(*ARGS, home=home, extra_env=DETERMINISTIC)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    return {"home": home, "run_id": run_id}


@pytest.mark.gpu
def test_nf4_plan_resumes_exactly_after_sigkill(baseline, tmp_path):
    """The run trains LoRA on an NF4 base with bf16 compute; killed at step 6, it resumes on the same plan from
    step 4 and ends with the uninterrupted run's per-step losses, samples and adapter tensors, bit for bit."""
    home, run_id = baseline["home"], baseline["run_id"]
    (row,) = attempts(home, run_id)
    plan = json.loads(row["plan_json"])
    assert (plan["quantization"], plan["compute_dtype"], plan["lora"]) == ("nf4", "bf16", True)
    process, killed_id = start(*ARGS, home=tmp_path, extra_env=DETERMINISTIC)
    kill_child_at_step(tmp_path, killed_id, 1, 6)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    rows = attempts(tmp_path, killed_id)
    assert rows[0]["signal"] == signal.SIGKILL and rows[0]["outcome"] == "outside_kill"
    assert rows[1]["resumed_from_step"] == 4 and rows[-1]["outcome"] == "done"
    assert json.loads(rows[1]["plan_json"]) == json.loads(rows[0]["plan_json"]) == plan
    assert sample_ids(tmp_path, killed_id) == sample_ids(home, run_id)
    assert final_steps(tmp_path, killed_id, "loss") == final_steps(home, run_id, "loss")
    weights, expected = final_weights(tmp_path, killed_id), final_weights(home, run_id)
    assert weights.keys() == expected.keys() and all("lora_" in name for name in expected)
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), f"{name} differs from the uninterrupted run"


@pytest.mark.gpu
def test_nf4_export_loads_in_transformers_unquantized(baseline, tmp_path):
    """`tamer export` of the NF4 run writes a merged model without a quantization config that transformers loads
    and runs on the GPU to finite logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    result = tamer("export", baseline["run_id"], "-o", str(out), home=baseline["home"])
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to("cuda").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["Context: The river runs north.\nQuestion: Which way?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch.to("cuda")).logits
    assert logits.shape[-1] == config["vocab_size"] and torch.isfinite(logits).all()
