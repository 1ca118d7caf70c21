"""Why a child exited: one `Outcome` (tamer/outcome.py) per attempt, from its exit status and its exit report.

The supervisor calls `classify(returncode, report, oom_killed=..., hung=...)` after every child exit
and hands the Outcome to the ladder. The child's exit report (JSON) says what it knew (exception,
phase, step, micro-batch, memory peaks); the exit status and the cgroup's `memory.events` say what it
could not (a signal, the kernel OOM killer). Pure: no torch import, so every case is unit-tested
with real message texts.
"""

from __future__ import annotations

import dataclasses
import errno
import signal
from pathlib import Path
from typing import Any

from tamer.errors import ERROR_BY_EXIT_CODE
from tamer.outcome import Outcome, parse_oom_message
from tamer.output import MESSAGE_LIMIT, one_line
from tamer.protocol import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_EXCEPTION,
    EXIT_MODEL,
    NOT_RETRYABLE_EXIT_CODES,
    PHASES,
    OutcomeKind,
)
from tamer.units import format_size

# Device allocation failures that do not always say "CUDA out of memory": cuBLAS/cuDNN/cuSOLVER
# cannot get a workspace, or the driver itself reports cudaErrorMemoryAllocation.
CUDA_OOM_MARKERS = (
    "cuda out of memory",
    "cuda error: out of memory",
    "cuda driver error: out of memory",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cusolver_status_alloc_failed",
    "cusparse_status_alloc_failed",
    "cufft_alloc_failed",
)
HOST_OOM_MARKERS = (
    "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory",
    "std::bad_alloc",
    "[errno 12] cannot allocate memory",
)
# Under an address-space cap (host_mem_cap) allocators fail in their own words: oneDNN cannot create a
# primitive because it cannot map its scratch memory.
CAPPED_HOST_OOM_MARKERS = ("could not create a primitive", "cannot allocate memory", "out of memory")
# Writes that fail because the disk is full, or because the file grew past the process's limit (ulimit -f):
# Python's OSError, safetensors' and Rust's io errors, SQLite, torch's zip writer.
DISK_FULL_MARKERS = (
    "no space left on device",
    "disk quota exceeded",
    "storagefull",
    "database or disk is full",
    "[errno 28]",
    "[errno 122]",
)
FILE_TOO_LARGE_MARKERS = ("file too large", "filetoolarge", "[errno 27]")
# A write that failed without saying why, while the disk was this close to full, is a full disk.
NEARLY_FULL_BYTES = 64 * 2**20
CUDA_OOM_TYPES = {"OutOfMemoryError"}
HOST_OOM_TYPES = {"MemoryError"}
ERROR_KINDS = {"config_error", "data_error", "model_error"}
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
# Signals an operator, a job scheduler or a stray `kill` sends: when tamer did not send them, the child was
# killed from outside, not by a bug in it (a crash ends in SIGSEGV, SIGABRT, SIGBUS or an exception).
OUTSIDE_KILL_SIGNALS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _signal_of(returncode: int) -> int | None:
    """The signal behind `returncode`: negative from subprocess, or 128+N from a shell or a clean stop."""
    if returncode < 0:
        return -returncode
    if 128 < returncode <= 128 + 64:
        return returncode - 128
    return None


def _oom_kind(exc_type: str | None, message: str, capped: bool = False) -> OutcomeKind | None:
    lowered = message.lower()
    if exc_type in CUDA_OOM_TYPES or any(marker in lowered for marker in CUDA_OOM_MARKERS):
        return "cuda_oom"
    if exc_type in HOST_OOM_TYPES or any(marker in lowered for marker in HOST_OOM_MARKERS):
        return "host_oom"
    if capped and any(marker in lowered for marker in CAPPED_HOST_OOM_MARKERS):
        return "host_oom"
    return None


def _storage_kind(report: dict[str, Any], message: str) -> OutcomeKind | None:
    """`disk_full` or `file_too_large` when the child's failure was a write the file system refused."""
    lowered = message.lower()
    number = report.get("errno")
    if number == errno.EFBIG or any(marker in lowered for marker in FILE_TOO_LARGE_MARKERS):
        return "file_too_large"
    if number in (errno.ENOSPC, errno.EDQUOT) or any(marker in lowered for marker in DISK_FULL_MARKERS):
        return "disk_full"
    # Writers that do not say why (torch's zip writer): the facts around the failure do.
    unexplained_write = any(word in lowered for word in ("write", "serializ", "save"))
    free = report.get("disk_free")
    if unexplained_write and free is not None and free < NEARLY_FULL_BYTES:
        return "disk_full"
    if unexplained_write and report.get("file_size_limit") is not None:
        return "file_too_large"
    return None


