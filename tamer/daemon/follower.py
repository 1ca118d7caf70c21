"""`tamer join RUN_DIR --node-rank N`: another machine's share of a multi-node run; it decides nothing.

Node 0's supervisor owns the run (tamer/protocol.py): the database, the plans and every decision, and its
global rank 0 writes the rows and the checkpoints into the shared run folder. A follower watches that
folder: for each attempt node 0 starts (its plan in `RUN_DIR/plans/attempt-N.json`) that has not ended yet
(no `outcome.json` in its attempt folder) it launches this node's ranks with torchrun (static rendezvous
at node 0's `rdzv_endpoint`, `--node-rank N`) and waits for them; once node 0 has recorded the attempt's
end it kills what is left of them. It ends with the run (`RUN_DIR/ended.json`). Its ranks write their exit
reports, heartbeats and pid files into the shared attempt folder, where node 0's supervisor classifies the
group's end; it never opens the database, so node 0's home need not be visible here.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tamer.config import config_from_dict
from tamer.daemon.runner import CHILD_PROGRAM, AttemptProcess, command, environment
from tamer.errors import ConfigError, StateError
from tamer.plan import Plan
from tamer.protocol import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED_TERM,
    OUTCOME_FILE,
    RUN_ENDED,
    attempt_dir,
    local_ranks,
    newest_attempt,
    node_log_name,
    plan_file,
)

POLL_SECONDS = 0.2
GRACE_SECONDS = 10.0
"""After node 0 recorded an attempt's end, how long this node's ranks may take to notice before they are killed."""
EXIT_CODES = {"done": EXIT_OK, "failed": EXIT_FAILED, "stopped": EXIT_STOPPED_TERM}


class Follower:
    def __init__(
        self,
        run_dir: Path,
        node_rank: int,
        say: Callable[[str], None] = print,
        child_program: Sequence[str] = CHILD_PROGRAM,
    ) -> None:
        self.run_dir = Path(run_dir)
        try:
            spec = json.loads((self.run_dir / "run.json").read_text())
        except (OSError, ValueError) as error:
            raise StateError(
                f"{self.run_dir}: not a tamer run folder ({error}); pass node 0's RUN_DIR (shared filesystem)"
            ) from error
        self.run_id: str = spec["run_id"]
        config = config_from_dict(spec["config"])
        spread = config.distributed
        if spread.nnodes < 2:
            raise ConfigError(f"run {self.run_id} runs on one machine (distributed.nnodes 1): there is nothing to join")
        if not 1 <= node_rank < spread.nnodes:
            raise ConfigError(
                f"--node-rank: must be in [1, {spread.nnodes - 1}] for this run (node 0 runs `tamer run`), got {node_rank}"
            )
        self.node_rank = node_rank
        self.config = config.model_copy(update={"distributed": spread.model_copy(update={"node_rank": node_rank})})
        self.local = local_ranks(node_rank, spread.nproc_per_node)
        self.say = say
        self.child_program = child_program
        self.stop_signal: int | None = None

    def follow(self) -> int:
        """Join every attempt node 0 starts until the run ends; the exit code says how it ended."""
        previous = {signum: signal.signal(signum, self._stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        joined = 0
        self.say(
            f"node {self.node_rank}: following run {self.run_id} in {self.run_dir} (ranks {self.local.start}..{self.local.stop - 1})"
        )
        try:
            while self.stop_signal is None:
                number = newest_attempt(self.run_dir)
                if number > joined and not (attempt_dir(self.run_dir, number) / OUTCOME_FILE).exists():
                    self._join(number)
                    joined = number
                    continue
                ended = self.run_dir / RUN_ENDED
                if ended.exists():
                    status = json.loads(ended.read_text()).get("status", "failed")
                    self.say(f"node {self.node_rank}: run {self.run_id} ended: {status}")
                    return EXIT_CODES.get(status, EXIT_FAILED)
                time.sleep(POLL_SECONDS)
            return EXIT_STOPPED_TERM
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _join(self, number: int) -> None:
        """Run this node's ranks of attempt `number` until they exit (or node 0 ended the attempt)."""
        plan = Plan.from_dict(json.loads(plan_file(self.run_dir, number).read_text()))
        folder = attempt_dir(self.run_dir, number)
        if plan.world_size != self.config.distributed.world_size:  # the planner left this node out
            self.say(f"node {self.node_rank}: attempt {number} runs {plan.world_size} process(es), none here; waiting")
            while not (folder / OUTCOME_FILE).exists() and self.stop_signal is None:
                time.sleep(POLL_SECONDS)
            return
        folder.mkdir(parents=True, exist_ok=True)
        process = AttemptProcess(
            command(self.run_dir, number, plan, self.config, self.run_id, self.child_program),
            environment(plan, self.config.torch_threads),
            folder,
            plan.world_size,
            None,
            local=self.local,
            log_name=node_log_name(self.node_rank),
        )
        self.say(f"node {self.node_rank}: attempt {number} (pid {process.pid}): {plan.describe()}")
        ended_at: float | None = None
        while (returncode := process.poll()) is None:
            if self.stop_signal is not None:
                process.kill()
            elif (folder / OUTCOME_FILE).exists():
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > GRACE_SECONDS:
                    process.kill()
            time.sleep(POLL_SECONDS)
        process.kill()  # leftover ranks of this node, if any: never leave one holding a GPU
        self.say(f"node {self.node_rank}: attempt {number}: this node's ranks exited ({_status(returncode)})")

    def _stop(self, signum: int, frame: Any) -> None:
        """A signal to the follower ends this node's part; node 0 sees its ranks lost and decides."""
        self.stop_signal = signum


def _status(returncode: int) -> str:
    return f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"
