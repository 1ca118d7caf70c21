"""Fault injection: rehearse recovery with real failures at chosen points.

A fault is `KIND:key=value,...`, given with `--inject` (repeatable) or `TAMER_INJECT` (`;`-separated):

    oom:step=5,phase=backward,min_micro_batch=8   raise torch.OutOfMemoryError (CUDA OOM text)
    host_oom:step=3,phase=forward                  raise the CPU allocator's RuntimeError
    crash:step=7                                   raise RuntimeError (a bug)
    kill:step=7                                    SIGKILL itself (as the kernel OOM killer would)
    segv:step=7                                    SIGSEGV itself
    hang:step=7                                    stop heartbeating and sleep forever
    enospc:phase=checkpoint                        raise OSError(ENOSPC), as a full disk does
    stall:phase=checkpoint,seconds=5               pause that long (a slow disk), still alive

Keys: `step` (optimizer step about to run, 1-based; default any), `phase` (load, forward, backward,
optimizer, checkpoint, eval; default forward; a checkpoint fault fires
mid-write, after the weights are written: in the background writer thread when saves are asynchronous,
so `stall` there is a slow disk that training does not wait for), `min_micro_batch` (only while the micro-batch is at
least this), `attempt` (only in this attempt number), `once` (fire in the first attempt that reaches
it only: later attempts pass), `rank` (only in this process of a multi-GPU run; default every rank).
"""

from __future__ import annotations

from dataclasses import dataclass

from tamer.errors import ConfigError
from tamer.protocol import PHASES

KINDS = ("oom", "host_oom", "crash", "kill", "segv", "hang", "enospc", "stall")


@dataclass(frozen=True)
class Fault:
    kind: str
    phase: str = "forward"
    step: int | None = None
    min_micro_batch: int | None = None
    attempt: int | None = None
    once: bool = False
    seconds: float = 5.0
    rank: int | None = None

    def matches(self, phase: str, step: int | None, micro_batch_size: int | None, attempt: int, rank: int = 0) -> bool:
        """Whether this fault fires at this point of this attempt, in this rank."""
        if phase != self.phase:
            return False
        if self.step is not None and step != self.step:
            return False
        if self.min_micro_batch is not None and (micro_batch_size or 0) < self.min_micro_batch:
            return False
        if self.attempt is not None and attempt != self.attempt:
            return False
        if self.once and attempt != 1:
            return False
        if self.rank is not None and rank != self.rank:
            return False
        return True


def parse_fault(text: str) -> Fault:
    """A Fault from `KIND:key=value,...`, or a one-line ConfigError."""
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise ConfigError(f"inject '{text}': unknown fault '{kind}'; choose one of {', '.join(KINDS)}")
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, raw = item.partition("=")
        if key == "once":
            values["once"] = raw in ("", "1", "true", "yes")
        elif key == "phase":
            if raw not in PHASES:
                raise ConfigError(f"inject '{text}': unknown phase '{raw}'; choose one of {', '.join(PHASES)}")
            values["phase"] = raw
        elif key == "seconds":
            try:
                values["seconds"] = float(raw)
            except ValueError:
                raise ConfigError(f"inject '{text}': seconds must be a number, got '{raw}'") from None
        elif key in ("step", "min_micro_batch", "attempt", "rank"):
            if not raw.isdigit():
                raise ConfigError(f"inject '{text}': {key} must be a whole number, got '{raw}'")
            values[key] = int(raw)
        else:
            raise ConfigError(
                f"inject '{text}': unknown key '{key}'; use step, phase, min_micro_batch, attempt, rank, once, seconds"
            )
    return Fault(kind=kind, **values)  # type: ignore[arg-type]


def parse_faults(items: list[str]) -> list[Fault]:
    return [parse_fault(item) for item in items]
