"""Two nodes on one CUDA GPU: node 0's `tamer run --nnodes 2` and node 1's `tamer join`, each with one rank on
the same card, over gloo (NCCL refuses two ranks on one device). What the CPU test
(tests/integration/test_nodes.py) cannot show: CUDA ranks, CUDA tensors through the collectives, the device's
memory readings with the peer's process on the card, and the run equal to one CUDA process. Two GPUs as two
nodes (NCCL) is the same command with CUDA_VISIBLE_DEVICES=0 / =1 per node."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.runs import TINY, final_steps, final_weights, query, run_id_of, sample_ids, tamer
from tests.integration.test_distributed import STEPS
from tests.integration.test_nodes import escalated_both_once, two_nodes

CUDA_GLOO = ["--device", "cuda", "--set", "distributed.backend=gloo"]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_two_nodes_on_one_gpu_escalate_together_and_match_one_cuda_process(tmp_path):
    home = tmp_path / "one"
    reference = tamer("run", "squad", *TINY, *STEPS, "--device", "cuda", "--micro-batch-size", "4", home=home)
    assert reference.returncode == 0, reference.stderr
    one_id = run_id_of(reference)

    nodes_home, run_id, node0, node1 = two_nodes(
        tmp_path, *CUDA_GLOO, "--inject", "oom:step=6,phase=backward,rank=1,once"
    )
    escalated_both_once(nodes_home, run_id, node0, node1)
    per_rank = query(nodes_home, "SELECT rank_memory_json FROM steps WHERE run_id = ? AND attempt = 2", (run_id,))
    assert per_rank and all(
        len(json.loads(r[0])) == 2 and all(e["mem_peak"] > 0 for e in json.loads(r[0])) for r in per_rank
    )
    assert "node 1: attempt 2" in node1.stderr and "ended: done" in node1.stderr

    assert sample_ids(nodes_home, run_id) == sample_ids(home, one_id)
    # Not bit-equal on CUDA (gloo's sum of two ranks vs accumulation in one process, atomics in the embedding's
    # backward, bf16 autocast when the planner picks it, then Adam): the two runs must agree to a small part of
    # how far training moved the weights, step by step in loss and at the end in every tensor.
    losses, expected_losses = final_steps(nodes_home, run_id, "loss"), final_steps(home, one_id, "loss")
    torch.testing.assert_close(losses, expected_losses, rtol=1e-2, atol=0.0)
    weights, expected = final_weights(nodes_home, run_id), final_weights(home, one_id)
    initial = load_file(home / "runs" / one_id / "init" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        moved = (tensor.double() - initial[name.removeprefix("model/")].double()).norm()
        apart = (weights[name].double() - tensor.double()).norm()
        assert moved > 0 and apart <= 0.1 * moved, f"{name}: runs {apart:.3g} apart, training moved it {moved:.3g}"
