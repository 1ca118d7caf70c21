"""Firing injected faults (tamer/inject.py parses them) at the training loop's phase boundaries."""

from __future__ import annotations

import errno
import os
import signal
import time

import torch

from tamer.inject import Fault

CUDA_OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 15.00 GiB of which "
    "1.02 GiB is free. Including non-PyTorch memory, this process has 13.98 GiB memory in use. Of the "
    "allocated memory 13.20 GiB is allocated by PyTorch, and 290.00 MiB is reserved by PyTorch but "
    "unallocated. (injected by tamer --inject)"
)
HOST_OOM_TEXT = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 2147483648 bytes. Error code 12 (Cannot allocate memory) (injected by tamer --inject)"
)


def fire(fault: Fault) -> None:
    """Make the fault happen for real: the exception types and signals a real failure produces."""
    if fault.kind == "oom":
        raise torch.OutOfMemoryError(CUDA_OOM_TEXT)
    if fault.kind == "host_oom":
        raise RuntimeError(HOST_OOM_TEXT)
    if fault.kind == "crash":
        raise RuntimeError("injected crash (tamer --inject)")
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault.kind == "enospc":
        raise OSError(errno.ENOSPC, "No space left on device (injected by tamer --inject)")
    if fault.kind == "stall":
        time.sleep(fault.seconds)
    if fault.kind == "hang":
        while True:
            time.sleep(3600)


class FaultPlan:
    """The faults of this attempt, checked at every phase boundary."""

    def __init__(self, faults: list[Fault], attempt: int, rank: int = 0) -> None:
        self.faults = faults
        self.attempt = attempt
        self.rank = rank

    def check(self, phase: str, step: int | None, micro_batch_size: int | None) -> None:
        for fault in self.faults:
            if fault.matches(phase, step, micro_batch_size, self.attempt, self.rank):
                fire(fault)
