"""The escalation ladder for real on the tiny preset: injected and real OOMs, every rung trained and
resumed under the next plan, eval OOMs, exhaustion."""

from __future__ import annotations

import json

import torch

from tamer.engine.sampling import LengthGroupedOrder
from tests.integration.runs import TINY, attempts, events, query, run_id_of, sample_ids, tamer

HOST_OOM_CONFIG = """
architecture: {vocab_size: 32000, hidden_size: 256, intermediate_size: 1024, num_hidden_layers: 4,
  num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024, tie_word_embeddings: true,
  bos_token_id: 1, eos_token_id: 2}
pad_to_max_len: true
"""


def _default_order(home, run_id) -> LengthGroupedOrder:
    """The data order of an uninterrupted run with the default (packed, length-grouped) batches."""
    (cache,) = (home / "runs" / run_id).glob("examples-*.pt")
    train = torch.load(cache, weights_only=False)["train"]
    return LengthGroupedOrder(
        len(train), 0, [len(example.input_ids) for example in train], step_size=8, window_steps=64
    )


def test_every_rung_trains_and_resumes_under_the_next_plan(tmp_path):
    """Each attempt trains two steps, checkpoints, then hits an injected CUDA OOM; the card ladder applies
    the next rung (on CPU: checkpointing, bf16 autocast, 8-bit base + LoRA, NF4 base, paged 8-bit AdamW,
    micro-batch split), every plan resumes the previous plan's checkpoint, and no sample is skipped or seen twice."""
    faults = [
        f"--inject=oom:step={2 * n + 1},phase={phase},attempt={n}"
        for n, phase in enumerate(["forward", "backward", "optimizer", "forward", "forward", "backward"], start=1)
    ]
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        "15",
        "--set",
        "checkpoint_every=2",
        "--set",
        "ladder.mode=card",
        *faults,
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(tmp_path, run_id)
    assert [r["outcome"] for r in rows] == ["cuda_oom"] * 6 + ["done"]
    assert [r["phase"] for r in rows[:6]] == ["forward", "backward", "optimizer", "forward", "forward", "backward"]
    assert [json.loads(r["rungs_applied"]) for r in rows[1:]] == [
        ["gradient_checkpointing"],
        ["mixed_precision"],
        ["lora", "quantize_8bit"],
        ["quantize_4bit"],
        ["paged_adamw_8bit"],
        ["split_micro_batch"],
    ]
    assert [r["resumed_from_step"] for r in rows] == [0, 2, 4, 6, 8, 10, 12]
    assert [r["last_step"] for r in rows] == [2, 4, 6, 8, 10, 12, 15]
    final_plan = json.loads(rows[-1]["plan_json"])
    assert (final_plan["micro_batch_size"], final_plan["grad_accumulation"]) == (4, 2)
    assert final_plan["quantization"] == "nf4" and final_plan["lora"] and final_plan["optimizer"] == "paged_adamw_8bit"
    assert query(
        tmp_path, "SELECT DISTINCT micro_batch_size * grad_accumulation FROM steps WHERE run_id = ?", (run_id,)
    ) == [(8,)]
    order = _default_order(tmp_path, run_id)
    trained = [i for step in sample_ids(tmp_path, run_id) for i in step]
    assert trained == order.indices(0, 15 * 8)  # the data order of an uninterrupted run, nothing lost or repeated
    kinds = [kind for kind, _ in events(tmp_path, run_id)]
    assert kinds.count("escalate") == 6 and kinds.count("lora_from_full") == 1 and kinds.count("optimizer_reset") == 2
    messages = dict(events(tmp_path, run_id))
    assert "expandable_segments" not in json.dumps(final_plan["rungs"])  # not applicable on CPU, and said so
    skipped = json.loads(
        query(tmp_path, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'escalate'", (run_id,))[0][0]
    )["skipped"]
    assert skipped[0][0] == "expandable_segments" and "CPU" in skipped[0][1]
    assert "optimizer changed from adamw to paged_adamw_8bit" in messages["optimizer_reset"]


def test_real_host_oom_recovers_by_itself(tmp_path):
    """Under --host-mem-cap the first plan's micro-batch really cannot be allocated (the CPU allocator's
    error, not an injected one); the ladder escalates and the run completes."""
    config = tmp_path / "host.yaml"
    config.write_text(HOST_OOM_CONFIG)
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--config",
        str(config),
        "--max-steps",
        "3",
        "--host-mem-cap",
        "450MiB",
        "--set",
        "checkpoint_every=2",
        "--set",
        "eval_samples=8",
        home=tmp_path,
    )  # 8: evaluation is not the point
    assert result.returncode == 0, result.stderr
    rows = attempts(tmp_path, run_id_of(result))
    assert rows[0]["outcome"] == "host_oom" and "DefaultCPUAllocator: can't allocate memory" in rows[0]["message"]
    assert "injected" not in rows[0]["message"]
    assert rows[-1]["outcome"] == "done" and len(rows) >= 2


