"""The daemon's own notifications: its queue ran dry (`queue_empty`), with how each run it worked on ended;
and a job whose supervisor died before it could start the run (`failed`: nobody else can tell).

Targets come from the daemon's notify config (`tamer daemon --notify-config FILE`, else HOME/notify.yaml);
the runs' own notifications are sent by their supervisors. The send is recorded as an event of the last run
the daemon worked on.
"""

from __future__ import annotations

from tamer.config import NotifyConfig
from tamer.notify import messages
from tamer.notify.sender import Notifier
from tamer.state.db import Database
from tamer.state.home import Home


class QueueWatch:
    """Counts the runs the daemon works on and tells once when the queue is empty after some work."""

    def __init__(self, home: Home, config: NotifyConfig | None) -> None:
        self.home = home
        self.notifier = (
            Notifier(home.db_path, [config], str(home.root), None)
            if config is not None and config.has_targets
            else None
        )
        self.worked: list[str] = []

    def job_done(self, run_id: str) -> None:
        self.worked.append(run_id)

    def empty(self, db: Database) -> None:
        """The queue is empty: notify, if the daemon ran anything since it last said so."""
        if self.notifier is None or not self.worked or not self.notifier.wants("queue_empty"):
            return
        runs = [db.run(run_id) for run_id in dict.fromkeys(self.worked)]
        self.notifier.record_run_id = self.worked[-1]
        self.notifier.notify(messages.queue_empty(runs))
        self.worked = []

    def never_started(self, run: dict) -> None:
        """A job's supervisor exited before it started the run (the daemon marked it failed): tell it as failed."""
        if self.notifier is not None and self.notifier.wants("failed"):
            self.notifier.notify(messages.run_ended(run, None, None))

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
