"""The contract between the supervisor and its child: what each writes where, and what it means.

Both sides import this and nothing else of each other: the supervisor (tamer/daemon/) starts
`python -m tamer.engine.child RUN_DIR ATTEMPT` and reads what the child leaves in its attempt folder;
the child (tamer/engine/) writes it. It depends on nothing in tamer, so either side can import it
without pulling in the other (the parent side never imports torch).

An attempt folder, `RUN_DIR/attempts/N/`, holds:

    exit.json            the exit report of a one-process child (ExitReport), written however it ends
    exit-rank<r>.json    the same, per rank, under torchrun
    heartbeat            rank 0's `PHASE FIRST_STEP`, rewritten every micro-step (the hang watchdog)
    heartbeat-rank<r>    the same for the other ranks
    pid-rank<r>          each rank's pid under torchrun (the supervisor kills leftover ranks by it)
    stop                 the supervisor's request that every rank checkpoint and stop after this step
    plan.json            the plan the child settled on, when it changed it in-process (a split micro-batch)
    child.log            the child's stdout and stderr (child-node<n>.log: another node's, see below)
    outcome.json         written by the owning supervisor once the attempt ended: `{"kind": ...}`

Several machines (distributed.nnodes > 1) share the run folder. Node 0's supervisor owns the run: the
database, the plans (`RUN_DIR/plans/attempt-N.json`, written before attempt N starts), the decisions and,
through its rank 0, the checkpoints. The other nodes run `tamer join RUN_DIR --node-rank N`
(tamer/daemon/follower.py): for each plan without an `outcome.json` they launch their share of the ranks
with torchrun and wait; `RUN_DIR/ended.json` (`{"status": ...}`) tells them the run is over.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from pathlib import Path
from typing import Any, Literal, TypedDict

ATTEMPTS_DIR = "attempts"
EXIT_REPORT = "exit.json"
STOP_FILE = "stop"
"""In the attempt folder: the supervisor's request that every rank checkpoint and stop after the current step."""
OUTCOME_FILE = "outcome.json"
"""In the attempt folder: how the attempt ended, written by node 0's supervisor (other nodes wait for it)."""
RUN_ENDED = "ended.json"
"""In the run folder: the run is over (`{"status": "done" | "failed" | "stopped"}`); removed when it resumes."""
PLAN_FILE = "plan.json"
"""In the attempt folder: the plan the child rewrote in-process; the next attempt starts from it."""
CHILD_LOG = "child.log"
MEMORY_SNAPSHOT = "memory-snapshot.pickle"
HEARTBEAT = "heartbeat"
RANK_EXIT_REPORT_PREFIX = "exit-rank"
PID_FILE_PREFIX = "pid-rank"

HELD_OUT = "held-out"
"""The `data` label of scores on the run's own validation rows: the child stores them under it, every reader
(show, compare, the trackers) selects by it; `tamer eval --data SOURCE` stores its source instead."""
ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
"""Where PyTorch's CUDA caching allocator reads its settings: newer torch PYTORCH_ALLOC_CONF, older versions only
PYTORCH_CUDA_ALLOC_CONF (the expandable_segments rung sets both; the doctor and the child report them)."""


def attempt_dir(run_dir: Path, attempt: int) -> Path:
    """The folder of attempt `attempt` of the run in `run_dir`."""
    return Path(run_dir) / ATTEMPTS_DIR / str(attempt)


def plan_file(run_dir: Path, attempt: int) -> Path:
    """The plan attempt `attempt` starts with, written by the supervisor before it starts the attempt."""
    return Path(run_dir) / "plans" / f"attempt-{attempt}.json"


def newest_attempt(run_dir: Path) -> int:
    """The highest attempt number the supervisor has written a plan for (0 when none yet)."""
    names = (path.name for path in (Path(run_dir) / "plans").glob("attempt-*.json"))
    return max(
        (
            int(name[len("attempt-") : -len(".json")])
            for name in names
            if name[len("attempt-") : -len(".json")].isdigit()
        ),
        default=0,
    )


def node_log_name(node_rank: int) -> str:
    """The child log of a node's share of the ranks: node 0's is CHILD_LOG."""
    return CHILD_LOG if node_rank == 0 else f"child-node{node_rank}.log"


def local_ranks(node_rank: int, nproc_per_node: int) -> range:
    """The global ranks torchrun starts on node `node_rank` (static rendezvous: node order)."""
    return range(node_rank * nproc_per_node, (node_rank + 1) * nproc_per_node)


def heartbeat_name(rank: int) -> str:
    """Each rank's heartbeat file in the attempt folder (the supervisor watches the stalest)."""
    return HEARTBEAT if rank == 0 else f"{HEARTBEAT}-rank{rank}"


def exit_report_name(rank: int, world_size: int) -> str:
    """The exit report's file name: one report for a one-process child, one per rank under torchrun."""
    return EXIT_REPORT if world_size == 1 else f"{RANK_EXIT_REPORT_PREFIX}{rank}.json"


