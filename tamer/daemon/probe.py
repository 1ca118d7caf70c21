"""What the device is, learnt without initialising CUDA in the supervisor: NVML first, else a short
probe in a throwaway process (it imports torch: seconds), tried only where an NVIDIA driver is present."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tamer.plan import DeviceFacts

_PROBE = """
import json, torch
if not torch.cuda.is_available():
    print(json.dumps(None))
else:
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"name": p.name, "total_memory": p.total_memory, "compute_capability": [p.major, p.minor],
                      "bf16": torch.cuda.is_bf16_supported()}))
"""


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def nvml_facts() -> dict | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount() < 1:
                return None
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            return {
                "name": name.decode() if isinstance(name, bytes) else name,
                "total_memory": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                "compute_capability": [major, minor],
                "bf16": major >= 8,
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no NVML library: not a CUDA machine as far as NVML knows
        return None


# What an NVIDIA driver leaves on a machine (and WSL's GPU bridge): without any of them CUDA cannot work.
DRIVER_TRACES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/dxg")


def nvidia_driver_present() -> bool:
    return any(Path(trace).exists() for trace in DRIVER_TRACES)


def _subprocess_facts() -> dict | None:
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def device_facts(device: str) -> DeviceFacts:
    """Facts about the device a child will train on (`device` as in RunConfig: auto, cpu, cuda)."""
    bitsandbytes = bitsandbytes_installed()
    if device != "cpu":
        found = nvml_facts() or (_subprocess_facts() if nvidia_driver_present() else None)
        if found:
            return DeviceFacts(
                kind="cuda",
                name=found["name"],
                total_memory=found["total_memory"],
                compute_capability=tuple(found["compute_capability"]),
                bf16=bool(found["bf16"]),
                fp16=True,
                bitsandbytes=bitsandbytes,
            )
    return DeviceFacts(kind="cpu", name="cpu", bf16=True, fp16=False, bitsandbytes=bitsandbytes)
