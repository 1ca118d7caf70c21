"""A run piped to a file (no terminal) tells its story in plain lines: the run id alone on stdout, and on
stderr one progress line per interval plus one line per event, each whole, then a last line with the
next command. Also `tamer logs` on the finished run, and no validation line when eval_samples is 0.

The run: 6 steps, checkpoint every 3, a progress line every 2 steps; an OOM in the backward of step 4
at micro-batch 8 is recovered in process (micro-batch 4 x 2).
"""

from __future__ import annotations

import re

from tests.integration.runs import TINY, run_id_of, tamer

STEP_LINE = re.compile(
    r"^\d\d:\d\d:\d\d step (\d+)/6 loss \d+\.\d{4} [\d,]+ tok/s mem [\d.]+ [KMG]iB (RSS|reserved) ETA .+ \(attempt 1\)$"
)


def test_piped_run_prints_progress_lines_and_every_event(tmp_path):
    """Piped, a run prints step lines at the interval, a line per event, and an unwrapped final line."""
    result = tamer(
        "run",
        "squad",
        *TINY,
        "--max-steps",
        "6",
        "--set",
        "checkpoint_every=3",
        "--set",
        "progress_every_steps=2",
        "--set",
        "progress_every_seconds=3600",
        "--set",
        "eval_samples=0",
        "--inject",
        "oom:step=4,phase=backward,min_micro_batch=8",
        home=tmp_path,
        extra_env={"COLUMNS": "80"},
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    assert result.stdout.strip() == run_id  # stdout carries the id alone, for scripts
    lines = result.stderr.splitlines()
    steps = [int(match.group(1)) for match in map(STEP_LINE.match, lines) if match]
    # Every second step, and the last step always.
    assert steps and steps[-1] == 6 and all(later - earlier >= 2 for earlier, later in zip(steps[:-1], steps[1:-1])), (
        lines
    )
    assert len(steps) >= 3, lines
    for kind in ("attempt_start", "data", "start", "in_process_split", "checkpoint", "finish"):
        assert any(f" {kind}: " in line for line in lines), (kind, lines)
    assert any("CUDA OOM in backward at micro-batch 8" in line for line in lines)
    assert lines[-1].startswith(f"run {run_id} done: 6 steps, final loss ") and lines[-1].endswith(
        f"next: tamer show {run_id}"
    )
    assert "validation" not in lines[-1]

    logged = tamer("logs", run_id, home=tmp_path).stdout.splitlines()
    assert sum(bool(STEP_LINE.match(line)) for line in logged) == 6
    assert any(" in_process_split: " in line for line in logged)
