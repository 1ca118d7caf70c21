"""The quantize_4bit rung end to end on a CPU (bitsandbytes' CPU back end): a tiny run on an NF4 base trains
LoRA adapters, checkpoints, is SIGKILLed and resumes on the same plan to the uninterrupted run's adapters and samples,
bit for bit; its export merges the adapters into the full-precision base, not into the 4-bit weights. Skipped
without bitsandbytes."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from tests.integration.runs import (
    TINY,
    attempts,
    final_weights,
    kill_child_at_step,
    run_id_of,
    sample_ids,
    start,
    tamer,
)

bnb = pytest.importorskip("bitsandbytes")

STEPS = 12
ARGS = [
    "run",
    "squad",
    *TINY,
    "--max-steps",
    str(STEPS),
    "--set",
    "checkpoint_every=4",
    "--set",
    "start_rungs=[quantize_4bit]",
    "--set",
    "restart_backoff=0",
    "--set",
    "kill_backoff=0",
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted NF4 run."""
    home = tmp_path_factory.mktemp("four-bit")
    result = tamer(*ARGS, home=home)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    return {"home": home, "run_id": run_id, "weights": final_weights(home, run_id), "samples": sample_ids(home, run_id)}


def test_an_nf4_run_trains_adapters_on_a_4bit_base(baseline):
    """The plan is LoRA on an NF4 base with bf16 compute (the CPU has bf16); only adapter weights are checkpointed."""
    (row,) = attempts(baseline["home"], baseline["run_id"])
    plan = json.loads(row["plan_json"])
    assert (plan["quantization"], plan["compute_dtype"], plan["lora"]) == ("nf4", "bf16", True)
    assert plan["rungs"] == ["lora", "quantize_4bit"] and row["outcome"] == "done"
    assert baseline["weights"] and all("lora_" in name for name in baseline["weights"])


def test_sigkill_resumes_the_nf4_plan_exactly(baseline, tmp_path):
    """SIGKILL of the child at step 6: the next attempt reloads the NF4 base under the same plan, resumes from step 4,
    and ends with the uninterrupted run's adapters (bit for bit) and samples."""
    process, run_id = start(*ARGS, home=tmp_path)
    kill_child_at_step(tmp_path, run_id, 1, 6)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    rows = attempts(tmp_path, run_id)
    assert rows[0]["signal"] == signal.SIGKILL and rows[0]["outcome"] == "outside_kill"
    assert rows[1]["resumed_from_step"] == 4 and rows[-1]["outcome"] == "done"
    assert json.loads(rows[1]["plan_json"]) == json.loads(rows[0]["plan_json"])
    weights = final_weights(tmp_path, run_id)
    assert weights.keys() == baseline["weights"].keys()
    for name, tensor in baseline["weights"].items():
        assert torch.equal(weights[name], tensor), f"{name} differs from the uninterrupted run"
    assert sample_ids(tmp_path, run_id) == baseline["samples"]


def test_export_merges_into_the_full_precision_base(baseline, tmp_path):
    """`tamer export --dtype fp32` of the NF4 run: each projection is the fp32 base weight plus the adapter's
    scale x B @ A, to float rounding; merging into the dequantized NF4 weight instead would be off by the
    quantization error, far more (negative control)."""
    from safetensors.torch import load_file

    home, run_id = baseline["home"], baseline["run_id"]
    out = tmp_path / "export"
    result = tamer("export", run_id, "-o", str(out), "--dtype", "fp32", home=home)
    assert result.returncode == 0, result.stderr
    run_dir = home / "runs" / run_id
    newest = max((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    manifest = json.loads((newest / "manifest.json").read_text())
    base = load_file(next((run_dir / manifest["base"]).glob("*.safetensors")))
    exported = load_file(out / "model.safetensors")
    adapter = load_file(newest / "adapter" / "adapter_model.safetensors")
    config = json.loads((newest / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    name = "model.layers.0.self_attn.q_proj.weight"
    prefix = "base_model.model." + name.removesuffix(".weight")
    delta = scale * adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"]
    assert delta.abs().max() > 0  # the adapters trained
    assert torch.allclose(exported[name], base[name] + delta, atol=1e-6)
    packed, state = bnb.functional.quantize_4bit(base[name], blocksize=64, compress_statistics=True, quant_type="nf4")
    dequantized = bnb.functional.dequantize_4bit(packed, state)
    assert (exported[name] - (dequantized + delta)).abs().max() > 100 * 1e-6
