"""OOM snapshots (`memory_snapshot: true`): the child records the CUDA caching allocator's history and,
on an out-of-memory error, dumps it to a pickle that PyTorch's memory_viz shows as a timeline of every
allocation with its stack (https://pytorch.org/memory_viz, or
`python -m torch.cuda._memory_viz trace_plot FILE -o FILE.html`).

Recording costs a little time per allocation and host memory for `max_entries` stack traces, so it is
off by default. Both functions are no-ops off CUDA: the CPU allocator keeps no such history.
"""

from __future__ import annotations

from pathlib import Path

import structlog
import torch

log = structlog.get_logger("tamer.snapshot")
MAX_ENTRIES = 100_000  # allocation events kept: enough for a few steps of a 1B model


def start_recording(device: torch.device, max_entries: int = MAX_ENTRIES) -> bool:
    """Start recording allocator history on `device`; whether recording started."""
    if device.type != "cuda":
        return False
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    return True


def dump_on_oom(device: torch.device, path: str | Path) -> str | None:
    """Write the recorded history to `path` after an OOM; its path, or None off CUDA or when the dump fails
    (a failing dump must never hide the OOM it is about)."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return None
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.cuda.memory._dump_snapshot(str(target))
    except Exception as error:
        log.warning("memory_snapshot_failed", path=str(target), error=str(error))
        return None
    return str(target)
