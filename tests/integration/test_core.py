"""The core contract on the tiny preset, with real processes: a run completes and is logged, and a run
killed anywhere (child, or supervisor and child) resumes to bit-identical weights and the same samples."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest
import torch

from tests.integration.runs import (
    TINY,
    attempts,
    events,
    final_weights,
    kill_child_at_step,
    pid_alive,
    query,
    run_id_of,
    sample_ids,
    start,
    tamer,
    wait_for,
)

STEPS = 16
ARGS = [
    "run",
    "squad",
    *TINY,
    "--max-steps",
    str(STEPS),
    "--set",
    "checkpoint_every=4",
    "--set",
    "restart_backoff=0",
    "--set",
    "kill_backoff=0",
]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted run, the reference for every resume test."""
    home = tmp_path_factory.mktemp("baseline")
    result = tamer(
        *ARGS, "--set", "eval.squad_samples=16", "--set", "export.enabled=true", home=home
    )  # with the result child
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    return {
        "home": home,
        "run_id": run_id,
        "weights": final_weights(home, run_id),
        "samples": sample_ids(home, run_id),
        "result": result,
    }


def test_default_batches_are_at_least_90_percent_useful_tokens(baseline):
    """The default (packed, length-grouped) batches of a tiny run compute at most 10% padding, recorded per step."""
    home, run_id = baseline["home"], baseline["run_id"]
    ((useful, computed, tokens),) = query(
        home, "SELECT sum(useful_tokens), sum(computed_tokens), sum(tokens) FROM steps WHERE run_id = ?", (run_id,)
    )
    assert useful == tokens and useful / computed >= 0.9


def assert_same_training(baseline: dict, home, run_id: str) -> None:
    weights = final_weights(home, run_id)
    assert weights.keys() == baseline["weights"].keys()
    for name, tensor in baseline["weights"].items():
        assert torch.equal(weights[name], tensor), f"{name} differs from the uninterrupted run"
    assert sample_ids(home, run_id) == baseline["samples"]


