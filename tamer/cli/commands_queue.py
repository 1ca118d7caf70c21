"""The `tamer` commands for unattended operation: submit, daemon, queue, cancel, status and stop.

Registered on tamer/cli/common.py's app when tamer/cli/__init__.py imports this module. The logic lives
in tamer/daemon/queue.py and tamer/inspect/status.py; here are only options, output and error handling,
with common.py's conventions: `--json`, `--home`, one-line `error: ...` and the exit code of the error's
kind. docs/overnight.md tells the whole story.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tamer import output
from tamer.cli.common import (
    ConfigOption,
    DataOption,
    DeviceOption,
    EvalDataOption,
    GpuMemCapOption,
    GpusOption,
    HomeOption,
    HostMemCapOption,
    InitOption,
    InjectOption,
    JsonOption,
    MaxStepsOption,
    MemorySnapshotOption,
    MicroBatchOption,
    ModelOption,
    PresetOption,
    RecipeArgument,
    SeedOption,
    SetOption,
    _fail,
    _print_json,
    app,
    build_run_config,
    console,
    err_console,
    open_database,
)
from tamer.errors import TamerError
from tamer.state.home import Home

RunArgument = Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the run to checkpoint and stop.")]


@app.command()
def submit(
    recipe: RecipeArgument = "squad",
    preset: PresetOption = "llama-3.2-1b",
    config: ConfigOption = None,
    set_: SetOption = None,
    model: ModelOption = None,
    data: DataOption = None,
    eval_data: EvalDataOption = None,
    init: InitOption = None,
    max_steps: MaxStepsOption = None,
    micro_batch_size: MicroBatchOption = None,
    seed: SeedOption = None,
    device: DeviceOption = None,
    gpu_mem_cap: GpuMemCapOption = None,
    host_mem_cap: HostMemCapOption = None,
    gpus: GpusOption = None,
    inject: InjectOption = None,
    memory_snapshot: MemorySnapshotOption = False,
    home: HomeOption = None,
) -> None:
    """Queue a run for the daemon (`tamer daemon`); prints the run id. Other config keys: --set or --config.

    Example: tamer submit squad --preset tiny --max-steps 30
    """
    from tamer.daemon.queue import daemon_pid
    from tamer.daemon.queue import submit as submit_run

    try:
        options = {
            "model": model,
            "data": data,
            "eval_data": eval_data,
            "init": init,
            "max_steps": max_steps,
            "micro_batch_size": micro_batch_size,
            "seed": seed,
            "device": device,
            "gpu_mem_cap": gpu_mem_cap,
            "host_mem_cap": host_mem_cap,
            "inject": inject or None,
            "memory_snapshot": memory_snapshot or None,
            "distributed.nproc_per_node": gpus,
        }
        run_config, data_profile = build_run_config(recipe, preset, config, set_, options)
        resolved = Home.resolve(home)
        run_id, position = submit_run(resolved, run_config, data_profile)
    except TamerError as error:
        _fail(error)
    typer.echo(run_id)
    waiting = "" if daemon_pid(resolved) else "; no daemon serves this home: start one with `tamer daemon --detach`"
    err_console.print(f"queued at position {position}{waiting}", highlight=False, soft_wrap=True)


@app.command()
def daemon(
    detach: Annotated[
        bool, typer.Option("--detach", help="Run in the background (log: HOME/daemon.log); print its pid and return.")
    ] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between looks at an empty queue.")] = 5.0,
    exit_when_empty: Annotated[
        bool, typer.Option("--exit-when-empty", help="Exit 0 once the queue is empty (cron, tests).")
    ] = False,
    print_systemd_unit: Annotated[
        bool, typer.Option("--print-systemd-unit", help="Print a systemd user unit that runs the daemon, and exit.")
    ] = False,
    notify_config: Annotated[
        Optional[Path],
        typer.Option(
            "--notify-config",
            help="YAML of notify keys for the whole queue (default: HOME/notify.yaml when it exists).",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run the queued jobs one after another, oldest first; on start, first resume the jobs whose
    supervisor died with a previous daemon. SIGTERM/SIGINT: the running job checkpoints and stops, exit 143/130.
    --notify-config (or HOME/notify.yaml) tells of every job's end and of the empty queue.

    Example: tamer daemon --detach
    """
    from tamer.cli.progress import DaemonLines
    from tamer.daemon.queue import DAEMON_JSON_LOG, DAEMON_LOG, Daemon, detach_daemon, systemd_unit
    from tamer.logs import configure_logging

    resolved = Home.resolve(home)
    if print_systemd_unit:
        typer.echo(systemd_unit(resolved), nl=False)
        return
    try:
        if detach:
            if notify_config is not None:
                from tamer.notify.settings import home_notify

                home_notify(resolved.root, notify_config)  # a bad file: the error here, not in the background log
            pid = detach_daemon(resolved, poll, exit_when_empty, notify_config)
            typer.echo(pid)
            err_console.print(
                f"daemon started in the background; log {resolved.root / DAEMON_LOG}", highlight=False, soft_wrap=True
            )
            return
        resolved.root.mkdir(parents=True, exist_ok=True)
        configure_logging(resolved.root / DAEMON_JSON_LOG, process="daemon")
        code = Daemon(resolved, poll, exit_when_empty, DaemonLines(err_console), notify_config).serve()
    except TamerError as error:
        _fail(error)
    raise typer.Exit(code)


