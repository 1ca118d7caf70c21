"""The `tamer` commands that read runs back: history, steps, events, logs, sql, plot, report and doctor.

Registered on tamer/cli/common.py's app when tamer/cli/__init__.py imports this module. The logic lives
in tamer/inspect/; here are only options, tables and error handling, with common.py's conventions:
`--json` everywhere, `--home`, one-line `error: ...` and the exit code of the error's kind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tamer import output
from tamer.cli.common import HomeOption, JsonOption, _fail, _print_json, app, console, open_database
from tamer.errors import ConfigError, TamerError
from tamer.state import queries
from tamer.state.home import Home
from tamer.units import format_size

RunArgument = Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]
# In order of importance: on a narrow terminal the last ones go to a detail line under each step.
STEP_TABLE_COLUMNS = (
    "attempt",
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "step_time",
    "batch",
    "samples_consumed",
    "mem_allocated",
    "mem_reserved",
    "device_used",
    "host_rss",
)
MEMORY_COLUMNS = {"mem_allocated", "mem_reserved", "mem_peak", "device_used", "host_rss"}
NUMBER_FORMATS = {
    "loss": "{:.4f}",
    "lr": "{:.3g}",
    "grad_norm": "{:.3f}",
    "tokens_per_s": "{:.0f}",
    "step_time": "{:.3f}",
}


def _print_table(table: output.Table) -> None:
    output.print_table(console, table)


def _open(home: Optional[Path]) -> Any:
    return open_database(home)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in MEMORY_COLUMNS:
        return format_size(value)
    if isinstance(value, float):
        return NUMBER_FORMATS.get(column, "{:.4g}").format(value)
    return str(value)


@app.command()
def history(
    run: Annotated[Optional[str], typer.Option("--run", help="Only this run (id or unique prefix).")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only failures in the last 30m, 12h, 2d, 1w ...")] = None,
    kind: Annotated[
        Optional[str], typer.Option(help="Only these outcomes, comma-separated: cuda_oom,host_oom,crash,hang,lost,...")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every failure and recovery across runs: when, which attempt, outcome, phase, tried-to-allocate,
    peak memory, the rung applied next, time lost (until training got past the failed step again) and
    steps lost (redone from the checkpoint).

    Example: tamer history --since 2d --kind cuda_oom,host_oom
    """
    from tamer.inspect.history import SNAPSHOT_VIEWER_HINT, deescalations, failures, parse_kinds, parse_since

    try:
        since_seconds = parse_since(since) if since else None
        kinds = parse_kinds(kind) if kind else None
        rows = failures(_open(home), run, since_seconds, kinds)
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(rows)
        return
    if not rows:
        output.say(console, "No failures recorded" + (" matching these filters." if run or since or kind else "."))
        return
    for each_run in dict.fromkeys(row["run_id"] for row in rows):
        table = output.table(
            "failed at",
            "attempt",
            "outcome",
            "phase",
            "step",
            "then",
            "time lost",
            "steps lost",
            "micro-batch",
            "tried to allocate",
            "peak",
            title=f"run {each_run}",
        )
        for row in (row for row in rows if row["run_id"] == each_run):
            then = "+" + ", +".join(row["rungs_applied"]) if row["rungs_applied"] else row["recovery"]
            if not row["rungs_applied"] and row["restart_cause"] in ("outside kill", "crash"):
                then += f" ({row['restart_cause']}, waited {output.seconds(row['waited_seconds'])})"
            if row["in_process"]:
                then += " in process"
            table.add_row(
                output.when(row["failed_at"]),
                str(row["attempt"]),
                row["outcome"],
                row["phase"] or "-",
                _cell("step", row["step"]),
                then,
                output.seconds(row["time_lost_seconds"]),
                str(row["steps_lost"]),
                _cell("micro_batch_size", row["micro_batch_size"]),
                format_size(row["tried_to_allocate"]),
                output.peak(row),
            )
        _print_table(table)
    steps_back = deescalations(_open(home), run, since_seconds)
    if steps_back:
        _print_table(steps_back_table(steps_back))
    lost_seconds = sum(row["time_lost_seconds"] for row in rows)
    in_process = sum(1 for row in rows if row["in_process"])
    output.say(
        console,
        f"{len(rows)} failure{'s' if len(rows) != 1 else ''}"
        + (f" ({in_process} recovered in process)" if in_process else "")
        + f": {output.seconds(lost_seconds)} and "
        f"{sum(row['steps_lost'] for row in rows)} steps lost",
    )
    snapshots = [row for row in rows if row["memory_snapshot"]]
    for row in snapshots:
        output.say(console, f"memory snapshot of {row['run_id']} attempt {row['attempt']}: {row['memory_snapshot']}")
    if snapshots:
        output.say(console, SNAPSHOT_VIEWER_HINT)