def test_run_completes_with_a_row_per_step(baseline):
    """`tamer run --preset tiny --max-steps N` exits 0 with N step rows, one `done` attempt and the lifecycle events."""
    home, run_id = baseline["home"], baseline["run_id"]
    assert query(home, "SELECT status, steps_done, total_steps FROM runs WHERE id = ?", (run_id,)) == [
        ("done", STEPS, STEPS)
    ]
    steps = query(
        home,
        "SELECT step, samples_consumed, loss, lr, grad_norm, tokens_per_s, host_rss FROM steps WHERE run_id = ? ORDER BY step",
        (run_id,),
    )
    assert [s[0] for s in steps] == list(range(1, STEPS + 1))
    assert [s[1] for s in steps] == [8 * k for k in range(1, STEPS + 1)]
    assert all(s[2] > 0 and s[3] > 0 and s[4] > 0 and s[5] > 0 and s[6] > 0 for s in steps)
    (attempt,) = attempts(home, run_id)
    assert (attempt["outcome"], attempt["exit_code"], attempt["last_step"]) == ("done", 0, STEPS)
    kinds = [kind for kind, _ in events(home, run_id)]
    assert kinds[:3] == ["created", "attempt_start", "data"]
    assert kinds.count("checkpoint") == STEPS // 4 and kinds[-4:] == ["eval", "finish", "squad_eval", "export"]
    assert query(home, "SELECT count(*) FROM evals WHERE run_id = ? AND step = ?", (run_id, STEPS)) == [(1,)]
    assert len(sorted((home / "runs" / run_id / "checkpoints").glob("step-*"))) == 2  # keep the last 2
    assert baseline["result"].stdout.splitlines()[0] == run_id  # the run id comes first
    ((config_json,),) = query(home, "SELECT config_json FROM runs WHERE id = ?", (run_id,))
    threads = json.loads(config_json)["torch_threads"]
    (start_detail,) = [
        json.loads(d)
        for (d,) in query(home, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'start'", (run_id,))
    ]
    assert threads >= 1 and start_detail["torch_threads"] == threads  # fixed at creation, applied in the child


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_of_the_child_resumes_exactly(baseline, tmp_path, seed):
    """SIGKILL of the child at a random step: the supervisor restarts it and the final weights and
    sample sequence equal the uninterrupted run's, bit for bit."""
    kill_step = random.Random(seed).randint(2, STEPS - 2)
    process, run_id = start(*ARGS, home=tmp_path)
    reached = kill_child_at_step(tmp_path, run_id, 1, kill_step)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    rows = attempts(tmp_path, run_id)
    assert rows[0]["signal"] == signal.SIGKILL and rows[0]["outcome"] == "outside_kill"
    assert (
        rows[1]["resumed_from_step"] <= reached
        and rows[1]["resumed_from_step"] % 4 == 0
        and rows[-1]["outcome"] == "done"
    )
    assert_same_training(baseline, tmp_path, run_id)


def test_sigkill_of_supervisor_and_child_then_resume_exactly(baseline, tmp_path):
    """kill -9 of the supervisor takes the child down with it; `tamer resume` then skips a torn newest
    checkpoint and still ends bit-identical to the uninterrupted run."""
    process, run_id = start(*ARGS, home=tmp_path)
    pid = wait_for(tmp_path, "SELECT pid FROM attempts WHERE run_id = ?", (run_id,), lambda r: r and r[0][0])[0][0]
    wait_for(tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda r: (r[0][0] or 0) >= 9)
    checkpoint_dir = tmp_path / "runs" / run_id / "checkpoints"
    deadline = time.time() + 60
    while not (checkpoint_dir / "step-8" / "manifest.json").exists() and time.time() < deadline:
        time.sleep(0.05)  # step 8 is written in the background: committed a moment after step 9 may start
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.time() + 10
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "the child outlived its supervisor"
    assert query(tmp_path, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("running",)]
    newest = max(checkpoint_dir.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))
    assert newest.name == "step-8"
    weights_file = newest / "model" / "model.safetensors"
    with open(weights_file, "r+b") as handle:  # torn after the manifest was written
        handle.truncate(weights_file.stat().st_size // 2)
    result = tamer("resume", run_id, home=tmp_path)
    assert result.returncode == 0, result.stderr
    kinds = dict(events(tmp_path, run_id))
    assert "checkpoint_skipped" in kinds and "xxh3_128 mismatch" in kinds["checkpoint_skipped"]
    rows = attempts(tmp_path, run_id)
    assert rows[0]["outcome"] == "lost" and rows[0]["last_step"] >= 9 and rows[1]["resumed_from_step"] == 4
    assert "resumed from checkpoint step 4" in kinds["resume"]
    assert_same_training(baseline, tmp_path, run_id)


def test_sigkill_during_a_background_write_keeps_the_previous_checkpoint_and_resumes_exactly(baseline, tmp_path):
    """SIGKILL while the writer thread is half-way through step 8 (weights written, optimizer not): the
    half-written folder is never used, the next attempt resumes from step 4 and ends bit-identical."""
    result = tamer(*ARGS, "--inject", "kill:phase=checkpoint,step=8,attempt=1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(tmp_path, run_id)
    assert rows[0]["signal"] == signal.SIGKILL and rows[0]["last_step"] >= 8
    assert rows[1]["resumed_from_step"] == 4 and rows[1]["outcome"] == "done"
    assert "checkpoint_skipped" not in dict(events(tmp_path, run_id))  # the .tmp folder is no candidate at all
    assert_same_training(baseline, tmp_path, run_id)


def test_without_cursor_and_rng_restore_the_resume_is_not_exact(baseline, tmp_path):
    """Negative control: with the cursor and RNG restore switched off, the same kill gives different
    samples and different weights, so the equality tests above can fail."""
    process, run_id = start(*ARGS, home=tmp_path, extra_env={"TAMER_UNSAFE_SKIP_RESTORE": "cursor,rng"})
    kill_child_at_step(tmp_path, run_id, 1, 6)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert sample_ids(tmp_path, run_id) != baseline["samples"]
    weights = final_weights(tmp_path, run_id)
    assert any(not torch.equal(weights[name], tensor) for name, tensor in baseline["weights"].items())


def test_second_supervisor_on_a_run_is_refused(tmp_path):
    """While a supervisor holds a run, `tamer resume` of it exits 6 with a one-line message."""
    process, run_id = start(*ARGS, home=tmp_path)
    try:
        wait_for(tmp_path, "SELECT max(step) FROM steps WHERE run_id = ?", (run_id,), lambda r: (r[0][0] or 0) >= 1)
        result = tamer("resume", run_id, home=tmp_path)
        assert result.returncode == 6
        assert "already supervised" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    assert query(tmp_path, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("stopped",)]
