"""The progress bar `tamer run` shows on a terminal: steps, loss, tokens/s, memory, attempt."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tamer.state.db import Database
from tamer.units import format_size


class RunProgress:
    """Reads the newest step row of the attempt and redraws the bar (the supervisor polls it)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]attempt {task.fields[attempt]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s  mem {task.fields[memory]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=None, attempt="-", loss="-", speed="-", memory="-")

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, db: Database, run_id: str, attempt: int) -> None:
        run = db.run(run_id)
        row = db.conn.execute(
            "SELECT step, loss, tokens_per_s, mem_reserved, host_rss FROM steps WHERE run_id = ? AND attempt = ? ORDER BY step DESC LIMIT 1",
            [run_id, attempt],
        ).fetchone()
        fields: dict[str, Any] = {"attempt": attempt}
        if row:
            step, loss, speed, reserved, rss = row
            fields.update(loss=f"{loss:.4f}", speed=f"{speed:,.0f}" if speed else "-", memory=format_size(reserved if reserved is not None else rss))
            self.progress.update(self.task, completed=step, total=run["total_steps"], **fields)
        else:
            self.progress.update(self.task, total=run["total_steps"], **fields)
