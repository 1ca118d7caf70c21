"""`python -m tamer.engine.doctor USED_BEFORE_JSON`: the torch and bitsandbytes half of `tamer doctor`.

tamer/inspect/doctor.py runs this in a fresh process (the CLI never imports torch) and passes what NVML
reported used on each GPU (uuid -> bytes) before: the CUDA context this process creates on each device
costs the difference. It prints one JSON line, {"torch": ..., "bitsandbytes": ...}, last on stdout;
what libraries print on import goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from tamer.errors import error_text
from tamer.protocol import ALLOCATOR_VARIABLES


def _nvml_used(uuid: str) -> int | None:
    """NVML's used memory on the GPU `uuid` now (None if NVML cannot say). NVML is initialised here: this
    runs in a fresh process, and without nvmlInit every query fails (the context cost then read as unknown,
    seen on an H200 on 2026-12-03)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByUUID(uuid)).used)
    except Exception:
        return None


def torch_facts(used_before: dict[str, int]) -> dict[str, Any]:
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
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        uuid = str(properties.uuid)
        uuid = uuid if uuid.startswith("GPU-") else "GPU-" + uuid
        before = used_before.get(uuid)
        free, total = torch.cuda.mem_get_info(index)  # creates this process's context on the device
        after = _nvml_used(uuid)
        facts["devices"].append(
            {
                "index": index,
                "name": properties.name,
                "uuid": uuid,
                "capability": f"{properties.major}.{properties.minor}",
                "total": total,
                "free_for_this_process": free,
                "context_overhead": after - before if before is not None and after is not None else None,
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    facts["allocator_backend"] = torch.cuda.memory.get_allocator_backend()
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    try:
        facts["allocator_in_force"] = getter() if getter else None
    except Exception as error:
        facts["allocator_in_force"] = error_text(error)
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
        return {"usable": False, "reason": error_text(error)}
    return {
        "usable": error < 0.05,
        "version": bitsandbytes.__version__,
        "device": "cuda" if cuda else "cpu",
        "round_trip_error": error,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    used_before = {uuid: int(used) for uuid, used in json.loads(argv[0] if argv else "{}").items()}
    with contextlib.redirect_stdout(sys.stderr):
        torch_part = torch_facts(used_before)
        facts = {"torch": torch_part, "bitsandbytes": bitsandbytes_facts(torch_part["cuda_available"])}
    sys.stdout.write(json.dumps(facts, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
