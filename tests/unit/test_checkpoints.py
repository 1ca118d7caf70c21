"""Atomic checkpoints: a checkpoint counts only when complete and intact, and a failed write leaves the
previous ones untouched."""

from __future__ import annotations

import errno
import json

import pytest

from tamer.state import checkpoints


def _writer(payload: bytes):
    def write(folder):
        (folder / "weights.bin").write_bytes(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "state.json").write_text(json.dumps({"n": len(payload)}))

    return write


def _save(run_dir, step, keep=2):
    return checkpoints.save(run_dir, step, _writer(bytes([step]) * 1000), {"samples_consumed": step * 8}, keep)


def test_newest_valid_checkpoint_is_found_with_its_manifest(tmp_path):
    """After two saves the newest verifies and carries the step, cursor and a sha256 per file."""
    _save(tmp_path, 1)
    saved = _save(tmp_path, 2)
    found, skipped = checkpoints.newest_valid(tmp_path)
    assert found.path == saved.path and found.step == 2 and found.manifest["samples_consumed"] == 16
    assert set(found.manifest["files"]) == {"weights.bin", "sub/state.json"} and skipped == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    """A flipped bit, a truncated or missing file, or a missing manifest hides the newest checkpoint."""
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2).path
    weights = newest / "weights.bin"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[500] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:10])
    elif damage == "delete":
        weights.unlink()
    else:
        (newest / checkpoints.MANIFEST).unlink()
    found, skipped = checkpoints.newest_valid(tmp_path)
    assert found.step == 1
    assert skipped and skipped[0][0] == "step-2"


def test_failed_write_removes_the_partial_checkpoint_and_keeps_the_previous(tmp_path):
    """A write that fails half-way (disk full) leaves no partial folder and the previous checkpoint intact."""
    _save(tmp_path, 1)

    def full_disk(folder):
        (folder / "weights.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        checkpoints.save(tmp_path, 2, full_disk, {"samples_consumed": 16}, keep=2)
    assert sorted(p.name for p in checkpoints.checkpoint_dir(tmp_path).iterdir()) == ["step-1"]
    assert checkpoints.newest_valid(tmp_path)[0].step == 1


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    """With keep=2, saving four checkpoints leaves the last two."""
    for step in range(1, 5):
        _save(tmp_path, step)
    assert sorted(p.name for p in checkpoints.checkpoint_dir(tmp_path).iterdir()) == ["step-3", "step-4"]


def test_saving_the_same_step_again_replaces_it_atomically(tmp_path):
    """A step written again after a restart replaces the old folder and verifies."""
    _save(tmp_path, 1)
    checkpoints.save(tmp_path, 1, _writer(b"new" * 10), {"samples_consumed": 8}, keep=2)
    found, _ = checkpoints.newest_valid(tmp_path)
    assert (found.path / "weights.bin").read_bytes() == b"new" * 10
