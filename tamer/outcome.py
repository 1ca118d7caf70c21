"""How one child attempt ended (`Outcome`), and the sizes an out-of-memory message states.

The record every side reads: the supervisor's classifier (tamer/daemon/classify.py) builds one per
attempt, the ladder, the policy and the planner decide on it, and the inspection side parses the same
messages back out of the database. Pure data and regular expressions: no torch, nothing above the
ground floor.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from tamer.protocol import OutcomeKind
from tamer.schema import validate
from tamer.units import parse_size

OOM_KINDS = ("cuda_oom", "host_oom")
"""The outcomes that mean the plan needs less memory."""

_SIZE = r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>bytes|B|KiB|MiB|GiB|TiB)\b"
# Both torch formats: the new one (2.1+) in sentences, the old one in a parenthesis. torch 2.1
# spelled "capacty", hence `capac\w*`.
_SIZE_PATTERNS = {
    "tried_to_allocate": [rf"tried to allocate {_SIZE}"],
    "total_capacity": [rf"total capac\w* of {_SIZE}", rf"{_SIZE} total capacity"],
    "free": [rf"of which {_SIZE} is free", rf"{_SIZE} free\b"],
    "allowed": [rf"{_SIZE} allowed;"],
    "process_in_use": [rf"this process has {_SIZE} memory in use"],
    "allocated_by_pytorch": [
        rf"of the allocated memory {_SIZE} is allocated by pytorch",
        rf"{_SIZE} already allocated",
    ],
    "reserved_unallocated": [rf"{_SIZE} is reserved by pytorch but unallocated"],
    "reserved_total": [rf"{_SIZE} reserved in total by pytorch"],
}
# torch lists every other process on the card this way; inside a container NVML reports host pids,
# so the child itself may appear here instead of as "this process".
_OTHER_PROCESS = re.compile(rf"process \d+ has {_SIZE} memory in use", re.IGNORECASE)


def _bytes(match: re.Match[str]) -> int:
    return parse_size(match.group("value") + match.group("unit"))


def parse_oom_message(text: str) -> dict[str, int]:
    """The sizes (bytes) an out-of-memory message states, by name; only those that parse.

    Names: tried_to_allocate, total_capacity, free, allowed (set_per_process_memory_fraction),
    process_in_use, other_processes_in_use (sum of "Process N has ..."), allocated_by_pytorch,
    reserved_unallocated, reserved_total. Each format states two of the last three; the third is
    derived. The CPU allocator's "you tried to allocate N bytes" gives tried_to_allocate.
    """
    sizes: dict[str, int] = {}
    for name, patterns in _SIZE_PATTERNS.items():
        for pattern in patterns:
            match = re.search(pattern, text, re.IGNORECASE)
            if match:
                sizes[name] = _bytes(match)
                break
    others = [_bytes(match) for match in _OTHER_PROCESS.finditer(text)]
    if others:
        sizes["other_processes_in_use"] = sum(others)
    allocated = sizes.get("allocated_by_pytorch")
    if allocated is not None and "reserved_unallocated" in sizes and "reserved_total" not in sizes:
        sizes["reserved_total"] = allocated + sizes["reserved_unallocated"]
    if allocated is not None and "reserved_total" in sizes and "reserved_unallocated" not in sizes:
        sizes["reserved_unallocated"] = sizes["reserved_total"] - allocated
    return sizes


@dataclass(frozen=True)
class Outcome:
    """How one child attempt ended, and whether the supervisor should retry and escalate."""

    kind: OutcomeKind
    message: str
    phase: str | None = None
    """load, forward, backward, optimizer, checkpoint or eval; None when unknown."""
    exit_code: int | None = None
    """The child's exit status; None when a signal killed it or the status is unknown."""
    signal: int | None = None
    """The signal that ended the child (also for shell-style 128+N statuses)."""
    micro_batch_size: int | None = None
    step: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    """Bytes parsed from the OOM message (see parse_oom_message)."""
    memory_stats: dict[str, Any] = field(default_factory=dict)
    """Peaks from the child's report (torch.cuda.memory_stats and host RSS), passed through."""
    retryable: bool = True
    escalate: bool = False
    rank: int | None = None
    """In a multi-process run, the rank whose failure this is (None: one process, or no rank to blame)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        """An outcome from its to_dict() form, strictly: an unknown key or a wrong value is a ConfigError."""
        return validate(cls, data, "outcome.")
