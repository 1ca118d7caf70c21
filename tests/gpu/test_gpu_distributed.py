"""On a machine with 2 CUDA GPUs: torchrun + NCCL. An OOM on one rank ends the group at once (the other
rank, blocked in an NCCL all-reduce, is not left waiting for the collective timeout), and real OOMs on
both ranks under a per-GPU cap escalate both together (run: `pytest -m gpu tests/gpu`; on shared hosts
keep NCCL_NVLS_ENABLE=0)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.gpu.test_gpu_escalation import ARCHITECTURE
from tests.integration.runs import TINY, attempts, query, run_id_of, tamer

two_gpus = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)


@pytest.mark.gpu
@two_gpus
def test_injected_oom_on_rank_1_ends_the_nccl_group_promptly(tmp_path):
    """distributed.timeout is 600 s: rank 0 waiting in the all-reduce would hold the attempt that long.
    The attempt must end within a minute of rank 1's OOM, then resume on both GPUs and finish."""
    home = tmp_path / "home"
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--device",
        "cuda",
        "--gpus",
        "2",
        "--max-steps",
        "8",
        "--set",
        "checkpoint_every=4",
        "--inject",
        "oom:step=6,phase=backward,rank=1,once",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["cuda_oom", "done"] and json.loads(rows[0]["detail_json"])["rank"] == 1
    last_step_at = query(home, "SELECT max(wall_time) FROM steps WHERE run_id = ? AND attempt = 1", (run_id,))[0][0]
    assert rows[0]["ended_at"] - last_step_at < 60
    per_rank = query(home, "SELECT rank_memory_json FROM steps WHERE run_id = ? AND attempt = 2", (run_id,))
    assert all(
        len(json.loads(r[0])) == 2 and all(entry["mem_peak"] > 0 for entry in json.loads(r[0])) for r in per_rank
    )


@pytest.mark.gpu
@two_gpus
def test_real_ooms_on_both_gpus_escalate_together(tmp_path):
    """323M parameters, full fine-tune with fp32 AdamW under a 4.5 GiB cap per GPU: every rank dies of a
    real CUDA OOM (DDP replicates the model state); one escalation applies to both and the run finishes.
    The card ladder, literally: the planner would pick a plan that fits at once."""
    config = tmp_path / "gpu.yaml"
    config.write_text(
        json.dumps(
            {
                "architecture": ARCHITECTURE,
                "effective_batch_size": 4,
                "micro_batch_size": 2,
                "max_seq_len": 256,
                "ladder": {
                    "mode": "card",
                    "order": ["paged_adamw_8bit", "gradient_checkpointing", "split_micro_batch"],
                },
            }
        )
    )
    home = tmp_path / "home"
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--config",
        str(config),
        "--device",
        "cuda",
        "--gpus",
        "2",
        "--gpu-mem-cap",
        "4.5GiB",
        "--max-steps",
        "6",
        "--set",
        "checkpoint_every=3",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(home, run_id)
    assert rows[0]["outcome"] == "cuda_oom" and rows[-1]["outcome"] == "done"
    assert [kind for (kind,) in query(home, "SELECT kind FROM events WHERE run_id = ?", (run_id,))].count(
        "escalate"
    ) == len(rows) - 1
    assert all(json.loads(r["plan_json"])["world_size"] == 2 for r in rows)
    peaks = query(home, "SELECT max(mem_peak) FROM steps WHERE run_id = ?", (run_id,))[0][0]
    assert peaks < 4.5 * 2**30