def steps_back_table(rows: list[dict[str, Any]]) -> output.Table:
    """De-escalations: attempt -> attempt, tokens/s on the squeezed plan and after stepping back, and why."""
    table = output.table(
        "time", "attempts", "tokens/s squeezed", "tokens/s after", "gain", "why", title="steps back (de-escalations)"
    )
    for row in rows:
        table.add_row(
            output.when(row["time"]),
            f"{row['attempt']}->{row['next_attempt'] or '-'}",
            output.number(row["tokens_per_s_squeezed"], 0),
            output.number(row["tokens_per_s_after"], 0),
            f"{row['gain']:.2f}x" if row["gain"] else "-",
            row["reason"] or "-",
        )
    return table


@app.command()
def steps(
    run_id: RunArgument,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (every column) instead of a table.")] = False,
    every: Annotated[Optional[int], typer.Option(help="Only steps that are a multiple of N.", min=1)] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The step rows of a run, every attempt: a step redone after a restart appears once per attempt
    that computed it.

    Example: tamer steps squad-20261125-201500-ab12 --csv --every 10 > steps.csv
    """
    try:
        if as_csv and as_json:
            raise ConfigError("--csv and --json both given; choose one output format")
        db = _open(home)
        rows = db.steps(db.run(run_id)["id"])
    except TamerError as error:
        _fail(error)
    if every:
        rows = [row for row in rows if row["step"] % every == 0]
    if as_json:
        _print_json(rows)
        return
    if as_csv:
        columns = list(rows[0]) if rows else queries.step_columns(db)
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    world = (
        {attempt["attempt"]: attempt.get("world_size") or 1 for attempt in db.attempts(rows[0]["run_id"])}
        if rows
        else {}
    )
    for row in rows:  # `2 x 4 x 1`: processes x micro-batch x accumulation, with several processes
        processes = world.get(row["attempt"], 1)
        row["batch"] = (
            f"{processes} x " if processes > 1 else ""
        ) + f"{row['micro_batch_size']} x {row['grad_accumulation']}"
    # Memory columns that no row has (GPU readings on a CPU run) would only print dashes.
    columns = [
        column
        for column in STEP_TABLE_COLUMNS
        if column not in MEMORY_COLUMNS or any(row[column] is not None for row in rows)
    ]
    table = output.table(*columns)
    for row in rows:
        table.add_row(*(_cell(column, row[column]) for column in columns))
    _print_table(table)


@app.command()
def events(
    run_id: RunArgument,
    kind: Annotated[
        Optional[str], typer.Option(help="Only these event kinds, comma-separated: escalate,restart,...")
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """The events of a run, oldest first: created, attempt_start, resume, checkpoint, escalate, restart,
    deescalate, eval, finish, ... with their details in --json.

    Example: tamer events squad-20261125-201500-ab12 --kind escalate,restart --json
    """
    try:
        db = _open(home)
        rows = db.events(db.run(run_id)["id"])
    except TamerError as error:
        _fail(error)
    if kind:
        wanted = {name.strip() for name in kind.split(",")}
        rows = [row for row in rows if row["kind"] in wanted]
    if as_json:
        _print_json(
            [
                {
                    **{k: v for k, v in row.items() if k != "detail_json"},
                    "detail": json.loads(row["detail_json"]) if row["detail_json"] else None,
                }
                for row in rows
            ]
        )
        return
    table = output.table("time", "attempt", "event", "message")
    for row in rows:
        table.add_row(output.when(row["time"]), _cell("attempt", row["attempt"]), row["kind"], row["message"])
    _print_table(table)


@app.command()
def logs(
    run_id: RunArgument,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new lines until the run is no longer running or queued."),
    ] = False,
    every: Annotated[int, typer.Option(help="Only every Nth step line (events are all printed).", min=1)] = 1,
    home: HomeOption = None,
) -> None:
    """A run's events and step lines (step, loss, tok/s, memory, ETA) in time order, from the database:
    the lines a piped `tamer run` prints, for any run, also one the daemon or --detach runs.

    Example: tamer logs squad-20261125-201500-ab12 -f --every 10
    """
    from tamer.cli.progress import follow as follow_run

    try:
        db = _open(home)
        full_id = db.run(run_id)["id"]
    except TamerError as error:
        _fail(error)
    try:
        follow_run(db, full_id, sys.stdout, follow, every_steps=every)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SELECT, WITH, EXPLAIN, VALUES or reading PRAGMA statement.")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a read-only SQL query on the database (tables runs, attempts, steps, evals, events, ...; see
    docs/reference/database.md). Writes, ATTACH and several statements are refused with exit code 2.

    Example: tamer sql "SELECT attempt, outcome, phase, plan_summary FROM attempts WHERE outcome != 'done'"
    """
    from tamer.inspect.query import run_query

    try:
        columns, rows = run_query(Home.resolve(home, writable=False).db_path, query)
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json([dict(zip(columns, row)) for row in rows])
        return
    table = output.table(*columns)
    for row in rows:
        table.add_row(*("NULL" if value is None else str(value) for value in row))
    _print_table(table)


def _check_size(width: int, height: int) -> None:
    for name, value in (("--width", width), ("--height", height)):
        if not 200 <= value <= 10000:
            raise ConfigError(f"{name} {value}: out of range; give 200 to 10000 pixels")


@app.command()
def plot(
    run_id: RunArgument,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="PNG file or folder to write to (default: RUN.png here).")
    ] = None,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 1200,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 800,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a file tamer did not write.")] = False,
    home: HomeOption = None,
) -> None:
    """Draw loss (train, validation) and memory (allocated, reserved, device used and the cap on GPU;
    host RSS on CPU) against step, with a marked line at each OOM, escalation and restart.

    -o takes a file or a folder (RUN.png inside it); missing folders are created; an earlier plot is
    replaced, any other file only with --force.

    Example: tamer plot squad-20261125-201500-ab12 -o run.png --width 1600 --height 900
    """
    from tamer import outputs
    from tamer.inspect.report import plot_png

    try:
        _check_size(width, height)
        db = _open(home)
        full_id = db.run(run_id)["id"]
        path = outputs.output_file(output, f"{full_id}.png", "plot", outputs.PNG_SIGNATURE, force)
        outputs.write_file_atomic(path, plot_png(db, full_id, width, height), "write the plot")
    except TamerError as error:
        _fail(error)
    typer.echo(str(path))


