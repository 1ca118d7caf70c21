"""What a notification says, built from database rows, and how each target carries it. Pure: no I/O.

run_ended(run_row, scores, model_path)     # finished / failed / stopped, with what to do next
from_event(event_row, step)                # escalated / deescalated, or None for other events
webhook_body(notification)                 # the JSON a Slack or Discord webhook (or any receiver) takes
command_environment(notification, home)    # TAMER_RUN_ID, TAMER_STATUS, TAMER_EVENT, TAMER_MESSAGE, ...
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from tamer import output
from tamer.protocol import EXIT_CONFIG, EXIT_DATA, EXIT_MODEL

EVENT_KINDS = {"escalate": "escalated", "deescalate": "deescalated"}
"""Database event kinds that are notifications of their own (the run's ending and a stall are built apart)."""
ENDINGS = {"done": "finished", "failed": "failed", "stopped": "stopped"}
"""A run's final status -> the notification event."""
DISCORD_LIMIT = 2000  # characters Discord takes in `content`


@dataclass(frozen=True)
class Notification:
    """One thing to tell: `event` (finished, failed, ...), a one-line `title`, the `message` (a few lines),
    the run it is about (None for the daemon's queue), the run's status and step, and the facts as data."""

    event: str
    title: str
    message: str
    run_id: str | None = None
    status: str | None = None
    step: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Title and message as one text (what a chat message shows)."""
        return f"{self.title}\n{self.message}" if self.message else self.title


def _steps(run: dict[str, Any]) -> str:
    return f"{run['steps_done'] or 0}/{run['total_steps'] or '?'}"


def advice(reason: str | None, exit_code: int | None, run_id: str) -> str:
    """What to do after a failure, from its reason and exit code."""
    reason = reason or ""
    if reason.startswith("out of memory and nothing left to try"):
        return (
            "every plan allowed ran out of memory: start a new run with more memory-saving rungs allowed (ladder.order, "
            "planner.allow_lora, planner.allow_quantization), a shorter max_seq_len, or on a larger card; "
            f"`tamer history --run {run_id}` lists each OOM"
        )
    if reason.startswith(("crash loop", "gave up after")):
        return (
            f"restarting does not fix it: read `tamer logs {run_id}` and the attempt's stderr in the run folder, fix the "
            f"cause, then `tamer resume {run_id}` continues from the newest checkpoint"
        )
    if exit_code in (EXIT_CONFIG, EXIT_DATA, EXIT_MODEL):
        return "the config, data or model was refused (a restart cannot fix that): correct it and start a new run"
    if reason.startswith("disk full") or "disk_full_wait" in reason:
        return f"free space where the run writes, then `tamer resume {run_id}`"
    return f"`tamer show {run_id}` says what happened; `tamer resume {run_id}` tries again from the newest checkpoint"


def run_ended(run: dict[str, Any], scores: dict[str, Any] | None, model_path: str | None) -> Notification:
    """The notification of a run that ended (`run` is its runs row, status done, failed or stopped): final
    loss, EM/F1 and where the model is; why it failed and what to do; where a stopped run resumes."""
    run_id, status = run["id"], run["status"]
    facts: dict[str, Any] = {
        "steps_done": run["steps_done"] or 0,
        "total_steps": run["total_steps"],
        "final_loss": run["final_loss"],
        "final_eval_loss": run["final_eval_loss"],
        "model_path": model_path,
    }
    if status == "done":
        lines = [
            f"{run['steps_done'] or 0} steps, final loss {output.loss(run['final_loss'])}"
            + (f", validation loss {output.loss(run['final_eval_loss'])}" if run["final_eval_loss"] is not None else "")
        ]
        if scores:
            facts.update(exact_match=scores["exact_match"], f1=scores["f1"], questions=scores["questions"])
            lines.append(
                f"SQuAD exact match {scores['exact_match']:.3f}, F1 {scores['f1']:.3f} on {scores['questions']} held-out questions"
            )
        lines.append(f"model: {model_path or '-'}")
        lines.append(f"next: tamer show {run_id}")
        return Notification(
            "finished", f"tamer: run {run_id} finished", "\n".join(lines), run_id, status, run["steps_done"], facts
        )
    if status == "failed":
        todo = advice(run["failure_reason"], run["exit_code"], run_id)
        facts.update(failure_reason=run["failure_reason"], next=todo)
        message = (
            f"{run['failure_reason'] or 'no reason recorded'}\nwhat to do: {todo}\nlast checkpoint: {model_path or '-'}"
        )
        return Notification(
            "failed",
            f"tamer: run {run_id} failed at step {_steps(run)}",
            message,
            run_id,
            status,
            run["steps_done"],
            facts,
        )
    facts.update(reason=run["failure_reason"])
    message = (
        f"{run['failure_reason'] or 'stopped'}\n`tamer resume {run_id}` continues it from its newest checkpoint "
        f"({model_path or 'none yet: from step 0'})"
    )
    return Notification(
        "stopped",
        f"tamer: run {run_id} stopped at step {_steps(run)}",
        message,
        run_id,
        status,
        run["steps_done"],
        facts,
    )


def from_event(event: dict[str, Any], status: str | None, step: int | None) -> Notification | None:
    """The notification of a database event that is one (an escalation, a step back), else None."""
    name = EVENT_KINDS.get(event["kind"])
    if name is None:
        return None
    detail = json.loads(event["detail_json"] or "{}")
    facts = {key: detail[key] for key in ("applied", "skipped") if key in detail}
    title = (
        f"tamer: run {event['run_id']} escalated after attempt {event['attempt']}"
        if name == "escalated"
        else f"tamer: run {event['run_id']} stepped back to a faster plan"
    )
    return Notification(name, title, event["message"], event["run_id"], status, step, facts)


def stalled(run_id: str, minutes: float, step: int | None, phase: str | None) -> Notification:
    """No optimizer step for `minutes` while the run is running."""
    where = f" (the child last reported phase `{phase}`)" if phase else ""
    message = (
        f"no optimizer step for {minutes:.0f} minutes, at step {step or 0}{where}; the watchdog kills a hung child "
        f"after its own deadlines. `tamer status {run_id}` shows what it is doing"
    )
    return Notification(
        "stalled",
        f"tamer: run {run_id} made no progress for {minutes:.0f} minutes",
        message,
        run_id,
        "running",
        step,
        {"minutes": minutes, "phase": phase},
    )


def queue_empty(runs: list[dict[str, Any]]) -> Notification:
    """The daemon's queue ran dry; `runs` are the runs it worked on since it last was empty (runs rows)."""
    lines = [
        f"{run['id']}: {run['status']}, step {_steps(run)}, final loss {output.loss(run['final_loss'])}" for run in runs
    ]
    return Notification(
        "queue_empty",
        "tamer: the queue is empty",
        "\n".join(lines) or "no run waits",
        None,
        None,
        None,
        {"runs": [{"id": run["id"], "status": run["status"]} for run in runs]},
    )


def sample(run_id: str | None) -> Notification:
    """What `tamer notify test` sends."""
    return Notification(
        "test",
        "tamer: test notification",
        "if you can read this, tamer can tell you how a run goes",
        run_id,
        None,
        None,
        {},
    )


# --- what each target takes -----------------------------------------------------------------------


def webhook_body(notification: Notification) -> dict[str, Any]:
    """The JSON POSTed to a webhook: `text` (Slack), `content` (Discord, at most 2000 characters) and the facts."""
    return {
        "text": notification.text,
        "content": notification.text[:DISCORD_LIMIT],
        "event": notification.event,
        "title": notification.title,
        "message": notification.message,
        "run_id": notification.run_id,
        "status": notification.status,
        "step": notification.step,
        "facts": notification.facts,
    }


def command_environment(notification: Notification, home: str, run_dir: str | None) -> dict[str, str]:
    """The variables a notify command sees (added to the supervisor's environment)."""
    facts = notification.facts
    values = {
        "TAMER_EVENT": notification.event,
        "TAMER_RUN_ID": notification.run_id,
        "TAMER_STATUS": notification.status,
        "TAMER_TITLE": notification.title,
        "TAMER_MESSAGE": notification.message,
        "TAMER_STEP": notification.step,
        "TAMER_HOME": home,
        "TAMER_RUN_DIR": run_dir,
        "TAMER_FINAL_LOSS": facts.get("final_loss"),
        "TAMER_EXACT_MATCH": facts.get("exact_match"),
        "TAMER_F1": facts.get("f1"),
        "TAMER_MODEL_PATH": facts.get("model_path"),
        "TAMER_FACTS_JSON": json.dumps(facts, default=str),
    }
    return {key: "" if value is None else str(value) for key, value in values.items()}


def email_message(notification: Notification, sender: str, recipients: list[str]) -> EmailMessage:
    """The e-mail of a notification: the title as subject, the message and the facts as the body."""
    message = EmailMessage()
    message["Subject"] = notification.title
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    facts = "\n".join(f"{key}: {value}" for key, value in notification.facts.items() if value is not None)
    message.set_content(f"{notification.message}\n\n{facts}\n" if facts else f"{notification.message}\n")
    return message


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config (as a dict) with its webhook URL redacted, for events and tracker parameters."""
    notify = config.get("notify") or {}
    if not notify.get("webhook") or str(notify["webhook"]).startswith("$"):
        return config
    return {**config, "notify": {**notify, "webhook": redact(notify["webhook"])}}


def redact(url: str) -> str:
    """A webhook URL as events and errors may show it: scheme and host, the path (the secret of a Slack or Discord
    webhook), credentials and query left out."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a port number
        port = ""
    if not parts.scheme or not parts.hostname:
        return "(redacted URL)"
    hidden = "/(redacted)" if parts.path.strip("/") or parts.query or parts.username else ""
    return f"{parts.scheme}://{parts.hostname}{port}{hidden}"
