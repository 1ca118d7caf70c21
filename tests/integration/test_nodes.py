"""Two machines, played on one host: node 0 runs `tamer run --nnodes 2 --rdzv-endpoint 127.0.0.1:PORT` and owns
the run (its own home: the database, the plans, the decisions; its rank 0 writes rows and checkpoints into the
run folder); node 1 runs `tamer join RUN_DIR --node-rank 1` on that folder with no home of its own. One CPU
rank each over gloo. An OOM on node 1 escalates both nodes once and the run ends equal to one process; node
1's rank killed is a dist_failure both nodes recover from; the follower ends with the run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.integration.runs import TINY, attempts, env, events, final_weights, sample_ids, start
from tests.integration.test_distributed import STEPS, one_process  # noqa: F401 - the reference run, a fixture

PLAN_KEYS = ("world_size", "micro_batch_size", "grad_accumulation", "gradient_checkpointing")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(
    tmp_path: Path, *extra: str
) -> tuple[Path, str, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Node 0's `tamer run` and node 1's `tamer join`, both to their end: (node 0's home, run id, node 0, node 1)."""
    home = tmp_path / "node0"
    node0, run_id = start(
        "run",
        "squad",
        *TINY,
        *STEPS,
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--set",
        "restart_backoff=0.1",
        *extra,
        home=home,
    )
    node1 = subprocess.Popen(
        [sys.executable, "-m", "tamer", "join", str(home / "runs" / run_id), "--node-rank", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        out0, err0 = node0.communicate(timeout=420)
        out1, err1 = node1.communicate(timeout=60)
    finally:
        for process in (node0, node1):
            if process.poll() is None:
                process.kill()
    return (
        home,
        run_id,
        subprocess.CompletedProcess(node0.args, node0.returncode, out0, err0),
        subprocess.CompletedProcess(node1.args, node1.returncode, out1, err1),
    )


def escalated_both_once(
    home: Path, run_id: str, node0: subprocess.CompletedProcess, node1: subprocess.CompletedProcess
) -> list[dict]:
    """Both nodes ended well after the OOM injected on node 1 at step 6: one escalation, resumed from step 4.
    Returns the attempts."""
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, node1.stderr
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["cuda_oom", "done"] and [r["world_size"] for r in rows] == [2, 2]
    assert rows[0]["message"].startswith("rank 1 of 2: OutOfMemoryError") and rows[1]["resumed_from_step"] == 4
    assert [kind for kind, _ in events(home, run_id)].count("escalate") == 1
    return rows


def test_oom_on_node_1_escalates_both_nodes_once_and_matches_one_process(tmp_path, one_process):  # noqa: F811
    home, run_id, node0, node1 = two_nodes(tmp_path, "--inject", "oom:step=6,phase=backward,rank=1,once")
    rows = escalated_both_once(home, run_id, node0, node1)
    first, second = (json.loads(r["plan_json"]) for r in rows)
    assert not first["gradient_checkpointing"] and second["gradient_checkpointing"]
    # Node 1 ran its rank of both attempts with the plan node 0 decided, and wrote nothing but its share.
    run_dir = home / "runs" / run_id
    for number in (1, 2):
        folder = run_dir / "attempts" / str(number)
        assert (folder / "child-node1.log").is_file() and (folder / "exit-rank1.json").is_file()
        assert json.loads((folder / "outcome.json").read_text())["kind"] == rows[number - 1]["outcome"]
    assert "node 1: attempt 2" in node1.stderr and "ended: done" in node1.stderr
    assert json.loads((run_dir / "ended.json").read_text()) == {"status": "done"}
    assert not list(tmp_path.glob("**/tamer.db"))[1:], "only node 0 has a database"

    assert sample_ids(home, run_id) == one_process["samples"]
    weights = final_weights(home, run_id)
    assert weights.keys() == one_process["weights"].keys()
    for name, tensor in one_process["weights"].items():  # gloo, 2 ranks: as exact as the one-host test
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_node_1_killed_is_a_dist_failure_both_nodes_recover_from(tmp_path):
    home, run_id, node0, node1 = two_nodes(tmp_path, "--inject", "kill:step=6,rank=1,once")
    assert node0.returncode == 0, node0.stderr
    assert node1.returncode == 0, node1.stderr
    rows = attempts(home, run_id)
    assert [r["outcome"] for r in rows] == ["dist_failure", "done"]
    assert "rank 1 of 2 died without a report" in rows[0]["message"] and rows[1]["resumed_from_step"] == 4
    assert rows[0]["plan_json"] == rows[1]["plan_json"] and "escalate" not in [kind for kind, _ in events(home, run_id)]
    assert "node 1: attempt 2" in node1.stderr
