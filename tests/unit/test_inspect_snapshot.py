"""OOM memory snapshots are no-ops off CUDA: nothing recorded, nothing written, no error."""

from __future__ import annotations

import torch

from tamer.engine.oom_snapshot import dump_on_oom, start_recording


def test_snapshot_functions_do_nothing_on_cpu(tmp_path):
    """On the CPU, start_recording reports it did not start and dump_on_oom writes no file and returns None."""
    cpu = torch.device("cpu")
    assert start_recording(cpu) is False
    assert dump_on_oom(cpu, tmp_path / "snapshot.pickle") is None
    assert not (tmp_path / "snapshot.pickle").exists()
