"""`tamer doctor`: what this machine offers for training, and why nvidia-smi and torch disagree.

Per GPU through NVML: name, total, used, free and the other processes holding memory. From torch: what
this process can get (`torch.cuda.mem_get_info`), the CUDA context's own cost (NVML used after torch
initialises a device minus before), the allocator settings in force, bf16 support. Then whether
bitsandbytes imports and runs a tiny quantize/dequantize. Every probe reports its failure as a fact,
so the doctor works, and says so, on a machine without a GPU, NVML or bitsandbytes.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import psutil

GAP_EXPLANATION = (
    "nvidia-smi (NVML) counts everything on the card: every process, and for each its CUDA context "
    "(a few hundred MiB before any tensor exists); torch.cuda.memory_allocated counts only live tensors, "
    "and memory_reserved adds what PyTorch's caching allocator keeps for reuse. So nvidia-smi's 'used' for "
    "this process is about reserved + context, above allocated; free memory in torch.cuda.mem_get_info is "
    "what is left after the other processes too."
)
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def host_facts() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_total": memory.total,
        "memory_available": memory.available,
        "cgroup_memory_limit": _cgroup_memory_limit(),
    }


def _cgroup_memory_limit() -> int | None:
    """The cgroup v2 memory limit in bytes (what the kernel OOM killer enforces here), None when unlimited or unknown."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"  # in a container NVML reports host pids, which this namespace cannot see


def nvml_facts() -> dict[str, Any]:
    """Every GPU NVML sees, with the processes that hold its memory; `available: False` and why, without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:
        return {"available": False, "reason": _error_text(error), "gpus": []}
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append({"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle)), "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                     "total": int(info.total), "used": int(info.used), "free": int(info.free), "processes": _gpu_processes(handle)})
    return {"available": True, "driver": _text(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpu_processes(handle: Any) -> list[dict[str, Any]]:
    import pynvml

    processes: dict[int, dict[str, Any]] = {}
    for query in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            found = query(handle)
        except pynvml.NVMLError:
            continue
        for process in found:
            used = process.usedGpuMemory if isinstance(process.usedGpuMemory, int) else None
            processes[process.pid] = {"pid": process.pid, "name": _process_name(process.pid), "used": used,
                                      "this_process": process.pid == os.getpid()}
    return list(processes.values())


def _nvml_used(uuid: str) -> int | None:
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid)).used)
    except Exception:
        return None


def torch_facts(nvml: dict[str, Any]) -> dict[str, Any]:
    """What torch sees; on each CUDA device, initialising it measures the context's cost through NVML."""
    import torch

    facts: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_bf16": _cpu_bf16(torch),
        "allocator_env": {name: os.environ.get(name) for name in ALLOCATOR_VARIABLES},
        "devices": [],
    }
    if not facts["cuda_available"]:
        return facts
    by_uuid = {gpu["uuid"]: gpu for gpu in nvml.get("gpus", [])}
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        uuid = str(properties.uuid)
        uuid = uuid if uuid.startswith("GPU-") else "GPU-" + uuid
        before = by_uuid[uuid]["used"] if uuid in by_uuid else None
        free, total = torch.cuda.mem_get_info(index)  # creates this process's context on the device
        after = _nvml_used(uuid)
        facts["devices"].append({
            "index": index, "name": properties.name, "uuid": uuid, "capability": f"{properties.major}.{properties.minor}",
            "total": total, "free_for_this_process": free,
            "context_overhead": after - before if before is not None and after is not None else None,
            "bf16": torch.cuda.is_bf16_supported(),
        })
    facts["allocator_backend"] = torch.cuda.memory.get_allocator_backend()
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    try:
        facts["allocator_in_force"] = getter() if getter else None
    except Exception as error:
        facts["allocator_in_force"] = _error_text(error)
    return facts


def _cpu_bf16(torch: Any) -> bool:
    try:
        torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)
        return True
    except Exception:
        return False


def bitsandbytes_facts(cuda: bool) -> dict[str, Any]:
    """Whether bitsandbytes imports and round-trips a tiny blockwise 8-bit quantization (on the GPU when there is one)."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as functional
        import torch

        values = torch.linspace(-1, 1, 256, device="cuda" if cuda else "cpu")
        quantized, state = functional.quantize_blockwise(values)
        error = float((functional.dequantize_blockwise(quantized, state) - values).abs().max())
    except Exception as error:
        return {"usable": False, "reason": _error_text(error)}
    return {"usable": error < 0.05, "version": bitsandbytes.__version__, "device": "cuda" if cuda else "cpu",
            "round_trip_error": error}


def diagnose() -> dict[str, Any]:
    """All the doctor's facts, as plain data (what `tamer doctor --json` prints)."""
    nvml = nvml_facts()  # before torch touches CUDA: the baseline for the context's cost
    torch_part = torch_facts(nvml)
    return {
        "host": host_facts(),
        "nvml": nvml,
        "torch": torch_part,
        "bitsandbytes": bitsandbytes_facts(torch_part["cuda_available"]),
        "explanation": GAP_EXPLANATION,
    }