def _storage_outcome(kind: OutcomeKind, report: dict[str, Any], described: str, common: dict[str, Any]) -> Outcome:
    if kind == "file_too_large":
        limit = report.get("file_size_limit")
        said = (
            f"the file-size limit of this process ({format_size(limit)}, ulimit -f)"
            if limit
            else "the file system's largest file"
        )
        message = (
            f"a file grew past {said}: {described}; a restart cannot help: raise the limit (ulimit -f unlimited) "
            "and `tamer resume RUN`"
        )
        return Outcome("file_too_large", one_line(message, 2 * MESSAGE_LIMIT), retryable=False, **common)
    free = report.get("disk_free")
    said = f" ({format_size(free)} free)" if free is not None else ""
    return Outcome("disk_full", one_line(f"the disk is full{said}: {described}", 2 * MESSAGE_LIMIT), **common)


def classify(
    returncode: int | None,
    report: dict[str, Any] | None,
    *,
    oom_killed: bool = False,
    hung: bool = False,
    signals_sent: frozenset[int] | None = None,
) -> Outcome:
    """The Outcome of a child that exited with `returncode` (as subprocess gives it) after writing
    `report` (None when it wrote none). `oom_killed`: memory.events' oom_kill rose during the attempt
    (see detect_oom_kill). `hung`: the supervisor killed it because its heartbeat stopped.
    `signals_sent`: the signals tamer sent this child (a stop file counts as SIGTERM); when given, a
    SIGKILL/SIGTERM/SIGINT/SIGHUP that is not among them is `outside_kill` (also a stop the child made
    on such a SIGTERM); None keeps the older reading (SIGTERM = stopped, SIGKILL = crash).

    Evidence of running out of memory wins over everything else but a clean finish, because an OOM
    often ends in a secondary crash (a SIGABRT at teardown, a dead DataLoader worker).
    """
    report = report or {}
    status = report.get("status")
    exc_type = report.get("exc_type")
    full_message = str(report.get("message") or "")
    phase = report.get("phase") if report.get("phase") in PHASES else None
    signal_number = _signal_of(returncode) if returncode is not None else None
    common: dict[str, Any] = {
        "phase": phase,
        "exit_code": returncode if returncode is not None and returncode >= 0 else None,
        "signal": signal_number,
        "micro_batch_size": report.get("micro_batch_size"),
        "step": report.get("step"),
        "memory_stats": dict(report.get("memory_stats") or {}),
    }
    described = one_line(": ".join(part for part in (exc_type, full_message) if part))

    if status == "done" and returncode == 0:
        return Outcome("done", described or "finished", retryable=False, **common)
    # A TamerError ("error") is the child's own verdict; anything else with a message may be an OOM.
    oom_kind = (
        _oom_kind(exc_type, full_message, bool(report.get("address_space_capped")))
        if status not in ("done", "error")
        else None
    )
    if oom_kind:
        return Outcome(oom_kind, described, sizes=parse_oom_message(full_message), escalate=True, **common)
    storage_kind = _storage_kind(report, full_message) if status == "exception" else None
    if storage_kind:
        return _storage_outcome(storage_kind, report, described, common)
    if returncode is None:
        return Outcome("lost", "the child's exit status is unknown (its supervisor lost track of it)", **common)
    stopped = signal_number in STOP_SIGNALS or status == "stopped"
    stop_signal = report.get("signal") if status == "stopped" else signal_number
    if (
        signals_sent is not None
        and not oom_killed
        and not hung
        and (stopped or returncode < 0)
        and stop_signal in OUTSIDE_KILL_SIGNALS
        and stop_signal not in signals_sent
    ):
        return _outside_kill(int(stop_signal), status == "stopped", common)
    if oom_killed and returncode != 0 and not stopped:
        killed = f"killed by {signal_name(signal_number)}" if signal_number else f"exited with code {returncode}"
        message = f"{killed} after the kernel OOM killer fired (memory.events oom_kill rose)"
        return Outcome("host_oom", message, escalate=True, **common)
    if hung:
        killed = f" ({signal_name(signal_number)})" if signal_number else ""
        return Outcome("hang", f"heartbeat stopped; the supervisor killed it{killed}", **common)
    if signal_number == signal.SIGKILL and signals_sent is not None and signal.SIGKILL in signals_sent:
        # tamer kills a child only on the user's second stop (a hang is told apart above)
        return Outcome(
            "stopped",
            "stopped at once on a second stop request (tamer sent SIGKILL): this step was not "
            "checkpointed; a resume starts from the last checkpoint",
            retryable=False,
            **common,
        )
    if stopped:
        how = f"by {signal_name(signal_number)}" if signal_number in STOP_SIGNALS else "on request"
        return Outcome("stopped", f"stopped {how}", retryable=False, **common)
    error_kind = report.get("error_kind")
    if status == "error" or returncode in (EXIT_CONFIG, EXIT_DATA, EXIT_MODEL):
        kind = error_kind if error_kind in ERROR_KINDS else getattr(ERROR_BY_EXIT_CODE.get(returncode), "kind", None)
        if kind in ERROR_KINDS:
            return Outcome(kind, described or f"exited with code {returncode}", retryable=False, **common)
    retryable = returncode not in NOT_RETRYABLE_EXIT_CODES
    if returncode < 0:
        killed = f"killed by {signal_name(signal_number)}"
        if signal_number == signal.SIGKILL:
            killed += " (no OOM-kill evidence in memory.events)"
        return Outcome("crash", f"{killed}: {described}" if described else killed, retryable=retryable, **common)
    if status in ("exception", "error"):
        return Outcome("crash", described or f"exited with code {returncode}", retryable=retryable, **common)
    if status is None:
        return Outcome("crash", f"exited with code {returncode} without a report", retryable=retryable, **common)
    return Outcome("crash", f"exited with code {returncode} after reporting '{status}'", retryable=retryable, **common)