def test_eval_oom_halves_only_the_eval_batch(tmp_path):
    """An OOM during evaluation escalates the evaluation batch and leaves the training plan alone."""
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        "4",
        "--set",
        "checkpoint_every=2",
        "--set",
        "eval_every=2",
        "--inject",
        "oom:phase=eval,attempt=1",
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = attempts(tmp_path, run_id_of(result))
    first, second = json.loads(rows[0]["plan_json"]), json.loads(rows[1]["plan_json"])
    assert rows[0]["outcome"] == "cuda_oom" and rows[0]["phase"] == "eval"
    assert second["eval_batch_size"] == first["eval_batch_size"] // 2
    assert {k: v for k, v in second.items() if k != "eval_batch_size"} == {
        k: v for k, v in first.items() if k != "eval_batch_size"
    }


def test_exhausted_ladder_fails_with_what_was_tried(tmp_path):
    """When every rung is spent the run ends `failed`, exits 1, and the last event names what was tried and the peak."""
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        "3",
        "--set",
        "effective_batch_size=2",
        "--set",
        "ladder.mode=card",
        "--set",
        "ladder.order=[split_micro_batch]",
        "--inject",
        "oom:phase=forward",
        home=tmp_path,
    )
    assert result.returncode == 1
    run_id = run_id_of(result)
    assert [r["outcome"] for r in attempts(tmp_path, run_id)] == ["cuda_oom", "cuda_oom"]
    assert query(tmp_path, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("failed",)]
    kind, message = events(tmp_path, run_id)[-1]
    assert kind == "failed" and "split_micro_batch" in message and "highest" in message
    assert "error:" in result.stderr and "nothing left to try" in result.stderr


def test_in_process_split_retries_the_same_step_without_a_restart(tmp_path):
    """In planner mode an activation OOM halves the micro-batch inside the child: no restart, the same
    optimizer step is retried with the same samples, and the data order stays that of an uninterrupted run."""
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        "8",
        "--set",
        "ladder.mode=planner",
        "--inject",
        "oom:step=5,phase=backward,min_micro_batch=8",
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    (attempt,) = attempts(tmp_path, run_id)
    assert attempt["outcome"] == "done"
    split = [
        json.loads(d)
        for (d,) in query(
            tmp_path, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'in_process_split'", (run_id,)
        )
    ]
    assert [(e["step"], e["phase"], e["old_micro_batch"], e["new_micro_batch"]) for e in split] == [
        (5, "backward", 8, 4)
    ]
    geometry = query(
        tmp_path,
        "SELECT step, micro_batch_size, grad_accumulation FROM steps WHERE run_id = ? ORDER BY step",
        (run_id,),
    )
    assert geometry == [(s, 8, 1) for s in range(1, 5)] + [(s, 4, 2) for s in range(5, 9)]
    order = _default_order(tmp_path, run_id)
    assert [i for step in sample_ids(tmp_path, run_id) for i in step] == order.indices(0, 8 * 8)
    checkpoint_plan = json.loads((tmp_path / "runs" / run_id / "checkpoints" / "step-8" / "manifest.json").read_text())[
        "plan"
    ]
    assert checkpoint_plan["micro_batch_size"] == 4
