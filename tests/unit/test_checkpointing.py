"""Background checkpoints: files hashed while written, safetensors the loader reads, the `auto` interval
rule, and a writer that fails: retried once, then an error, never a silent gap."""

from __future__ import annotations

import errno
import hashlib
import json
import threading
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from tamer import checkpoint_policy
from tamer.engine import checkpointing
from tamer.state import checkpoints


def test_hashing_file_digest_is_the_digest_of_the_bytes_on_disk(tmp_path):
    """What HashingFile hashed while writing equals a fresh read of the file."""
    path = tmp_path / "blob"
    with checkpoints.HashingFile(path) as handle:
        handle.write(b"a" * 1000)
        handle.write(memoryview(bytes(range(256)) * 5000))
    assert handle.digest == checkpoints.hash_file(path)


def test_safetensors_written_by_the_snapshot_writer_load_back_equal_with_ties_dropped(tmp_path):
    """write_safetensors round-trips fp32/bf16/int tensors, and a tied tensor is stored under its first name only."""
    embedding = torch.randn(8, 4)
    state = {
        "embed.weight": embedding,
        "norm": torch.randn(4).to(torch.bfloat16),
        "count": torch.tensor([3], dtype=torch.int64),
        "head.weight": embedding,
    }
    unique = checkpointing.unique_tensors(state)
    digest = checkpointing.write_safetensors(tmp_path / "model.safetensors", unique)
    loaded = load_file(tmp_path / "model.safetensors")
    assert set(loaded) == {"embed.weight", "norm", "count"}
    assert all(torch.equal(loaded[name], state[name]) for name in loaded)
    assert digest == checkpoints.hash_file(tmp_path / "model.safetensors")


