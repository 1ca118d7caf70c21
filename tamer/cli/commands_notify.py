"""`tamer notify test` and `tamer sync`: try the notification targets, and write a run into a tracker after
the fact. Registered on tamer/cli/common.py's app when tamer/cli/__init__.py imports this module; the logic
lives in tamer/notify/ and tamer/daemon/mirror.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tamer import output
from tamer.cli.common import ConfigOption, HomeOption, JsonOption, _fail, _print_json, app, console
from tamer.errors import EXIT_FAILED, ConfigError, TamerError
from tamer.state.home import Home

notify_app = typer.Typer(
    help="Notifications: webhook, command and e-mail (the `notify:` config keys, HOME/notify.yaml).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(notify_app, name="notify")


@notify_app.command("test")
def notify_test(
    run: Annotated[
        Optional[str], typer.Option("--run", help="Also the targets of this run's config (id or unique prefix).")
    ] = None,
    config: ConfigOption = None,
    notify_config: Annotated[
        Optional[Path],
        typer.Option(
            "--notify-config",
            help="The home-wide notify file to test instead of HOME/notify.yaml (as `tamer daemon --notify-config`).",
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send a test notification to every target: the home's (HOME/notify.yaml or --notify-config), and a run's
    (--run) or a config file's (--config) `notify:` section. Prints each send's result; exit 1 if one failed.

    Example: tamer notify test --config night.yaml
    """
    from tamer.config import build_config, config_from_dict
    from tamer.notify import messages, settings
    from tamer.notify.sender import Notifier
    from tamer.state.db import Database

    try:
        resolved = Home.resolve(home, writable=False)
        configs, run_id = [], None
        shared = settings.home_notify(resolved.root, notify_config)
        if shared is not None:
            configs.append(shared)
        if config is not None:
            configs.append(build_config("tiny", config).notify)
        if run is not None:
            db = Database(resolved.db_path, create=False, read_only=True)
            row = db.run(run)
            db.close()
            run_id = row["id"]
            configs.append(config_from_dict(json.loads(row["config_json"])).notify)
        configs = [each for each in configs if each.has_targets]
        if not configs:
            raise ConfigError(
                f"no notification target: set webhook, command or email in {resolved.root / settings.HOME_FILE}, "
                "or in a config's notify: section (--config FILE, --run RUN)"
            )
        notifier = Notifier(resolved.db_path, configs, str(resolved.root), None)
        notifier.notify(messages.sample(run_id), every_target=True)
        notifier.close()
    except TamerError as error:
        _fail(error)
    results = notifier.results
    if as_json:
        _print_json(results)
    else:
        table = output.table("target", "message", "tries")
        for result in results:
            table.add_row(
                result["target"], "sent" if result["sent"] else f"failed: {result['error']}", str(result["tries"])
            )
        output.print_table(console, table)
    if not all(result["sent"] for result in results):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def sync(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    to: Annotated[list[str], typer.Option("--to", help="tensorboard, mlflow or wandb (repeatable).")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a run's steps, evaluations, SQuAD scores and events into a tracker after the fact, with the run's
    `tracking:` settings; only what the tracker has not been sent yet (a second sync writes nothing).

    Example: tamer sync squad-20261125-201500-ab12 --to tensorboard
    """
    from tamer.config import TRACKERS
    from tamer.daemon.mirror import sync as sync_run
    from tamer.trackers.base import missing

    try:
        unknown = [name for name in to if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"--to {unknown[0]}: unknown tracker; choose tensorboard, mlflow or wandb")
        absent = missing(to)
        if absent:
            raise ConfigError(f"--to {absent[0]}: not installed; pip install 'tamer[{absent[0]}]'")
        written = sync_run(Home.resolve(home), run_id, list(dict.fromkeys(to)))
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(written)
        return
    for name, count in written.items():
        console.print(
            f"{name}: {count} rows and events written" if count else f"{name}: nothing new to write", highlight=False
        )