def _outside_kill(signal_number: int, checkpointed: bool, common: dict[str, Any]) -> Outcome:
    name = signal_name(signal_number)
    if checkpointed:
        message = f"stopped by a {name} that tamer did not send (it checkpointed first): killed from outside, restarted"
    else:
        message = f"killed by {name}, which tamer did not send and the kernel OOM killer did not cause: killed from outside, restarted"
    return Outcome("outside_kill", message, **common)


def read_memory_events(path: str | Path = "/sys/fs/cgroup/memory.events") -> dict[str, int] | None:
    """The counters of a cgroup v2 `memory.events` file (`oom_kill`, `oom`, `max`, ...), or None
    when it cannot be read (cgroup v1, no cgroup namespace, not Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    counters: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            counters[name] = int(value)
    return counters


def detect_oom_kill(before: dict[str, int] | None, after: dict[str, int] | None) -> bool:
    """Whether the kernel OOM killer killed a process in the cgroup between two memory.events
    snapshots. False when either is missing: without a baseline an old kill would be blamed."""
    if before is None or after is None:
        return False
    return after.get("oom_kill", 0) > before.get("oom_kill", 0)


# A rank's error that only says a peer or the network went away (or a collective waited too long): the
# consequence of another rank's failure, or a distributed failure itself, never a root cause to escalate.
DIST_ERROR_TYPES = {"DistError", "DistBackendError", "DistNetworkError", "DistStoreError"}
DIST_ERROR_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "watchdog caught collective operation timeout",
    "nccl",
    "gloo",
    "timed out",
    "collective",
    "processgroup",
    "process group",
    "rendezvous",
    "socket",
)


def _rank_status(report: dict[str, Any]) -> int:
    """The exit status a rank's report implies (torchrun does not pass each rank's status on)."""
    status = report.get("status")
    if status == "done":
        return 0
    if status == "stopped":
        return 128 + int(report.get("signal") or signal.SIGTERM)
    if status == "error":
        return int(report.get("exit_code") or 1)
    return EXIT_EXCEPTION


def _is_dist_error(report: dict[str, Any]) -> bool:
    text = f"{report.get('exc_type') or ''} {report.get('message') or ''}".lower()
    return report.get("exc_type") in DIST_ERROR_TYPES or any(marker in text for marker in DIST_ERROR_MARKERS)


def _blamed(outcome: Outcome, rank: int, world_size: int) -> Outcome:
    return dataclasses.replace(outcome, rank=rank, message=one_line(f"rank {rank} of {world_size}: {outcome.message}"))


def classify_group(
    returncode: int | None,
    reports: dict[int, dict[str, Any]],
    world_size: int,
    *,
    oom_killed: bool = False,
    hung: bool = False,
    stop_requested: bool = False,
    died_first: int | None = None,
) -> Outcome:
    """The one Outcome of a multi-process attempt: torchrun's exit status (`returncode`) and each rank's
        report (`reports`, by rank; a rank that died without writing one is missing). `died_first`: the rank
    the supervisor saw exit first, when it saw one (it names a lost rank that wrote nothing).

        One failure is classified once for the whole group: an OOM on any rank (the earliest, if several)
        escalates every rank; a rank's own crash or error is that rank's outcome; what is left (a rank lost
        without a report, collective timeouts, peers that went away, a failed rendezvous) is `dist_failure`,
        restarted without escalation.
    """
    ranked = {rank: classify(_rank_status(report), report) for rank, report in reports.items()}
    if returncode == 0 and len(reports) == world_size and all(o.kind == "done" for o in ranked.values()):
        return Outcome("done", f"finished on {world_size} processes", retryable=False)

    def earliest(ranks: list[int]) -> int:
        return min(ranks, key=lambda rank: (float(reports[rank].get("time") or float("inf")), rank))

    ooms = [rank for rank, outcome in ranked.items() if outcome.kind in ("cuda_oom", "host_oom")]
    if ooms:
        rank = earliest(ooms)
        return _blamed(ranked[rank], rank, world_size)
    group_status = returncode if returncode is not None else 1
    if oom_killed and not stop_requested:
        return Outcome(
            "host_oom",
            f"torchrun exited with status {group_status} after the kernel OOM killer fired "
            "(memory.events oom_kill rose)",
            escalate=True,
        )
    if hung:
        return Outcome("hang", "a rank's heartbeat stopped; the supervisor killed the group")
    if stop_requested:
        steps = [report.get("step") for report in reports.values() if report.get("status") == "stopped"]
        return Outcome(
            "stopped",
            "stopped on request" + (f" after step {max(steps)}" if steps else ""),
            retryable=False,
            step=max(steps) if steps else None,
        )
    errors = [rank for rank, outcome in ranked.items() if outcome.kind in ERROR_KINDS]
    if errors:
        rank = earliest(errors)
        return _blamed(ranked[rank], rank, world_size)
    failed = [rank for rank, report in reports.items() if report.get("status") == "exception"]
    if failed:
        rank = earliest(failed)
        if not _is_dist_error(reports[rank]):
            return _blamed(ranked[rank], rank, world_size)
    missing = [rank for rank in range(world_size) if rank not in reports]
    first = ranked[earliest(failed)] if failed else None
    if missing:  # a rank died without a word: it is the one to blame, the others' errors follow from it
        lost = died_first if died_first in missing else missing[0]
        message = (
            f"rank {lost} of {world_size} died without a report (killed, or crashed hard)"
            + (f"; rank {', '.join(str(m) for m in missing if m != lost)} too" if len(missing) > 1 else "")
            + (
                f"; then rank {earliest(failed)}: {first.message}"
                if first
                else f"; torchrun exited with status {group_status}"
            )
        )
        if len(missing) == world_size and died_first not in missing:
            message = (
                f"torchrun exited with status {group_status} before any rank reported "
                "(launch or rendezvous failure; see the attempt's child.log)"
            )
            lost = None
        return Outcome(
            "dist_failure",
            one_line(message),
            rank=lost,
            phase=first.phase if first else None,
            step=first.step if first else None,
        )
    if first is not None:
        rank = earliest(failed)
        return Outcome(
            "dist_failure",
            one_line(f"rank {rank} of {world_size}: {first.message}"),
            phase=first.phase,
            step=first.step,
            rank=rank,
            micro_batch_size=first.micro_batch_size,
            memory_stats=first.memory_stats,
        )
    return Outcome(
        "dist_failure",
        f"torchrun exited with status {group_status}; every rank reported "
        f"{', '.join(sorted({str(r.get('status')) for r in reports.values()}))}",
    )
