"""Notifications: what each says, which events are sent, the webhook, command and e-mail targets against local
receivers, retries with backoff, the records in the database, and the real supervisor (fake child) telling a
local webhook of a run's end, its failure and an escalation."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from tamer.config import NotifyConfig, build_config
from tamer.daemon.mirror import RunMirror
from tamer.daemon.supervisor import Supervisor, create_run
from tamer.errors import EXIT_FAILED, EXIT_OK, ConfigError
from tamer.notify import messages, sender, settings
from tamer.notify.sender import Notifier
from tamer.notify.targets import Command, Email, PermanentError, SendError, Webhook
from tamer.state.db import Database
from tamer.state.home import Home
from tests.receivers import smtp_server, webhook

FAKE_CHILD = [str(Path(__file__).resolve().parents[1] / "fake" / "child.py")]
RUN = {
    "id": "squad-1",
    "status": "done",
    "steps_done": 12,
    "total_steps": 12,
    "final_loss": 1.25,
    "final_eval_loss": 1.5,
    "failure_reason": None,
    "exit_code": 0,
}


def notify(**keys) -> NotifyConfig:
    return NotifyConfig.from_mapping(keys)


def new_home(tmp_path: Path, **options) -> tuple[Home, str]:
    home = Home.resolve(tmp_path)
    sets = {"restart_backoff": 0.0, "eval.squad_samples": 0, "export.enabled": False, "device": "cpu", **options}
    return home, create_run(home, build_config("tiny", None, sets, []))


def events(home: Home, run_id: str, kind: str) -> list[dict]:
    db = Database(home.db_path)
    try:
        return [
            {**event, "detail": json.loads(event["detail_json"] or "{}")}
            for event in db.events(run_id)
            if event["kind"] == kind
        ]
    finally:
        db.close()


class Flaky:
    """A target that fails `failures` times with `error`, then succeeds."""

    name = "flaky"

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def send(self, notification) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error


# --- what a notification says ------------------------------------------------------------------------


def test_finished_says_loss_scores_and_where_the_model_is():
    """A finished run's notification carries the final loss, validation loss, EM/F1 and the model's folder, in text and facts."""
    scores = {"exact_match": 0.5, "f1": 0.625, "questions": 64, "step": 12}
    note = messages.run_ended(RUN, scores, "/runs/squad-1/export")
    assert note.event == "finished" and note.title == "tamer: run squad-1 finished"
    assert (
        "final loss 1.2500, validation loss 1.5000" in note.message
        and "exact match 0.500, F1 0.625 on 64" in note.message
    )
    assert "model: /runs/squad-1/export" in note.message
    assert note.facts["f1"] == 0.625 and note.facts["model_path"] == "/runs/squad-1/export"


def test_failed_says_why_and_what_to_do_next():
    """A run that ran out of plans is told with its reason and advice on what to change; a crash loop points at the logs."""
    out_of_plans = {
        **RUN,
        "status": "failed",
        "failure_reason": "out of memory and nothing left to try: all rungs applied",
        "exit_code": 1,
    }
    note = messages.run_ended(out_of_plans, None, None)
    assert note.event == "failed" and "at step 12/12" in note.title
    assert "nothing left to try" in note.message and "what to do: every plan allowed ran out of memory" in note.message
    crashing = {**out_of_plans, "failure_reason": "crash loop: crash at step 2 3 times in a row"}
    assert "tamer logs squad-1" in messages.run_ended(crashing, None, None).facts["next"]


def test_stopped_says_how_to_resume():
    """A stopped run's notification names `tamer resume` and the checkpoint it continues from."""
    note = messages.run_ended(
        {**RUN, "status": "stopped", "steps_done": 5, "failure_reason": "stopped by the user at step 5"},
        None,
        "/c/step-4",
    )
    assert note.event == "stopped" and "tamer resume squad-1" in note.message and "/c/step-4" in note.message


def test_webhook_body_has_slack_and_discord_text_fields():
    """The JSON has `text` (Slack) and `content` (Discord, cut to 2000 characters), plus the event, run and facts."""
    long = messages.Notification("finished", "t", "x" * 3000, "squad-1", "done", 3, {"final_loss": 1.0})
    body = messages.webhook_body(long)
    assert (
        body["text"] == "t\n" + "x" * 3000 and len(body["content"]) == 2000 and body["content"] == body["text"][:2000]
    )
    assert (body["event"], body["run_id"], body["status"], body["step"], body["facts"]) == (
        "finished",
        "squad-1",
        "done",
        3,
        {"final_loss": 1.0},
    )
    json.dumps(body)


