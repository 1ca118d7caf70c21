"""The child's device and memory limits: which device trains, `gpu_mem_cap` (a fraction of the card),
the allocator settings in force, and `host_mem_cap` (an address-space limit). Set by the trainer at
setup (tamer/engine/trainer.py); each limit set is announced as an event.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

import torch

from tamer.config import RunConfig
from tamer.engine import distributed, memory
from tamer.errors import ConfigError
from tamer.units import parse_size


def choose_device(config: RunConfig, group: distributed.Group) -> torch.device:
    """The device this process trains on: the CPU, its rank's GPU, or the current GPU."""
    if config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA GPU; use --set device=cpu or auto")
    if group.distributed:
        if group.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"distributed.nproc_per_node: process {group.local_rank} has no GPU of its own "
                f"(this machine has {torch.cuda.device_count()}); use --gpus {torch.cuda.device_count()} or fewer"
            )
        return torch.device("cuda", group.local_rank)
    return torch.device("cuda", torch.cuda.current_device())


def set_device_limits(device: torch.device, config: RunConfig, event: Callable[..., None]) -> None:
    """Bind the GPU, cap this process's share of it (`gpu_mem_cap`) and say which allocator settings hold."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)  # before joining the group: NCCL binds to the current device
    if config.gpu_mem_cap:
        cap = parse_size(config.gpu_mem_cap)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    settings = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    if settings:
        torch.empty(1, device=device)  # the allocator reads its settings on first use
        event(
            "allocator",
            f"allocator settings in force: {_allocator_settings() or settings}",
            requested=settings,
            in_force=_allocator_settings(),
        )


def set_host_limit(config: RunConfig, event: Callable[..., None]) -> None:
    """`host_mem_cap`: the address space may grow by at most this much beyond what setup mapped."""
    if not config.host_mem_cap:
        return
    current = memory.vm_size()
    limit = current + parse_size(config.host_mem_cap)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    event("host_mem_cap", f"address space capped at {limit} bytes ({config.host_mem_cap} above setup)", limit=limit)


def _allocator_settings() -> str | None:
    getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    try:
        return getter() if getter else None
    except Exception:
        return None
