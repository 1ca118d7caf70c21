"""What the card holds right now, read by the supervisor without touching CUDA: total and free memory
and the processes using it. `read_card()` asks NVML (nvidia-ml-py), about a millisecond; a test or a
rehearsal points `TAMER_FAKE_CARD` at a JSON file it rewrites to play another job coming and going:

    {"total": "40GiB", "free": "8GiB", "processes": [{"pid": 4242, "used": "30GiB", "name": "other job"}]}

Sizes are bytes or size strings. The de-escalation policy (squeeze.py) decides from these views.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tamer.units import parse_size

FAKE_CARD_ENV = "TAMER_FAKE_CARD"


@dataclass(frozen=True)
class CardProcess:
    pid: int
    used: int | None
    """Bytes; None when the driver does not say (some containers and MIG slices)."""
    name: str = ""


@dataclass(frozen=True)
class CardView:
    """One reading of the card."""

    total: int
    free: int
    processes: tuple[CardProcess, ...] = field(default_factory=tuple)
    source: str = "nvml"

    @property
    def used(self) -> int:
        return self.total - self.free

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "free": self.free,
            "source": self.source,
            "processes": [{"pid": p.pid, "used": p.used, "name": p.name} for p in self.processes],
        }


def read_card() -> CardView | None:
    """The card the child trains on, now; None without a card or a driver (then nothing is de-escalated)."""
    fake = os.environ.get(FAKE_CARD_ENV)
    if fake:
        return _fake_view(Path(fake))
    return _nvml_view()


def settled_card() -> CardView | None:
    """The card once a child that just exited has given its memory back: the lower of two readings half a
    second apart (the driver frees a dead process's memory shortly after it is reaped)."""
    first = read_card()
    if first is None:
        return None
    time.sleep(0.5)
    second = read_card()
    return second if second is not None and second.used <= first.used else first


def _fake_view(path: Path) -> CardView | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    processes = tuple(
        CardProcess(int(p["pid"]), parse_size(p["used"]) if p.get("used") is not None else None, str(p.get("name", "")))
        for p in data.get("processes", [])
    )
    return CardView(parse_size(data["total"]), parse_size(data["free"]), processes, source=f"fake ({path})")


def _device_index() -> int | str:
    """The child's first visible GPU as NVML knows it: an index or a UUID from CUDA_VISIBLE_DEVICES, else 0."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else first or 0


def _nvml_view() -> CardView | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver or no NVML library
        return None
    try:
        device = _device_index()
        handle = (
            pynvml.nvmlDeviceGetHandleByUUID(device)
            if isinstance(device, str)
            else pynvml.nvmlDeviceGetHandleByIndex(device)
        )
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        processes = []
        for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used = getattr(process, "usedGpuMemory", None)
            processes.append(
                CardProcess(int(process.pid), int(used) if isinstance(used, int) else None, _process_name(process.pid))
            )
        return CardView(int(memory.total), int(memory.free), tuple(processes))
    except Exception:  # a lost device or an NVML call this driver lacks: no reading this time
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _process_name(pid: int) -> str:
    """The command of `pid` when it runs in our namespace (inside a container NVML reports host pids)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""