def test_only_escalations_and_steps_back_are_event_notifications():
    """An escalate event becomes `escalated`, a deescalate one `deescalated`; a checkpoint event is no notification."""
    row = {
        "run_id": "r",
        "attempt": 2,
        "kind": "escalate",
        "message": "OOM: +gradient_checkpointing",
        "detail_json": json.dumps({"applied": ["gradient_checkpointing"]}),
    }
    note = messages.from_event(row, "running", 7)
    assert note.event == "escalated" and note.facts == {"applied": ["gradient_checkpointing"]} and note.step == 7
    assert messages.from_event({**row, "kind": "deescalate"}, "running", 7).event == "deescalated"
    assert messages.from_event({**row, "kind": "checkpoint"}, "running", 7) is None


def test_redact_keeps_the_host_and_hides_the_secret_path():
    """A Slack webhook URL shows as its host only; credentials and query strings are hidden too."""
    assert messages.redact("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/(redacted)"
    assert messages.redact("https://user:pw@example.com:8443") == "https://example.com:8443/(redacted)"
    assert messages.redact("https://example.com") == "https://example.com"
    assert "XXXX" not in Webhook("https://hooks.slack.com/services/T0/B0/XXXX", 1).name


# --- config -----------------------------------------------------------------------------------------


def test_escalations_are_off_by_default_and_the_rest_on():
    """By default every event but `escalated` is selected."""
    defaults = NotifyConfig().events
    assert "escalated" not in defaults and {
        "finished",
        "failed",
        "stopped",
        "deescalated",
        "stalled",
        "queue_empty",
    } == set(defaults)


def test_webhook_must_be_a_url_or_a_variable():
    """notify.webhook takes an http(s) URL or $NAME; anything else is a one-line config error."""
    assert (
        notify(webhook="$SLACK_URL").webhook == "$SLACK_URL"
        and notify(webhook="${SLACK_URL}").webhook == "${SLACK_URL}"
    )
    with pytest.raises(ConfigError, match="notify.webhook: expected an http"):
        build_config("tiny", None, None, ["notify.webhook=hooks.slack.com/x"])
    with pytest.raises(ConfigError, match="notify.events"):
        build_config("tiny", None, None, ["notify.events=[finished, finished]"])


def test_notify_settings_do_not_change_the_config_hash():
    """Notifications and trackers do not decide the result: the config hash ignores them."""
    plain = build_config("tiny")
    told = build_config("tiny", None, None, ["notify.webhook=https://x.example/y", "trackers=[tensorboard]"])
    assert plain.config_hash() == told.config_hash()


def test_the_home_notify_file_is_read_and_checked(tmp_path, monkeypatch):
    """HOME/notify.yaml gives the home's targets; a wrong key in it is a one-line error naming the file."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    assert settings.home_notify(tmp_path) is None
    (tmp_path / "notify.yaml").write_text("webhook: https://x.example/y\nevents: [failed]\n")
    assert settings.home_notify(tmp_path).events == ["failed"]
    (tmp_path / "notify.yaml").write_text("webhok: https://x.example/y\n")
    with pytest.raises(ConfigError, match=r"notify.yaml: notify.webhok: unknown key; did you mean webhook"):
        settings.home_notify(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        settings.home_notify(tmp_path, tmp_path / "absent.yaml")


# --- targets ----------------------------------------------------------------------------------------


def test_webhook_posts_json_to_a_local_server():
    """The webhook target POSTs the body a Slack-style receiver reads; HTTP 500 may pass, HTTP 404 cannot."""
    with webhook([500, 404]) as receiver:
        target = Webhook(receiver.url, 5)
        note = messages.sample("squad-1")
        with pytest.raises(SendError) as first:
            target.send(note)
        assert not isinstance(first.value, PermanentError)
        with pytest.raises(PermanentError, match="HTTP 404"):
            target.send(note)
        target.send(note)
        assert receiver.bodies == [messages.webhook_body(note)]


def test_webhook_from_an_environment_variable(monkeypatch):
    """`$NAME` sends to the URL in that variable; an unset variable is a failure no retry fixes."""
    with webhook() as receiver:
        monkeypatch.setenv("TAMER_TEST_HOOK", receiver.url)
        target = Webhook("$TAMER_TEST_HOOK", 5)
        assert target.name == "webhook $TAMER_TEST_HOOK"
        target.send(messages.sample(None))
        assert receiver.events() == ["test"]
    monkeypatch.delenv("TAMER_TEST_HOOK")
    with pytest.raises(PermanentError, match="TAMER_TEST_HOOK"):
        target.send(messages.sample(None))


def test_a_refused_connection_never_shows_the_url():
    """A webhook nobody listens on fails with an error that may be retried and does not contain the secret path."""
    target = Webhook("http://127.0.0.1:9/services/SECRETPATH", 2)
    with pytest.raises(SendError) as failure:
        target.send(messages.sample(None))
    assert "SECRETPATH" not in str(failure.value) and not isinstance(failure.value, PermanentError)


def test_command_hook_sees_the_notification_in_its_environment(tmp_path):
    """The command runs with TAMER_RUN_ID, TAMER_STATUS, TAMER_EVENT, TAMER_MESSAGE and the facts in its environment."""
    out = tmp_path / "env.json"
    script = f"{sys.executable} -c \"import json, os; json.dump(dict(os.environ), open('{out}', 'w'))\""
    note = messages.run_ended(RUN, {"exact_match": 0.5, "f1": 0.6, "questions": 8, "step": 12}, "/m")
    Command(script, 10, "/home", "/home/runs/squad-1").send(note)
    seen = json.loads(out.read_text())
    assert (seen["TAMER_RUN_ID"], seen["TAMER_STATUS"], seen["TAMER_EVENT"]) == ("squad-1", "done", "finished")
    assert seen["TAMER_MESSAGE"] == note.message and seen["TAMER_F1"] == "0.6" and seen["TAMER_MODEL_PATH"] == "/m"
    assert seen["TAMER_RUN_DIR"] == "/home/runs/squad-1" and json.loads(seen["TAMER_FACTS_JSON"])["final_loss"] == 1.25


def test_a_failing_command_is_a_failed_send():
    """A command that exits non-zero fails the send with its exit status and last line of output."""
    with pytest.raises(SendError, match="exit status 3: nope"):
        Command("echo nope >&2; exit 3", 10, "/h", None).send(messages.sample(None))


def test_email_reaches_a_local_smtp_server(monkeypatch):
    """E-mail goes through SMTP to a local debugging server: subject = title, body = message and facts."""
    monkeypatch.delenv("TAMER_SMTP_USER", raising=False)
    with smtp_server() as (port, received):
        config = notify(
            email={
                "to": ["me@example.com"],
                "sender": "tamer@example.com",
                "host": "127.0.0.1",
                "port": port,
                "tls": "none",
            }
        )
        note = messages.run_ended(RUN, None, "/m")
        Email(config.email, 10).send(note)
    (mail,) = received
    assert mail["Subject"] == note.title and mail["To"] == "me@example.com" and mail["From"] == "tamer@example.com"
    assert "final loss 1.2500" in mail.get_payload() and "model_path: /m" in mail.get_payload()


# --- the notifier: retries and records -------------------------------------------------------------


def test_retries_back_off_with_jitter_and_stop(monkeypatch):
    """A send that keeps failing is tried `attempts` times with waits that grow exponentially, jittered, capped at 8 s."""
    waits: list[float] = []
    target = Flaky(10, SendError("down"))
    with pytest.raises(SendError):
        for attempt in sender.retrying(6, waits.append):
            with attempt:
                target.send(None)
    assert target.calls == 6 and len(waits) == 5
    for index, wait in enumerate(waits):
        base = min(sender.WAIT_INITIAL * 2**index, sender.WAIT_MAX)
        assert base <= wait <= base + sender.JITTER or wait == sender.WAIT_MAX


def test_a_permanent_failure_is_not_retried():
    """HTTP 4xx and the like are tried once."""
    target = Flaky(10, PermanentError("HTTP 404"))
    with pytest.raises(PermanentError):
        for attempt in sender.retrying(5, lambda seconds: None):
            with attempt:
                target.send(None)
    assert target.calls == 1


def test_every_send_and_every_final_failure_is_an_event(tmp_path):
    """A send that succeeds on its third try and one that never does are both recorded, with the tries and the error."""
    home, run_id = new_home(tmp_path)
    notifier = Notifier(home.db_path, [], str(home.root), None, sleep=lambda seconds: None)
    good, bad = Flaky(2, SendError("timed out")), Flaky(99, SendError("HTTP 503 Service Unavailable"))
    notifier.routes = {"good": sender._Route(good, {"finished"}, 5, 1), "bad": sender._Route(bad, {"finished"}, 3, 1)}
    assert sorted(notifier.notify(messages.run_ended({**RUN, "id": run_id}, None, None))) == ["flaky", "flaky"]
    assert notifier.close(10)
    (sent,) = events(home, run_id, "notify_sent")
    (failed,) = events(home, run_id, "notify_failed")
    assert sent["message"] == "finished sent to flaky after 3 tries" and sent["detail"]["tries"] == 3
    assert (
        failed["detail"]["tries"] == 3
        and "HTTP 503" in failed["message"]
        and "the run is not affected" in failed["message"]
    )


def test_notify_returns_at_once_while_a_send_is_slow(tmp_path):
    """notify() queues: a target that takes a second does not hold up the caller."""
    home, run_id = new_home(tmp_path)

    class Slow:
        name = "slow"

        def send(self, notification) -> None:
            time.sleep(1.0)

    notifier = Notifier(home.db_path, [], str(home.root), None)
    notifier.routes = {"slow": sender._Route(Slow(), {"finished"}, 1, 1)}
    started = time.monotonic()
    notifier.notify(messages.run_ended({**RUN, "id": run_id}, None, None))
    queued_in = time.monotonic() - started
    assert notifier.close(10) and queued_in < 0.5 and events(home, run_id, "notify_sent")


def test_a_target_in_two_configs_is_sent_once_with_both_event_sets(tmp_path):
    """The run's and the home's configs naming one webhook make one target taking the union of their events."""
    notifier = Notifier(
        tmp_path / "db",
        [
            notify(webhook="https://x.example/a", events=["failed"]),
            notify(webhook="https://x.example/a", events=["finished"], command="true"),
        ],
        "/h",
        None,
    )
    assert (
        len(notifier.routes) == 2
        and notifier.wants("failed")
        and notifier.wants("finished")
        and not notifier.wants("escalated")
    )
    assert notifier.routes["webhook https://x.example/(redacted)"].events == {"failed", "finished"}


# --- the real supervisor, a fake child, a local webhook -------------------------------------------------


def supervise(home: Home, run_id: str, script: dict) -> int:
    (home.run_dir(run_id) / "fake-child.json").write_text(json.dumps(script))
    return Supervisor(home, run_id, child_program=FAKE_CHILD).supervise()


def test_the_supervisor_tells_a_webhook_of_an_escalation_and_the_failure(tmp_path, monkeypatch):
    """An OOM escalates (notified as it happens), the next OOM fails the run: the webhook gets `escalated` then
    `failed` with the reason and advice, each send is an event, and the webhook's path is never in an event."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    with webhook() as receiver:
        home, run_id = new_home(
            tmp_path,
            **{
                "ladder.order": ["gradient_checkpointing"],
                "notify.webhook": receiver.url,
                "notify.events": ["escalated", "failed", "finished"],
            },
        )
        code = supervise(home, run_id, {"default": {"steps": [1], "end": "oom", "phase": "backward"}})
    assert code == EXIT_FAILED and receiver.events() == ["escalated", "failed"]
    escalated, failed = receiver.bodies
    assert escalated["facts"]["applied"] == ["gradient_checkpointing"] and escalated["run_id"] == run_id
    assert failed["status"] == "failed" and "nothing left to try" in failed["text"] and "what to do" in failed["text"]
    sent = events(home, run_id, "notify_sent")
    assert [event["detail"]["event"] for event in sent] == ["escalated", "failed"]
    db = Database(home.db_path)
    assert not any("secret" in (event["message"] + (event["detail_json"] or "")) for event in db.events(run_id))


def test_the_supervisor_tells_a_webhook_the_run_finished(tmp_path, monkeypatch):
    """A run that completes sends `finished` with its steps, and the run's own and the home's targets both get it."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    out = tmp_path / "hook.env"
    with webhook() as receiver:
        home, run_id = new_home(tmp_path / "home", **{"notify.webhook": receiver.url})
        (home.root / "notify.yaml").write_text(
            f"command: echo $TAMER_EVENT $TAMER_STATUS > {out}\nevents: [finished]\n"
        )
        code = supervise(home, run_id, {"default": {"steps": [1, 2, 3], "end": "done"}})
    assert code == EXIT_OK and receiver.events() == ["finished"]
    assert receiver.bodies[0]["facts"]["steps_done"] == 3 and receiver.bodies[0]["status"] == "done"
    assert out.read_text().split() == ["finished", "done"]
    assert sorted(event["detail"]["target"].split()[0] for event in events(home, run_id, "notify_sent")) == [
        "command",
        "webhook",
    ]


def test_a_failing_webhook_is_retried_recorded_and_the_run_still_ends_done(tmp_path, monkeypatch):
    """A webhook answering HTTP 500 every time: tried notify.attempts times, recorded as notify_failed, run `done`, exit 0."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    monkeypatch.setattr(sender, "WAIT_INITIAL", 0.01)
    monkeypatch.setattr(sender, "WAIT_MAX", 0.02)
    monkeypatch.setattr(sender, "JITTER", 0.01)
    with webhook([500] * 10) as receiver:
        home, run_id = new_home(tmp_path, **{"notify.webhook": receiver.url, "notify.attempts": 3})
        code = supervise(home, run_id, {"default": {"steps": [1, 2], "end": "done"}})
        posts = len(receiver.paths)
    assert code == EXIT_OK and posts == 3
    db = Database(home.db_path)
    assert db.run(run_id)["status"] == "done"
    (failed,) = events(home, run_id, "notify_failed")
    assert failed["detail"]["tries"] == 3 and "HTTP 500" in failed["message"] and "127.0.0.1" in failed["message"]
    assert "secret" not in failed["message"]


def test_a_stall_is_told_once_until_steps_come_back(tmp_path, monkeypatch):
    """No step for stalled_minutes while running: one `stalled` notification, not one per poll."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    home, run_id = new_home(tmp_path)
    db = Database(home.db_path)
    db.update_run(run_id, status="running")
    now = [1000.0]
    with webhook() as receiver:
        config = build_config("tiny", None, {"notify.webhook": receiver.url, "notify.stalled_minutes": 1}, [])
        mirror = RunMirror(home, run_id, config, [config.notify], clock=lambda: now[0])
        mirror.pump()
        now[0] += 61
        mirror.pump()
        now[0] += 600
        mirror.pump()
        db.update_run(run_id, status="done")
        mirror.close()
    assert receiver.events() == ["stalled", "finished"]
    assert "no optimizer step for 1 minutes" in receiver.bodies[0]["message"]


def test_nothing_configured_starts_no_mirror(tmp_path, monkeypatch):
    """A run without trackers or notification targets (and no notify.yaml) runs no mirror thread."""
    monkeypatch.delenv(settings.ENVIRONMENT, raising=False)
    home, run_id = new_home(tmp_path)
    assert RunMirror.start(home, run_id, build_config("tiny")) is None
    assert os.environ.get(settings.ENVIRONMENT) is None


def test_close_gives_up_waiting_when_asked_and_records_what_was_not_sent(tmp_path):
    """A target that never answers: close() returns once should_stop() is true, and the unsent notification is an event."""
    home, run_id = new_home(tmp_path)

    class Hanging:
        name = "hanging"

        def send(self, notification) -> None:
            time.sleep(30)

    notifier = Notifier(home.db_path, [], str(home.root), None, record_run_id=run_id)
    notifier.routes = {"hanging": sender._Route(Hanging(), {"finished"}, 1, 1)}
    notifier.notify(messages.run_ended({**RUN, "id": run_id}, None, None))
    asked = time.monotonic()
    assert not notifier.close(60, should_stop=lambda: time.monotonic() - asked > 0.5)
    assert time.monotonic() - asked < 5
    (failed,) = events(home, run_id, "notify_failed")
    assert "hanging still unsent" in failed["message"] and "given up" in failed["message"]
