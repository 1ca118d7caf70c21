"""`python -m tamer.engine.child RUN_DIR ATTEMPT`: one attempt of a run, in its own process.

The supervisor writes the plan to `RUN_DIR/plans/attempt-N.json` and starts this. The child trains
(tamer/engine/trainer.py) and, however it ends, writes `RUN_DIR/attempts/N/exit.json` — done, stopped,
an error a restart cannot fix, or the exception with its phase, step, micro-batch and memory peaks —
then exits with a code the supervisor classifies (tamer/daemon/outcome.py). It dies with the
supervisor (PR_SET_PDEATHSIG), so no orphan keeps a GPU busy. The attempt folder's files, the
report's keys and the exit codes are the contract in tamer/protocol.py.

Under torchrun (several processes) each rank writes `exit-rank<r>.json` and its pid to `pid-rank<r>`,
and dies with the torchrun agent. SIGTERM keeps its default action there: torchrun sends it to every
rank when one fails, and a rank blocked in a collective must die at once, not wait for the collective
(a Python handler would only run after it returned). A user's stop reaches the ranks as the `stop`
file in the attempt folder instead, which every rank checks after each step.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tamer import protocol
from tamer.protocol import EXIT_EXCEPTION, EXIT_STOPPED_INT, EXIT_STOPPED_TERM, ExitReport, die_with_parent


def write_report(path: Path, report: ExitReport) -> None:
    """The exit report, with the rank and the time (a group's first failure is its root cause)."""
    from tamer.state.checkpoints import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**report, "rank": int(os.environ.get("RANK", 0)), "time": time.time()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_dir, attempt = Path(argv[0]), int(argv[1])
    parent = os.environ.get(protocol.PARENT_PID_VARIABLE) or os.environ.get(protocol.SUPERVISOR_PID_VARIABLE)
    if parent:
        die_with_parent(int(parent))
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    attempt_dir = protocol.attempt_dir(run_dir, attempt)
    stop_flag = {"stop": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop_flag["stop"] = True
        stop_flag["signal"] = signum

    if world_size > 1:
        attempt_dir.mkdir(parents=True, exist_ok=True)
        (attempt_dir / protocol.pid_file_name(rank)).write_text(str(os.getpid()))
    else:
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    from tamer.logs import configure_logging

    configure_logging(run_dir / "log.jsonl", process=f"child-{attempt}" + (f"-rank{rank}" if world_size > 1 else ""))
    from tamer.engine.trainer import StopRequested, Trainer
    from tamer.errors import TamerError

    report_path = attempt_dir / protocol.exit_report_name(rank, world_size)
    trainer: Trainer | None = None
    try:
        trainer = Trainer(run_dir, attempt, stop_flag)
        trainer.run()
    except StopRequested:
        assert trainer is not None
        trainer.save_checkpoint()  # waits for a save in flight; writes this step's only if not on disk yet
        signum = stop_flag.get("signal", signal.SIGTERM)
        write_report(report_path, {"status": "stopped", "signal": signum, "step": trainer.state.step})
        if world_size > 1:
            return 0  # a non-zero status would make torchrun kill the ranks still writing their reports
        return EXIT_STOPPED_INT if signum == signal.SIGINT else EXIT_STOPPED_TERM
    except TamerError as error:
        write_report(report_path, {"status": "error", "error_kind": error.kind, "message": str(error), "exit_code": error.exit_code})
        return error.exit_code
    except BaseException as error:  # every failure is reported, then classified by the supervisor
        _lift_address_space_limit()
        report: ExitReport = {
            "status": "exception",
            "exc_type": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(limit=20),
        }
        if trainer is not None:
            report.update(trainer.where())
            _dump_memory_snapshot(trainer, error, attempt_dir / protocol.MEMORY_SNAPSHOT, report)
            try:
                from tamer.engine import memory

                report["memory_stats"] = memory.peak_stats(trainer.device)
            except Exception as stats_error:
                report["memory_stats_error"] = str(stats_error)
        else:
            report["phase"] = "load"
        write_report(report_path, report)
        traceback.print_exc()
        return EXIT_EXCEPTION
    write_report(report_path, {"status": "done", "step": trainer.state.step})
    from tamer.engine import distributed

    distributed.shutdown()
    return 0


def _dump_memory_snapshot(trainer: Any, error: BaseException, path: Path, report: ExitReport) -> None:
    """With `memory_snapshot` on, a CUDA OOM leaves the allocator's history for PyTorch's memory_viz."""
    import torch

    from tamer.engine import snapshot

    if not (trainer.config.memory_snapshot and isinstance(error, torch.OutOfMemoryError)):
        return
    dumped = snapshot.dump_on_oom(trainer.device, path)
    if dumped:
        report["memory_snapshot"] = dumped
        trainer.report.event("memory_snapshot", f"allocator history dumped to {dumped}", path=dumped)


def _lift_address_space_limit() -> None:
    """After a host OOM under `host_mem_cap`, give the report room to be written."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