def pid_file_name(rank: int) -> str:
    """Where a rank of a torchrun attempt writes its pid."""
    return f"{PID_FILE_PREFIX}{rank}"


def read_exit_report(folder: Path) -> ExitReport | None:
    """A one-process attempt's exit report, or None when the child died without writing one."""
    path = folder / EXIT_REPORT
    return json.loads(path.read_text()) if path.is_file() else None


def read_rank_exit_reports(folder: Path) -> dict[int, ExitReport]:
    """rank -> exit report of every rank of a torchrun attempt that wrote one."""
    return {
        int(path.stem.removeprefix(RANK_EXIT_REPORT_PREFIX)): json.loads(path.read_text())
        for path in folder.glob(f"{RANK_EXIT_REPORT_PREFIX}*.json")
    }


def rank_pids(folder: Path) -> dict[int, int]:
    """rank -> pid of a torchrun attempt's ranks, from the `pid-rank<r>` files they write at start."""
    pids = {}
    for path in folder.glob(f"{PID_FILE_PREFIX}*"):
        try:
            pids[int(path.name.removeprefix(PID_FILE_PREFIX))] = int(path.read_text())
        except ValueError:  # being written
            continue
    return pids


SUPERVISOR_PID_VARIABLE = "TAMER_SUPERVISOR_PID"
"""Set by the supervisor for its child: the pid it must die with."""
PARENT_PID_VARIABLE = "TAMER_PARENT_PID"
"""Set by the torchrun launcher for its ranks: they die with it, not with the supervisor."""


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies (Linux); if it already died, go now.

    The child dies with the supervisor, so no orphan keeps a GPU busy; the queue's supervisors die
    with the queue daemon the same way."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != expected_parent:
        os._exit(1)


PHASES = ("load", "forward", "backward", "optimizer", "checkpoint", "eval")
"""Where in an attempt the child can be, as its heartbeat and its exit report name it."""
BETWEEN_STEPS = "between_steps"
HEARTBEAT_PHASES = (*PHASES, BETWEEN_STEPS)
"""What a heartbeat file can say: a phase, or that the child is between two optimizer steps."""
IN_STEP_PHASES = ("forward", "backward", "optimizer")

ExitStatus = Literal["done", "stopped", "error", "exception"]


class ExitReport(TypedDict, total=False):
    """The child's exit report (JSON), written by every rank however it ends.

    `status` says how: done, stopped (on a signal or the stop file), error (a TamerError a restart cannot
    fix: error_kind, exit_code) or exception (exc_type, traceback, and where: phase, step, micro-batch).
    """

    status: ExitStatus
    rank: int
    time: float
    step: int
    signal: int
    error_kind: str
    exit_code: int
    message: str
    exc_type: str
    traceback: str
    phase: str
    micro_batch_size: int
    memory_stats: dict[str, Any]
    memory_stats_error: str
    memory_snapshot: str
    errno: int
    """The errno of the first OSError in the exception's chain (ENOSPC: a full disk; EFBIG: a file-size limit)."""
    disk_free: int
    """Free bytes on the file system of the run folder when it failed."""
    file_size_limit: int
    """The process's file-size limit (ulimit -f) in bytes, when one is set."""
    address_space_capped: bool
    """The child ran under an address-space cap (host_mem_cap): an allocator's failure there is a host OOM."""


OutcomeKind = Literal[
    "done",
    "cuda_oom",
    "host_oom",
    "crash",
    "hang",
    "stopped",
    "config_error",
    "data_error",
    "model_error",
    "lost",
    "dist_failure",
    "outside_kill",
    "disk_full",
    "file_too_large",
]
"""How the supervisor classifies an attempt's end (tamer/daemon/classify.py)."""
OUTCOME_KINDS: tuple[OutcomeKind, ...] = OutcomeKind.__args__  # type: ignore[attr-defined]

EXIT_OK = 0
EXIT_FAILED = 1  # the run ended `failed` (ladder exhausted, restart budget spent, ...)
EXIT_CONFIG = 2  # bad config, YAML, --set, preset, option value
EXIT_DATA = 3  # missing or malformed data file
EXIT_MODEL = 4  # missing, gated or unloadable model / tokenizer
EXIT_STATE = 5  # unknown run, corrupt or foreign database
EXIT_LOCKED = 6  # another supervisor holds the run
EXIT_STORAGE = 7  # an output cannot be written: disk full, file too large, read-only place, no permission
EXIT_EXCEPTION = 10  # the child reported an exception (its exit report says which)
EXIT_STOPPED_INT = 130  # stopped by SIGINT
EXIT_STOPPED_TERM = 143  # stopped by SIGTERM

NOT_RETRYABLE_EXIT_CODES = frozenset({EXIT_CONFIG, EXIT_DATA, EXIT_MODEL, EXIT_STATE, EXIT_STORAGE})
