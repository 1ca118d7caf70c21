"""Memory readings for step rows and OOM reports: torch's allocator, NVML's device view, host RSS."""

from __future__ import annotations

import functools
import os
from typing import Any

import psutil
import torch


@functools.cache
def _nvml_handle(device_index: int) -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(device_index).uuid)
        if not uuid.startswith("GPU-"):
            uuid = "GPU-" + uuid
        return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception:  # NVML missing or the device not visible to it: readings go without
        return None


def device_used(device: torch.device) -> int | None:
    """Bytes in use on the whole device as NVML (nvidia-smi) sees it, all processes included."""
    if device.type != "cuda":
        return None
    handle = _nvml_handle(device.index or 0)
    if handle is None:
        return None
    import pynvml

    return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def readings(device: torch.device) -> dict[str, int | None]:
    """Allocated / reserved / peak (torch) and device used (NVML) on CUDA; host RSS always."""
    rss = psutil.Process(os.getpid()).memory_info().rss
    if device.type != "cuda":
        return {"mem_allocated": None, "mem_reserved": None, "mem_peak": None, "device_used": None, "host_rss": rss}
    return {
        "mem_allocated": torch.cuda.memory_allocated(device),
        "mem_reserved": torch.cuda.memory_reserved(device),
        "mem_peak": torch.cuda.max_memory_allocated(device),
        "device_used": device_used(device),
        "host_rss": rss,
    }


def peak_stats(device: torch.device) -> dict[str, int]:
    """Allocator peaks for an OOM report."""
    stats: dict[str, int] = {"host_rss": psutil.Process(os.getpid()).memory_info().rss}
    if device.type == "cuda" and torch.cuda.is_initialized():
        raw = torch.cuda.memory_stats(device)
        stats.update(
            peak_allocated=int(raw.get("allocated_bytes.all.peak", 0)),
            peak_reserved=int(raw.get("reserved_bytes.all.peak", 0)),
            allocated=int(raw.get("allocated_bytes.all.current", 0)),
            reserved=int(raw.get("reserved_bytes.all.current", 0)),
            num_ooms=int(raw.get("num_ooms", 0)),
        )
    return stats


def vm_size() -> int:
    """This process's virtual address space in bytes (what RLIMIT_AS limits, for `host_mem_cap`)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")
