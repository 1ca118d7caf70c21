"""`tamer doctor`: what this machine offers for training, and why nvidia-smi and torch disagree.

Per GPU through NVML: name, total, used, free and the other processes holding memory. From torch: what
this process can get (`torch.cuda.mem_get_info`), the CUDA context's own cost (NVML used after torch
initialises a device minus before), the allocator settings in force, bf16 support. Then whether
bitsandbytes imports and runs a tiny quantize/dequantize. The torch and bitsandbytes probes run in a
child process (tamer/engine/doctor.py): the CLI side never imports torch. Every probe reports its
failure as a fact, so the doctor works, and says so, on a machine without a GPU, NVML or bitsandbytes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tamer.errors import error_text
from tamer.protocol import ALLOCATOR_VARIABLES

GAP_EXPLANATION = (
    "nvidia-smi (NVML) counts everything on the card: every process, and for each its CUDA context "
    "(a few hundred MiB before any tensor exists); torch.cuda.memory_allocated counts only live tensors, "
    "and memory_reserved adds what PyTorch's caching allocator keeps for reuse. So nvidia-smi's 'used' for "
    "this process is about reserved + context, above allocated; free memory in torch.cuda.mem_get_info is "
    "what is left after the other processes too."
)
PROBE_TIMEOUT_SECONDS = 300  # importing torch and initialising every GPU, on a slow disk


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
        return {"available": False, "reason": error_text(error), "gpus": []}
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
        gpus.append(
            {
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                "total": int(info.total),
                "used": int(info.used),
                "free": int(info.free),
                "processes": _gpu_processes(handle),
            }
        )
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
            processes[process.pid] = {
                "pid": process.pid,
                "name": _process_name(process.pid),
                "used": used,
                "this_process": process.pid == os.getpid(),
            }
    return list(processes.values())


def diagnose() -> dict[str, Any]:
    """All the doctor's facts, as plain data (what `tamer doctor --json` prints, less `probe_messages`)."""
    nvml = nvml_facts()  # before torch touches CUDA: the baseline for the context's cost
    return {"host": host_facts(), "nvml": nvml, **torch_side_facts(nvml), "explanation": GAP_EXPLANATION}


def torch_side_facts(nvml: dict[str, Any]) -> dict[str, Any]:
    """`torch` and `bitsandbytes` facts from `python -m tamer.engine.doctor`: the CLI never imports torch,
    and a fresh process is also what measures the CUDA context's cost. What the child prints while it
    imports them (bitsandbytes' note about a kernel it could not load) is kept, one line each, in
    `probe_messages`, for the doctor to show as a note rather than as an error ahead of its report."""
    command = [
        sys.executable,
        "-m",
        "tamer.engine.doctor",
        json.dumps({gpu["uuid"]: gpu["used"] for gpu in nvml.get("gpus", [])}),
    ]
    messages: list[str] = []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS)
        messages = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "probe_messages": messages}
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        reason = f"the torch probe ({' '.join(command[:3])}) failed: {error_text(error)}"
        return {
            "torch": {
                "version": None,
                "cuda_build": None,
                "cuda_available": False,
                "cpu_bf16": False,
                "error": reason,
                "allocator_env": {name: os.environ.get(name) for name in ALLOCATOR_VARIABLES},
                "devices": [],
            },
            "bitsandbytes": {"usable": False, "reason": reason},
            "probe_messages": messages,
        }