@app.command()
def report(
    run_id: RunArgument,
    output: Annotated[
        Optional[str], typer.Option("--output", "-o", help="HTML file or folder to write to (default: RUN.html here).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a file tamer did not write.")] = False,
    home: HomeOption = None,
) -> None:
    """Write one self-contained HTML page about a run (summary, where the time went, the plot, attempts,
    failures, settled plan, validation, events) to open in a browser or send to a colleague.

    -o takes a file or a folder (RUN.html inside it); missing folders are created; an earlier report is
    replaced, any other file only with --force.

    Example: tamer report squad-20261125-201500-ab12 -o run.html
    """
    from tamer import outputs
    from tamer.inspect.report import render

    try:
        db = _open(home)
        full_id = db.run(run_id)["id"]
        path = outputs.output_file(output, f"{full_id}.html", "report", outputs.HTML_SIGNATURE, force)
        outputs.write_file_atomic(path, render(db, full_id).encode("utf-8"), "write the report")
    except TamerError as error:
        _fail(error)
    typer.echo(str(path))


@app.command()
def doctor(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """What this machine offers for training: each GPU (NVML: total, used, free, other processes), what
    torch can get and what its CUDA context costs, allocator settings, bf16, bitsandbytes, and why
    nvidia-smi and torch report different numbers. Works without a GPU; exits 0.

    Example: tamer doctor --json
    """
    from tamer.inspect.doctor import diagnose

    try:
        resolved = Home.resolve(home)
    except TamerError as error:
        _fail(error)
    with contextlib.redirect_stdout(sys.stderr):  # what third-party imports print (bitsandbytes) stays off stdout
        facts = {**diagnose(), "home": str(resolved.root)}
    messages = facts.pop("probe_messages")  # what torch and bitsandbytes printed in the probe child
    if as_json:
        sys.stderr.write("".join(f"{message}\n" for message in messages))
        _print_json(facts)
        return
    _print_doctor(facts, messages)


def _print_doctor(facts: dict[str, Any], messages: list[str]) -> None:
    host, nvml, torch_facts, bnb = facts["host"], facts["nvml"], facts["torch"], facts["bitsandbytes"]
    limit = f", cgroup limit {format_size(host['cgroup_memory_limit'])}" if host["cgroup_memory_limit"] else ""
    output.say(
        console,
        output.styled(
            "Host",
            "bold",
            f": {host['platform']}, Python {host['python']}, {host['cpu_count']} CPUs, memory "
            f"{format_size(host['memory_total'])} total, {format_size(host['memory_available'])} available{limit}",
        ),
    )
    if not nvml["available"]:
        output.say(
            console, output.styled("GPUs", "bold", f": no NVIDIA GPU found: NVML could not start ({nvml['reason']}).")
        )
    else:
        table = output.table("gpu", "name", "total", "used", "free", "other processes")
        for gpu in nvml["gpus"]:
            others = [
                f"{p['pid']} {p['name']} {format_size(p['used'])}" for p in gpu["processes"] if not p["this_process"]
            ]
            table.add_row(
                str(gpu["index"]),
                gpu["name"],
                format_size(gpu["total"]),
                format_size(gpu["used"]),
                format_size(gpu["free"]),
                "\n".join(others) or "none",
            )
        output.say(
            console,
            output.styled("GPUs", "bold", f" (NVML, driver {nvml['driver']}, before this process touched them):"),
        )
        _print_table(table)
    output.say(
        console,
        output.styled(
            "torch",
            "bold",
            f" {torch_facts['version']} (CUDA build {torch_facts['cuda_build'] or 'none'}); "
            f"CPU bf16 {'yes' if torch_facts['cpu_bf16'] else 'no'}",
        ),
    )
    if not torch_facts["cuda_available"]:
        output.say(console, "CUDA is not available to torch: tamer trains on the CPU here (device auto picks cpu).")
    else:
        table = output.table(
            "device", "name", "capability", "total", "free for this process", "CUDA context cost", "bf16"
        )
        for device in torch_facts["devices"]:
            table.add_row(
                str(device["index"]),
                device["name"],
                device["capability"],
                format_size(device["total"]),
                format_size(device["free_for_this_process"]),
                format_size(device["context_overhead"]),
                "yes" if device["bf16"] else "no",
            )
        _print_table(table)
    settings = ", ".join(
        f"{name}={value}" if value else f"{name} unset" for name, value in torch_facts["allocator_env"].items()
    )
    in_force = torch_facts.get("allocator_in_force")
    backend = torch_facts.get("allocator_backend")
    output.say(
        console,
        output.styled(
            "Allocator",
            "bold",
            f": {settings}"
            + (f"; backend {backend}" if backend else "")
            + (f"; torch reports: {in_force}" if in_force else ""),
        ),
    )
    if bnb["usable"]:
        output.say(
            console,
            output.styled(
                "bitsandbytes",
                "bold",
                f" {bnb['version']}: usable (8-bit round trip on {bnb['device']}, error {bnb['round_trip_error']:.3f})",
            ),
        )
    else:
        output.say(
            console,
            output.styled(
                "bitsandbytes",
                "bold",
                f": not usable ({bnb.get('reason') or 'round trip too inaccurate'}); "
                "the 8-bit rungs (quantize_8bit, paged_adamw_8bit) cannot work here",
            ),
        )
    for message in messages:
        output.say(console, f"  library note, printed as torch and bitsandbytes loaded: {message}", indent="    ")
    output.say(console, output.styled("Home", "bold", f": {facts['home']}"))
    output.say(console, output.styled("Why nvidia-smi and torch differ", "bold", f": {facts['explanation']}"))
