"""`python -m tamer.engine.child RUN_DIR ATTEMPT`: one attempt of a run, in its own process.

The supervisor writes the plan to `RUN_DIR/plans/attempt-N.json` and starts this. The child trains
(tamer/engine/trainer.py) and, however it ends, writes `RUN_DIR/attempts/N/exit.json` — done, stopped,
an error a restart cannot fix, or the exception with its phase, step, micro-batch and memory peaks —
then exits with a code the supervisor classifies (tamer/daemon/classify.py). It dies with the
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
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tamer import protocol
from tamer.errors import TamerError
from tamer.protocol import EXIT_EXCEPTION, EXIT_STOPPED_INT, EXIT_STOPPED_TERM, ExitReport, die_with_parent


def write_report(path: Path, report: ExitReport) -> None:
    """The exit report, with the rank and the time (a group's first failure is its root cause)."""
    from tamer.state.checkpoints import write_json_atomic  # start-up: main() runs before anything heavy is imported

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**report, "rank": int(os.environ.get("RANK", 0)), "time": time.time()})


class StopBeforeTraining(Exception):
    """A stop signal before the first step: nothing of this attempt needs saving, so it ends at once
    (loading and tokenizing can take minutes; waiting for a step boundary would look like a hang)."""


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
        if not stop_flag.get("training"):
            raise StopBeforeTraining()

    if world_size > 1:
        attempt_dir.mkdir(parents=True, exist_ok=True)
        (attempt_dir / protocol.pid_file_name(rank)).write_text(str(os.getpid()))
    else:
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)

    report_path = attempt_dir / protocol.exit_report_name(rank, world_size)
    try:  # importing torch takes seconds: a stop may come in the middle
        from tamer.logs import configure_logging

        configure_logging(
            run_dir / "log.jsonl", process=f"child-{attempt}" + (f"-rank{rank}" if world_size > 1 else "")
        )
        from tamer.engine.trainer import StopRequested, Trainer  # torch, transformers: seconds
    except StopBeforeTraining:
        return _stopped_before_training(report_path, stop_flag, 0)
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
    except StopBeforeTraining:
        return _stopped_before_training(report_path, stop_flag, trainer.state.step if trainer else 0)
    except TamerError as error:
        write_report(
            report_path,
            {"status": "error", "error_kind": error.kind, "message": str(error), "exit_code": error.exit_code},
        )
        return error.exit_code
    except BaseException as error:  # every failure is reported, then classified by the supervisor
        capped = _lift_address_space_limit()
        report: ExitReport = {
            "status": "exception",
            "exc_type": type(error).__name__,
            "message": str(error),
            "traceback": traceback.format_exc(limit=20),
            **storage_facts(error, run_dir),
        }
        if capped:
            report["address_space_capped"] = True
        if trainer is not None:
            report.update(trainer.where())
            _dump_memory_snapshot(trainer.context, error, attempt_dir / protocol.MEMORY_SNAPSHOT, report)
            try:
                # torch: this module's top stays light, so a stop or a failed import still gets an exit report
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
    # torch: this module's top stays light, so a stop or a failed import still gets an exit report
    from tamer.engine import distributed

    distributed.shutdown()
    return 0


def _stopped_before_training(report_path: Path, stop_flag: dict[str, Any], step: int) -> int:
    signum = stop_flag.get("signal", signal.SIGTERM)
    write_report(report_path, {"status": "stopped", "signal": signum, "step": step})
    return EXIT_STOPPED_INT if signum == signal.SIGINT else EXIT_STOPPED_TERM


def _dump_memory_snapshot(attempt: Any, error: BaseException, path: Path, report: ExitReport) -> None:
    """With `memory_snapshot` on, a CUDA OOM leaves the allocator's history for PyTorch's memory_viz."""
    import torch

    # torch: this module's top stays light, so a stop or a failed import still gets an exit report
    from tamer.engine import oom_snapshot

    if not (attempt.config.memory_snapshot and isinstance(error, torch.OutOfMemoryError)):
        return
    dumped = oom_snapshot.dump_on_oom(attempt.device, path)
    if dumped:
        report["memory_snapshot"] = dumped
        attempt.report.event("memory_snapshot", f"allocator history dumped to {dumped}", path=dumped)


def _lift_address_space_limit() -> bool:
    """After a host OOM under `host_mem_cap`, give the report room to be written; whether a cap was on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    return soft != hard


def storage_facts(error: BaseException, run_dir: Path) -> dict[str, Any]:
    """What the supervisor needs to tell a full disk or a file-size limit from a crash: the errno of the
    first OSError in the exception's chain, the free bytes where the run writes, and the file-size limit."""
    facts: dict[str, Any] = {}
    seen: BaseException | None = error
    while seen is not None and "errno" not in facts:
        if isinstance(seen, OSError) and seen.errno is not None:
            facts["errno"] = seen.errno
        seen = seen.__cause__ or seen.__context__
    try:
        facts["disk_free"] = shutil.disk_usage(run_dir).free
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        facts["file_size_limit"] = soft
    return facts


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
