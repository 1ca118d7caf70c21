"""`tamer notify test`, `tamer sync`, the daemon's queue notification and a tracker missing at `tamer run`,
driven in-process (typer's runner) against local receivers."""

from __future__ import annotations

import inspect
import json

import pytest
from typer.testing import CliRunner

from tamer.cli import app
from tamer.config import NotifyConfig, build_config
from tamer.daemon.queue import Daemon
from tamer.daemon.queue_notify import QueueWatch
from tamer.daemon.supervisor import create_run
from tamer.errors import EXIT_CONFIG, EXIT_FAILED, ConfigError
from tamer.notify import settings
from tamer.state.db import Database
from tamer.state.home import Home
from tests.receivers import webhook


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={"TAMER_HOME": None, settings.ENVIRONMENT: None, **(env or {})})


@pytest.mark.parametrize(("name", "shown"), [("notify_test", "notify test"), ("sync", "sync")])
def test_help_ends_with_an_example(name, shown):
    """`tamer notify test` and `tamer sync` are registered and their help ends with an `Example: tamer ...` line."""
    from tamer.cli.commands_notify import notify_app

    commands = {
        command.callback.__name__: command for command in [*app.registered_commands, *notify_app.registered_commands]
    }
    lines = [line.strip() for line in inspect.getdoc(commands[name].callback).splitlines() if line.strip()]
    assert lines[-1].startswith(f"Example: tamer {shown}")


def test_notify_test_sends_to_the_home_and_the_config_targets(tmp_path):
    """The home's notify.yaml and a config file's notify section each get the sample; the table says sent."""
    with webhook() as home_hook, webhook() as run_hook:
        (tmp_path / "notify.yaml").write_text(f"webhook: {home_hook.url}\n")
        (tmp_path / "night.yaml").write_text(f"notify:\n  webhook: {run_hook.url}\n")
        result = invoke("notify", "test", "--home", str(tmp_path), "--config", str(tmp_path / "night.yaml"), "--json")
    assert result.exit_code == 0, result.output
    assert home_hook.events() == ["test"] and run_hook.events() == ["test"]
    assert [row["sent"] for row in json.loads(result.stdout)] == [True, True]


def test_notify_test_exits_1_when_a_send_fails_and_2_without_targets(tmp_path):
    """A target that cannot be reached makes `notify test` exit 1 naming it; no target at all is a config error."""
    (tmp_path / "notify.yaml").write_text("command: exit 4\nattempts: 1\n")
    result = invoke("notify", "test", "--home", str(tmp_path))
    assert result.exit_code == EXIT_FAILED and "failed: exit status 4" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    (tmp_path / "notify.yaml").unlink()
    result = invoke("notify", "test", "--home", str(tmp_path))
    assert result.exit_code == EXIT_CONFIG and "no notification target" in result.stderr


def test_sync_refuses_an_unknown_tracker_and_writes_a_run(tmp_path):
    """`tamer sync --to nowhere` is a config error; `--to tensorboard` writes the run's steps, once."""
    home = Home.resolve(tmp_path)
    run_id = create_run(home, build_config("tiny"))
    db = Database(home.db_path)
    db.insert_step({"run_id": run_id, "attempt": 1, "step": 1, "samples_consumed": 8, "loss": 2.0, "wall_time": 1.0})
    assert invoke("sync", run_id, "--to", "nowhere", "--home", str(tmp_path)).exit_code == EXIT_CONFIG
    first = invoke("sync", run_id, "--to", "tensorboard", "--home", str(tmp_path))
    assert (
        first.exit_code == 0 and first.stdout.startswith("tensorboard: ") and "rows and events written" in first.stdout
    )
    assert (
        invoke("sync", run_id, "--to", "tensorboard", "--home", str(tmp_path)).stdout
        == "tensorboard: nothing new to write\n"
    )


def test_the_queue_tells_once_when_it_runs_dry_after_work(tmp_path):
    """After two jobs the empty queue is told once, listing how each ended; an idle daemon says nothing again."""
    home = Home.resolve(tmp_path)
    ids = [create_run(home, build_config("tiny")) for _ in range(2)]
    db = Database(home.db_path)
    db.update_run(ids[0], status="done", steps_done=3, total_steps=3, final_loss=1.5)
    db.update_run(ids[1], status="failed", steps_done=1, total_steps=3)
    with webhook() as receiver:
        watch = QueueWatch(home, NotifyConfig.from_mapping({"webhook": receiver.url}))
        watch.empty(db)
        for run_id in ids:
            watch.job_done(run_id)
        watch.empty(db)
        watch.empty(db)
        watch.close()
    assert receiver.events() == ["queue_empty"]
    message = receiver.bodies[0]["message"].splitlines()
    assert message == [f"{ids[0]}: done, step 3/3, final loss 1.5000", f"{ids[1]}: failed, step 1/3, final loss -"]
    assert [event["kind"] for event in db.events(ids[1])][-1] == "notify_sent"


def test_a_bad_daemon_notify_config_is_refused_at_start(tmp_path):
    """`tamer daemon --notify-config FILE` with a wrong key fails before the daemon serves, with a one-line error."""
    (tmp_path / "bad.yaml").write_text("events: [finishd]\n")
    with pytest.raises(ConfigError, match="bad.yaml: notify.events"):
        Daemon(Home.resolve(tmp_path / "home"), notify_config=tmp_path / "bad.yaml")
    result = invoke("daemon", "--notify-config", str(tmp_path / "bad.yaml"), "--home", str(tmp_path / "home"))
    assert result.exit_code == EXIT_CONFIG and "expected one of finished" in result.stderr


def test_run_refuses_a_tracker_that_is_not_installed(tmp_path, monkeypatch):
    """`tamer run` with a tracker whose package is missing stops before registering a run: one line, exit 2."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "wandb" else real(name, *args))
    result = invoke("run", "squad", "--preset", "tiny", "--set", "trackers=[wandb]", "--home", str(tmp_path))
    assert result.exit_code == EXIT_CONFIG and "trackers: wandb is configured but not installed" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_job_that_never_started_is_told_as_failed_by_the_daemon(tmp_path):
    """A run the daemon had to mark failed (its supervisor exited first) is told as `failed` with the reason."""
    home = Home.resolve(tmp_path)
    run_id = create_run(home, build_config("tiny"))
    db = Database(home.db_path)
    db.update_run(
        run_id, status="failed", failure_reason="its supervisor (`tamer resume`) exited with code 5 before it started"
    )
    with webhook() as receiver:
        watch = QueueWatch(home, NotifyConfig.from_mapping({"webhook": receiver.url, "events": ["failed"]}))
        watch.never_started(db.run(run_id))
        watch.job_done(run_id)
        watch.empty(db)  # queue_empty is not selected
        watch.close()
    assert receiver.events() == ["failed"] and "exited with code 5 before it started" in receiver.bodies[0]["message"]
