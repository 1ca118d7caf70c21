"""Two processes through torchrun on CPU (gloo), tiny preset: an OOM on one rank stops the whole group and
escalates every rank once; a lost rank restarts without escalation; a stop checkpoints every rank at the
same step; the result equals one process training the same effective batch."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from tests.integration.runs import (
    TINY,
    attempts,
    events,
    final_weights,
    pid_alive,
    query,
    run_id_of,
    sample_ids,
    start,
    tamer,
    wait_for,
)

# One torch thread in every process, the reference's included: float sums reassociate with the thread
# count, and torchrun's ranks would otherwise get one thread against the reference's two (or more).
THREADS = ["--set", "torch_threads=1"]
STEPS = ["--max-steps", "10", "--set", "checkpoint_every=4", "--set", "eval_samples=16", *THREADS]
TWO = ["--gpus", "2"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, micro-batch 4 x accumulation 2 = the effective batch 8 of two ranks x 4."""
    home = tmp_path_factory.mktemp("one") / "home"
    result = tamer("run", "squad", *TINY, *STEPS, "--micro-batch-size", "4", home=home)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    return {"weights": final_weights(home, run_id), "samples": sample_ids(home, run_id)}


def ranks_dead(home, run_id: str, attempt: int) -> bool:
    folder = home / "runs" / run_id / "attempts" / str(attempt)
    pids = [int(path.read_text()) for path in folder.glob("pid-rank*")]
    return len(pids) == 2 and not any(pid_alive(pid) for pid in pids)