def test_host_buffers_are_reused_and_hold_the_values_of_their_save(tmp_path):
    """A second snapshot copies into the first one's buffers, and a snapshot keeps its values while training changes the live tensors."""
    buffers = checkpointing.HostBuffers(pin=False)
    live = {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    first = buffers.copy(live)
    live["state"][0]["exp_avg"].add_(1)
    assert torch.equal(first["state"][0]["exp_avg"], torch.ones(3))
    second = buffers.copy(live)
    assert second["state"][0]["exp_avg"] is first["state"][0]["exp_avg"] and buffers.nbytes == 64  # one aligned slab
    assert second["param_groups"] == live["param_groups"] and second["param_groups"] is not live["param_groups"]


def test_format_1_sha256_checkpoints_still_verify_and_a_flipped_bit_in_them_is_caught(tmp_path):
    """An old manifest (format 1, sha256 hex) verifies; the same checkpoint with one bit flipped does not."""
    folder = tmp_path / "checkpoints" / "step-3"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\x01" * 4096)
    manifest = {"format": 1, "step": 3, "files": {"weights.bin": hashlib.sha256(b"\x01" * 4096).hexdigest()}}
    (folder / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    assert checkpoints.verify(folder)[0] is not None
    data = bytearray((folder / "weights.bin").read_bytes())
    data[2000] ^= 0x10
    (folder / "weights.bin").write_bytes(bytes(data))
    found, problem = checkpoints.verify(folder)
    assert found is None and "sha256 mismatch in weights.bin" in problem


def test_auto_interval_without_failures_is_bounded_by_the_work_at_risk():
    """No failure seen: Young/Daly says never, so the 10-minute bound decides."""
    interval = checkpoint_policy.choose_interval(
        stall_seconds=0.5, write_seconds=20.0, step_seconds=0.15, mtbf_seconds=None
    )
    assert interval.steps == 4000 and "10 min" in interval.reason


def test_auto_interval_follows_young_daly_with_failures_and_keeps_saves_under_two_percent():
    """With failures every 2 h and a 1 s stall the interval is sqrt(2 x 1 x 7200) = 120 s; a 15 s
    synchronous save is pushed out to 15 / 2% = 750 s even past the 10-minute bound."""
    young = checkpoint_policy.choose_interval(1.0, 0.0, 1.0, 7200.0)
    assert young.steps == 120 and "Young/Daly" in young.reason
    costly = checkpoint_policy.choose_interval(15.0, 0.0, 1.0, 7200.0)
    assert costly.steps == 750 and "2%" in costly.reason
    slow_disk = checkpoint_policy.choose_interval(0.01, 100.0, 1.0, 3600.0)
    assert slow_disk.steps == 100 and "background write" in slow_disk.reason


def test_failure_rate_counts_crashes_but_not_ooms_or_stops():
    """Mean time between failures: attempt time over crashes/hangs; OOMs (a new plan) and stops do not count."""
    attempts = [
        {"outcome": "cuda_oom", "started_at": 0, "ended_at": 100},
        {"outcome": "crash", "started_at": 100, "ended_at": 400},
        {"outcome": None, "started_at": 400, "ended_at": None},
    ]
    assert checkpoint_policy.mean_time_between_failures(attempts, now=1000) == 1000
    assert checkpoint_policy.mean_time_between_failures(attempts[:1], now=1000) is None


def test_show_prints_the_newest_interval():
    """`tamer show` reports the interval of the newest checkpoint_interval event."""
    events = [
        {"kind": "checkpoint_interval", "message": "old"},
        {"kind": "checkpoint", "message": "x"},
        {"kind": "checkpoint_interval", "message": "checkpoint every 40 steps"},
    ]
    assert checkpoint_policy.interval_in_force(events) == "checkpoint every 40 steps"
    assert checkpoint_policy.interval_in_force([]) is None


def _checkpointer(tmp_path, faults):
    """A Checkpointer on a stand-in trainer whose only state is one tensor."""
    events: list[tuple[str, str]] = []
    trainer = SimpleNamespace(
        config=SimpleNamespace(
            checkpoint_async=True,
            checkpoint_every=1,
            checkpoint_every_seconds=None,
            keep_checkpoints=2,
            host_mem_cap=None,
        ),
        group=SimpleNamespace(is_main=True, distributed=False),
        device=torch.device("cpu"),
        run_dir=tmp_path,
        total_steps=10,
        state=SimpleNamespace(step=0, checkpoint_step=None),
        plan=SimpleNamespace(micro_batch_size=1),
        faults=SimpleNamespace(check=lambda *args: faults.pop(0)() if faults else None),
        report=SimpleNamespace(
            event=lambda kind, message, **detail: events.append((kind, message)), beat=lambda phase: None
        ),
    )
    checkpointer = checkpointing.Checkpointer(trainer)
    snapshot = checkpointing.Snapshot(
        3, "full", {"w": torch.ones(4)}, [], {"state": {}}, {}, None, {}, {"samples_consumed": 24}
    )
    return checkpointer, snapshot, events


def _fail(error):
    def fire():
        raise error

    return fire


def test_a_writer_crash_is_an_event_and_a_retry_that_commits(tmp_path):
    """The writer fails once: an event says so, the retry from the same snapshot commits the checkpoint."""
    checkpointer, snapshot, events = _checkpointer(tmp_path, [_fail(RuntimeError("writer died"))])
    checkpointer.thread = threading.Thread(target=checkpointer._write, args=(snapshot, 0.01))
    checkpointer.thread.start()
    checkpointer.wait()
    kinds = [kind for kind, _ in events]
    assert kinds == ["checkpoint_writer_crashed", "checkpoint"] and "retrying" in events[0][1]
    assert checkpoints.newest_valid(tmp_path)[0].step == 3 and checkpointer.committed_step == 3


def test_a_writer_that_fails_twice_ends_the_attempt_with_the_error(tmp_path):
    """Two writer failures: both are events and the error reaches the training loop (no silent gap)."""
    checkpointer, snapshot, events = _checkpointer(
        tmp_path, [_fail(RuntimeError("bad")), _fail(RuntimeError("bad again"))]
    )
    checkpointer._write(snapshot, 0.01)
    with pytest.raises(RuntimeError, match="bad again"):
        checkpointer.wait()
    assert [kind for kind, _ in events] == ["checkpoint_writer_crashed"] * 2 and "giving up" in events[1][1]
    assert checkpoints.newest_valid(tmp_path)[0] is None


def test_a_full_disk_in_the_background_is_an_event_and_training_goes_on(tmp_path):
    """ENOSPC during a background write: no retry, an event naming the checkpoint kept, no exception."""
    checkpointer, snapshot, events = _checkpointer(tmp_path, [_fail(OSError(errno.ENOSPC, "No space left on device"))])
    checkpointer.committed_step = 2
    checkpointer._write(snapshot, 0.01)
    checkpointer.wait()
    assert [kind for kind, _ in events] == ["checkpoint_failed"]
    assert "disk full while writing checkpoint step 3" in events[0][1] and "step 2 stays the newest" in events[0][1]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_checkpoint_every_is_auto_by_default_and_an_integer_still_wins():
    """The default interval is `auto`; `--set checkpoint_every=N` gives N; zero or a word other than auto is a config error."""
    from tamer.config import build_config
    from tamer.errors import ConfigError

    assert build_config("tiny", None, {}, ["checkpoint_every=auto"]).checkpoint_every == "auto"
    assert build_config("llama-3.2-1b", None, {}, []).checkpoint_every == "auto"
    assert build_config("tiny", None, {}, ["checkpoint_every=7"]).checkpoint_every == 7
    for bad in ("checkpoint_every=0", "checkpoint_every=often"):
        with pytest.raises(ConfigError, match="checkpoint_every"):
            build_config("tiny", None, {}, [bad])