@app.command("queue")
def queue_command(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Running runs, then the queued ones in the order the daemon will start them.

    Example: tamer queue --json
    """
    from tamer.daemon.queue import daemon_pid, queue_listing
    from tamer.state.db import Database

    try:
        resolved = Home.resolve(home)
        db = Database(resolved.db_path, create=False)
        rows = queue_listing(db)
        db.close()
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(rows)
        return
    table = output.table("position", "id", "status", "steps", "submitted")
    for row in rows:
        table.add_row(
            str(row["position"] or "-"),
            row["id"],
            row["status"],
            f"{row['steps_done']}/{row['total_steps'] or '?'}",
            output.when(row["submitted_at"]),
        )
    output.print_table(console, table)
    pid = daemon_pid(resolved)
    output.say(
        err_console,
        f"daemon: pid {pid}" if pid else "no daemon serves this home; start one with `tamer daemon --detach`",
    )


@app.command()
def cancel(run_id: RunArgument, timeout: TimeoutOption = 300.0, home: HomeOption = None) -> None:
    """Take a queued run off the queue (status cancelled), or stop a running one at a checkpoint.

    Example: tamer cancel squad-20261125-201500-ab12
    """
    from tamer.daemon.queue import cancel as cancel_run

    try:
        run = cancel_run(Home.resolve(home), run_id, timeout)
    except TamerError as error:
        _fail(error)
    _print_end(run)


@app.command()
def stop(run_id: RunArgument, timeout: TimeoutOption = 300.0, home: HomeOption = None) -> None:
    """Stop a running run gracefully: it checkpoints at the next step boundary; waits and prints its final status.

    Example: tamer stop squad-20261125-201500-ab12 --timeout 600
    """
    from tamer.daemon.queue import stop as stop_run

    try:
        run = stop_run(Home.resolve(home), run_id, timeout)
    except TamerError as error:
        _fail(error)
    _print_end(run)


def _print_end(run: dict[str, Any]) -> None:
    reason = f" ({run['failure_reason']})" if run["failure_reason"] else ""
    typer.echo(f"run {run['id']} {run['status']} at step {run['steps_done'] or 0}/{run['total_steps'] or '?'}{reason}")


@app.command()
def status(
    run_id: Annotated[
        Optional[str], typer.Argument(help="Run id or unique prefix (default: the running run, else the newest).")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Where a run stands: state, step, loss, tokens/s, last event and ETA.

    Example: tamer status squad-20261125-201500-ab12 --json
    """
    from tamer.inspect.status import run_status

    try:
        db = open_database(home)
        facts = run_status(db, run_id)
        db.close()
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(facts)
        return
    parts = [
        facts["status"]
        + (" (no supervisor)" if facts["supervised"] is False else "")
        + (f" (position {facts['queue_position']} in the queue)" if facts["queue_position"] else ""),
        f"step {facts['step']}/{facts['total_steps'] or '?'}",
        f"loss {output.number(facts['loss'])}",
    ]
    if facts["tokens_per_s"]:
        parts.append(f"{facts['tokens_per_s']:,.0f} tok/s")
    if facts["padding_fraction"] is not None:
        parts.append(f"{facts['useful_tokens_per_s']:,.0f} useful tok/s, {facts['padding_fraction']:.0%} padding")
    if facts["seconds_per_step"]:
        parts.append(f"{facts['seconds_per_step']:.2f} s/step")
    if facts["eta_seconds"] is not None:
        parts.append(f"ETA {output.seconds(facts['eta_seconds'])} ({output.when(facts['eta_at'])})")
    output.say(console, output.styled(facts["id"], "bold", "  " + "  ".join(parts)))
    event = facts["last_event"]
    if event:
        output.say(
            console,
            f"attempt {facts['attempt'] or '-'}; last event {output.when(event['time'])} {event['kind']}: {event['message']}",
        )
    if facts["failure_reason"]:
        output.say(console, f"reason: {facts['failure_reason']}")
    if facts["note"]:
        output.say(console, output.styled("warning:", "yellow", f" {facts['note']}"))