def test_oom_on_rank_1_stops_both_escalates_once_and_matches_one_process(tmp_path, one_process):
    """Rank 1 alone raises a CUDA OOM in backward of step 6; rank 0 is inside the gradient all-reduce then.
    Both stop (no rank left waiting), the group is classified once (cuda_oom on rank 1), one rung is applied
    to both ranks, they resume from step 4 and finish.

    Final weights vs one process with the same effective batch: rtol 1e-5, atol 1e-6. Each rank trains 4 of
    the step's 8 samples, exactly the micro-batch one process would, and its loss is normalised by the whole
    step's supervised tokens times the world size; DDP divides by 2 (exact) and the all-reduce adds the two
    ranks' gradients, which one process adds in the other order (a + b = b + a in IEEE float). So gloo with 2
    ranks is expected to be bit-exact; the tolerance admits backends that sum in chunks (ring all-reduce,
    NCCL), whose reassociation differs by a few float32 ulps per step."""
    home = tmp_path / "home"
    result = tamer("run", "squad", *TINY, *STEPS, *TWO, "--inject", "oom:step=6,phase=backward,rank=1,once", home=home)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["cuda_oom", "done"]
    assert [r["world_size"] for r in rows] == [2, 2]
    assert rows[0]["message"].startswith("rank 1 of 2: OutOfMemoryError") and rows[0]["phase"] == "backward"
    assert json.loads(rows[0]["detail_json"])["rank"] == 1
    assert [kind for kind, _ in events(home, run_id)].count("escalate") == 1
    first, second = (json.loads(r["plan_json"]) for r in rows)
    assert not first["gradient_checkpointing"] and second["gradient_checkpointing"] and second["world_size"] == 2
    assert second["micro_batch_size"] * second["grad_accumulation"] * second["world_size"] == 8
    assert rows[1]["resumed_from_step"] == 4
    report = json.loads((home / "runs" / run_id / "attempts" / "1" / "exit-rank1.json").read_text())
    assert report["exc_type"] == "OutOfMemoryError" and report["step"] == 6
    assert ranks_dead(home, run_id, 1) and ranks_dead(home, run_id, 2)

    memory = query(home, "SELECT rank_memory_json, host_rss FROM steps WHERE run_id = ? AND attempt = 2", (run_id,))
    assert memory and all(len(json.loads(per_rank)) == 2 for per_rank, _ in memory)
    assert all(rss == max(entry["host_rss"] for entry in json.loads(per_rank)) for per_rank, rss in memory)

    table = tamer("steps", run_id, home=home, extra_env={"COLUMNS": "200"})
    assert "2 x 4 x 1" in table.stdout  # processes x micro-batch x accumulation

    assert sample_ids(home, run_id) == one_process["samples"]
    weights = final_weights(home, run_id)
    assert weights.keys() == one_process["weights"].keys()
    for name, tensor in one_process["weights"].items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_oom_escalates_ddp_to_fsdp_and_keeps_the_optimizer_state(tmp_path, one_process):
    """With fsdp as the only rung, an OOM on rank 0 moves both ranks from DDP to FSDP. The DDP checkpoint
    of step 4 resumes under FSDP with its AdamW moments (one checkpoint format; no optimizer_reset), and
    FSDP checkpoints step 8. Tolerance atol 1e-5 vs one process: FSDP reduce-scatters flattened shards and
    computes the clipping norm from per-shard sums, which reassociates float32 sums; measured 1.9e-6 here."""
    home = tmp_path / "home"
    result = tamer(
        "run",
        "squad",
        *TINY,
        *STEPS,
        *TWO,
        "--set",
        "ladder.order=[fsdp]",
        "--inject",
        "oom:step=6,phase=forward,rank=0,once",
        home=home,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["cuda_oom", "done"]
    assert [json.loads(r["plan_json"])["parallel"] for r in rows] == ["ddp", "fsdp"]
    kinds = [kind for kind, _ in events(home, run_id)]
    assert "optimizer_reset" not in kinds and kinds.count("escalate") == 1
    assert rows[1]["resumed_from_step"] == 4
    assert (home / "runs" / run_id / "checkpoints" / "step-10" / "model" / "model.safetensors").is_file()
    weights = final_weights(home, run_id)
    assert weights.keys() == one_process["weights"].keys()  # the tied head saved once, as one process saves it
    for name, tensor in one_process["weights"].items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_lost_rank_restarts_without_escalation_and_stop_reaches_every_rank(tmp_path):
    """Rank 1 is SIGKILLed at step 3: dist_failure, the same plan again. Then SIGTERM to the supervisor:
    both ranks stop after the same step with a checkpoint there; `tamer resume` finishes the run."""
    home = tmp_path / "home"
    process, run_id = start(
        "run",
        "squad",
        *TINY,
        *TWO,
        "--max-steps",
        "40",
        "--set",
        "checkpoint_every=100",
        "--set",
        "eval_samples=16",
        "--set",
        "restart_backoff=0.1",
        *THREADS,
        "--inject",
        "kill:step=3,rank=1,once",
        home=home,
    )
    wait_for(
        home,
        "SELECT max(step) FROM steps WHERE run_id = ? AND attempt = 2",
        (run_id,),
        lambda r: (r[0][0] or 0) >= 5,
        timeout=240,
    )
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, process.stderr.read()
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["dist_failure", "stopped"]
    assert "rank 1" in rows[0]["message"] and rows[0]["plan_json"] == rows[1]["plan_json"]
    assert "escalate" not in [kind for kind, _ in events(home, run_id)]
    folder = home / "runs" / run_id / "attempts" / "2"
    stopped = [json.loads((folder / f"exit-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert {r["status"] for r in stopped} == {"stopped"} and stopped[0]["step"] == stopped[1]["step"]
    assert (home / "runs" / run_id / "checkpoints" / f"step-{stopped[0]['step']}").is_dir()
    assert ranks_dead(home, run_id, 2)

    started = time.time()
    resumed = tamer("resume", run_id, home=home)
    assert resumed.returncode == 0, resumed.stderr
    last = attempts(home, run_id)[-1]
    assert last["outcome"] == "done" and last["resumed_from_step"] == stopped[0]["step"]
    assert query(home, "SELECT steps_done FROM runs WHERE id = ?", (run_id,))[0][0] == 40
    assert time.time() - started < 240
