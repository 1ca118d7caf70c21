"""Start the result child (tamer/engine/result.py) from the torch-free side and wait for it.

The supervisor calls `after_run` once a run completes (evaluate on the held-out questions, then
export to `RUN_DIR/export`); `tamer export` and `tamer eval` call `run_result_child` directly. The
child's output goes to `RUN_DIR/result.log`; a failure after training never changes the run's status
(the weights are in the checkpoint and the commands retry it), it is recorded as a `result_failed` event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tamer.config import RunConfig
from tamer.errors import ERROR_BY_EXIT_CODE, TamerError
from tamer.state.db import Database

POLL_SECONDS = 0.25


def run_result_child(
    run_dir: Path, arguments: list[str], timeout: float | None = None, should_stop: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """Run `python -m tamer.engine.result RUN_DIR ARGUMENTS` to its end; its JSON summary. A failure
    raises the TamerError of its exit code, with the child's one-line reason."""
    with tempfile.TemporaryDirectory(prefix="tamer-result-") as folder:
        summary_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", "tamer.engine.result", str(run_dir), *arguments, "--result", str(summary_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        with open(run_dir / "result.log", "ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, env=env, start_new_session=True)
            started = time.monotonic()
            reason = None
            while child.poll() is None:
                if should_stop():
                    reason = "stopped by the user"
                elif timeout is not None and time.monotonic() - started > timeout:
                    reason = f"took longer than {timeout:.0f} s (watchdog.eval_timeout)"
                if reason:
                    os.killpg(child.pid, signal.SIGKILL)
                    break
                time.sleep(POLL_SECONDS)
            errors = child.communicate()[1].decode(errors="replace")
            log.write(errors.encode())
        if child.returncode == 0 and summary_path.is_file():
            return json.loads(summary_path.read_text())
    if reason is None:
        lines = [line for line in errors.strip().splitlines() if line.strip()]
        said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        reason = said[-1] if said else (lines[-1] if lines else f"exit status {child.returncode}")
    raise ERROR_BY_EXIT_CODE.get(child.returncode, TamerError)(f"{reason} (log: {run_dir / 'result.log'})")


def after_run_arguments(config: RunConfig, run_dir: Path) -> list[str]:
    """What to do once a run completes: evaluate (squad: held-out questions to score; chat and instruct: with
    eval.em_f1; text: never, training recorded its validation loss), export (export.enabled)."""
    arguments = []
    held_out = config.eval_samples > 0 if config.recipe == "squad" else config.eval.em_f1
    if config.eval.squad_samples > 0 and held_out:  # no held-out questions: nothing to score
        arguments.append("--eval")
    if config.export.enabled:
        arguments += ["--export", str(run_dir / "export")]
    return arguments


def after_run(db: Database, run_id: str, run_dir: Path, config: RunConfig, should_stop: Callable[[], bool]) -> None:
    """Evaluate and export a completed run; a failure is an event, never a failed run."""
    arguments = after_run_arguments(config, run_dir)
    if not arguments:
        return
    try:
        run_result_child(run_dir, arguments, timeout=config.watchdog.eval_timeout, should_stop=should_stop)
    except TamerError as error:
        db.event(
            run_id,
            "result_failed",
            f"evaluation/export after the run failed: {error}; "
            f"`tamer eval {run_id}` and `tamer export {run_id}` retry it",
            error=str(error),
        )
