"""On a CUDA GPU: `tamer doctor` reports the card through NVML and torch, and an OOM snapshot is a
file PyTorch's memory_viz can read (run on the lent GPU machine: `pytest -m gpu`)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

from tamer.engine.oom_snapshot import dump_on_oom, start_recording


@pytest.mark.gpu
def test_doctor_reports_gpu_memory_and_context_cost():
    """In a fresh process, doctor lists each GPU through NVML and torch, with free memory and a non-zero CUDA context cost."""
    result = subprocess.run(
        [sys.executable, "-m", "tamer", "doctor", "--json"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["nvml"]["available"] is True and facts["nvml"]["gpus"]
    device = facts["torch"]["devices"][0]
    assert 0 < device["free_for_this_process"] <= device["total"]
    assert device["context_overhead"] is not None and device["context_overhead"] > 0
    assert isinstance(device["bf16"], bool)


@pytest.mark.gpu
def test_snapshot_dumped_on_a_real_oom_is_readable(tmp_path):
    """After recording, a real CUDA OOM (under a 1% memory cap) dumps a snapshot pickle holding the allocator's segments and trace."""
    device = torch.device("cuda", 0)
    torch.cuda.set_per_process_memory_fraction(0.01, device)
    try:
        assert start_recording(device) is True
        kept = torch.ones(1024, 1024, device=device)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(
                int(torch.cuda.get_device_properties(device).total_memory * 0.02), dtype=torch.uint8, device=device
            )
        path = dump_on_oom(device, tmp_path / "attempts" / "1" / "memory-snapshot.pickle")
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert path == str(tmp_path / "attempts" / "1" / "memory-snapshot.pickle")
    with open(path, "rb") as handle:
        snapshot = pickle.load(handle)
    assert snapshot["segments"] and snapshot["device_traces"][0]
    assert any(event["action"] == "oom" for event in snapshot["device_traces"][0])
    del kept
