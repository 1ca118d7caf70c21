"""The notifier: sends notifications off the supervisor's loop and records each send in the database.

    notifier = Notifier(db_path, [run_config.notify, home_notify], home, run_dir, record_run_id=run_id)
    notifier.notify(messages.run_ended(...))     # returns at once
    notifier.close()                             # waits a bounded time for what is still being sent

One worker thread per target, so a webhook that times out delays neither the e-mail nor the run. Each
send is retried with tenacity (stop_after_attempt(notify.attempts), exponential backoff with jitter)
while the failure may pass (a timeout, HTTP 5xx); every send becomes a `notify_sent` event and every
final failure a `notify_failed` event, with the webhook's secret part redacted. Nothing here raises
into the caller: a notification never fails the run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from tamer.config import NotifyConfig
from tamer.notify.messages import Notification
from tamer.notify.targets import PermanentError, SendError, Target, targets_of
from tamer.state.db import Database

log = structlog.get_logger("tamer.notify")
WAIT_INITIAL = 0.5  # seconds before the second try; doubles with each
WAIT_MAX = 8.0  # longest wait between tries
JITTER = 1.0  # up to this many seconds added to each wait, so that many senders do not retry in step
CLOSE_MARGIN = 5.0
CLOSE_POLL_SECONDS = 0.25


def retrying(attempts: int, sleep: Callable[[float], Any] = time.sleep) -> Retrying:
    """The retry policy of one send: `attempts` tries at most, backoff 0.5, 1, 2 ... 8 s plus up to 1 s of jitter,
    and no retry of a failure that cannot pass (PermanentError) nor of an unexpected error."""
    return Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=WAIT_INITIAL, max=WAIT_MAX, jitter=JITTER),
        retry=retry_if_exception(lambda error: isinstance(error, SendError) and not isinstance(error, PermanentError)),
        sleep=sleep,
        reraise=True,
    )


class _Route:
    """One target, the notifications it takes and how hard to try."""

    def __init__(self, target: Target, events: set[str], attempts: int, timeout: float) -> None:
        self.target, self.events, self.attempts, self.timeout = target, events, attempts, timeout
        self.queue: queue.Queue[Notification | None] = queue.Queue()
        self.thread: threading.Thread | None = None


class Notifier:
    """Sends each notification to the targets whose config selects its event, one worker thread per target
    (see the module docstring). `configs`: the run's notify config and the home's or daemon's (a target named
    in both is sent to once). `record_run_id` files events of notifications about no run (the queue)."""

    def __init__(
        self,
        db_path: Path,
        configs: list[NotifyConfig],
        home: str,
        run_dir: str | None,
        *,
        record_run_id: str | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.db_path = db_path
        self.record_run_id = record_run_id
        self.sleep = sleep
        self.routes: dict[str, _Route] = {}
        self.results: list[dict[str, Any]] = []
        """One entry per finished send: target, event, sent (bool), tries, error."""
        for config in configs:
            for target in targets_of(config, home, run_dir):
                route = self.routes.get(target.name)
                if route is None:
                    self.routes[target.name] = _Route(target, set(config.events), config.attempts, config.timeout)
                else:  # the same target in two configs: the union of their events, the more patient retries
                    route.events |= set(config.events)
                    route.attempts, route.timeout = (
                        max(route.attempts, config.attempts),
                        max(route.timeout, config.timeout),
                    )

    def wants(self, event: str) -> bool:
        """Whether any target takes notifications of `event`."""
        return any(event in route.events for route in self.routes.values())

    def notify(self, notification: Notification, *, every_target: bool = False) -> list[str]:
        """Queue `notification` for each target that selects its event (all of them with `every_target`); the
        targets' names. Returns at once."""
        chosen = [route for route in self.routes.values() if every_target or notification.event in route.events]
        for route in chosen:
            if route.thread is None:
                route.thread = threading.Thread(
                    target=self._work, args=(route,), name=f"tamer-notify {route.target.name}", daemon=True
                )
                route.thread.start()
            route.queue.put(notification)
        return [route.target.name for route in chosen]

    def close(self, timeout: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Let every queued notification be sent, waiting at most `timeout` seconds (default: long enough for every
        try of one notification per target) or until `should_stop()`; whether all were. Those still unsent are
        recorded as failed."""
        started = [route for route in self.routes.values() if route.thread is not None]
        if timeout is None:
            timeout = (
                max((route.attempts * (route.timeout + WAIT_MAX + JITTER) for route in started), default=0.0)
                + CLOSE_MARGIN
            )
        deadline = time.monotonic() + timeout
        for route in started:
            route.queue.put(None)
        for route in started:
            while route.thread.is_alive() and time.monotonic() < deadline and not should_stop():
                route.thread.join(min(CLOSE_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        late = [route for route in started if route.thread.is_alive()]
        for route in late:
            self._record(
                None,
                "notify_failed",
                f"notifications to {route.target.name} still unsent when the supervisor exited "
                f"(after {timeout:.0f} s, or a second stop signal): given up",
                target=route.target.name,
            )
        return not late

    # --- the worker -----------------------------------------------------------------------------

    def _work(self, route: _Route) -> None:
        while (notification := route.queue.get()) is not None:
            self._send(route, notification)

    def _send(self, route: _Route, notification: Notification) -> None:
        tries = 0
        try:
            for attempt in retrying(route.attempts, self.sleep):
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    route.target.send(notification)
        except Exception as error:  # noqa: BLE001 - a notification must never take the supervisor down
            reason = str(error) if isinstance(error, SendError) else f"{type(error).__name__}: {error}"
            self._record(
                notification,
                "notify_failed",
                f"{notification.event} not sent to {route.target.name} after {tries} "
                f"{'try' if tries == 1 else 'tries'}: {reason}; the run is not affected",
                target=route.target.name,
                event=notification.event,
                tries=tries,
                error=reason,
            )
            self.results.append(
                {
                    "target": route.target.name,
                    "event": notification.event,
                    "sent": False,
                    "tries": tries,
                    "error": reason,
                }
            )
            return
        self.results.append(
            {"target": route.target.name, "event": notification.event, "sent": True, "tries": tries, "error": None}
        )
        self._record(
            notification,
            "notify_sent",
            f"{notification.event} sent to {route.target.name}" + (f" after {tries} tries" if tries > 1 else ""),
            target=route.target.name,
            event=notification.event,
            tries=tries,
        )

    def _record(self, notification: Notification | None, kind: str, message: str, **detail: Any) -> None:
        run_id = (notification.run_id if notification else None) or self.record_run_id
        if run_id is None:
            return
        try:
            db = Database(self.db_path, create=False)
            try:
                db.event(run_id, kind, message, **detail)
            finally:
                db.close()
        except Exception as error:  # noqa: BLE001 - the record is lost, the run goes on
            log.warning("notify_record_failed", error=str(error), kind=kind, message=message)
