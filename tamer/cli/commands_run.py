"""`tamer run`, `resume`, `runs`, `show` and `strategies`: start and supervise a run, and look at runs.

Registered on the app of tamer/cli/common.py when tamer/cli/__init__.py imports this module. Every
command's help ends with an example.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

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


def _supervise(home: Home, run_id: str) -> int:
    """Run the supervisor in this process, with a progress bar on a terminal."""
    from tamer.cli.progress import PlainProgress, RunProgress
    from tamer.daemon.supervisor import Supervisor
    from tamer.logs import configure_logging
    from tamer.state.db import Database

    configure_logging(home.run_dir(run_id) / "log.jsonl", process="supervisor")
    # A resumed run (`tamer resume`, the daemon, --detach) shows only what happens from now on.
    db = Database(home.db_path, create=False)
    resumed = bool(db.attempts(run_id))
    after = (max((event["id"] for event in db.events(run_id)), default=0), time.time()) if resumed else (0, 0.0)
    db.close()
    if console.is_terminal:
        with RunProgress(console, *after) as progress:
            code = Supervisor(home, run_id, progress).supervise()
            progress.finish(Database(home.db_path, create=False), run_id)
            return code
    progress = PlainProgress(None, *after)
    code = Supervisor(home, run_id, progress).supervise()
    progress.finish(Database(home.db_path, create=False), run_id)
    return code


def _report_end(home: Home, run_id: str, code: int) -> None:
    """The last line of a run: how it ended, where its checkpoint is, and the next useful command."""
    from tamer.state import checkpoints
    from tamer.state.db import Database

    db = Database(home.db_path, create=False)
    run = db.run(run_id)
    db.close()
    checkpoint, _ = checkpoints.newest_valid(Path(run["run_dir"]))
    where = f"; checkpoint {checkpoint.path}" if checkpoint else ""
    if run["status"] == "done":
        _report_result(home, run_id)  # the score and the export first: the last line names the next command
        validated = json.loads(run["config_json"] or "{}").get("eval_samples", 1) > 0
        eval_text = (
            f", validation loss {run['final_eval_loss']:.4f}"
            if validated and run["final_eval_loss"] is not None
            else ""
        )
        err_console.print(
            f"run {run_id} done: {run['steps_done']} steps, final loss {output.loss(run['final_loss'])}{eval_text}{where}; "
            f"next: tamer show {run_id}",
            highlight=False,
            soft_wrap=True,
        )
    elif run["status"] == "stopped":
        resumes = (
            f"from checkpoint step {checkpoint.step} ({checkpoint.path})"
            if checkpoint
            else "from step 0 (no checkpoint)"
        )
        err_console.print(
            f"run {run_id} stopped at step {run['steps_done'] or 0}/{run['total_steps'] or '?'}; "
            f"`tamer resume {run_id}` continues {resumes}",
            highlight=False,
            soft_wrap=True,
        )
    elif run["failure_reason"]:
        err_console.print(
            output.styled(
                "error:",
                "red",
                f" run {run_id} {run['status']}: {run['failure_reason']}; what happened: tamer show {run_id}",
            ),
            highlight=False,
            soft_wrap=True,
        )


def _report_result(home: Home, run_id: str) -> None:
    """The SQuAD line and the export folder of a completed run (tamer/inspect/results.py)."""
    from tamer.inspect.results import export_location, last_squad
    from tamer.state.db import Database

    db = Database(home.db_path, create=False)
    scores, exported = last_squad(db, run_id), export_location(db, run_id)
    failed = [event["message"] for event in db.events(run_id) if event["kind"] == "result_failed"]
    db.close()
    if scores:
        err_console.print(
            f"SQuAD exact match {scores['exact_match']:.3f}, F1 {scores['f1']:.3f} on {scores['questions']} held-out questions "
            f"(step {scores['step']})",
            highlight=False,
        )
    if exported:
        err_console.print(f"model exported to {exported['path']}", highlight=False, soft_wrap=True)
    if failed:
        err_console.print(output.styled("warning:", "yellow", f" {failed[-1]}"), highlight=False, soft_wrap=True)


@app.command()
def run(
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
    nnodes: Annotated[
        Optional[int],
        typer.Option(
            help="Machines in a multi-node run; this one is node 0 and owns the run, the others `tamer join` its run folder."
        ),
    ] = None,
    rdzv_endpoint: Annotated[
        Optional[str], typer.Option(help="host:port of this machine (node 0), where the other nodes' ranks rendezvous.")
    ] = None,
    inject: InjectOption = None,
    memory_snapshot: MemorySnapshotOption = False,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", help="Supervise in the background (log: runs/<id>/supervisor.log); print the run id and return."
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Train a recipe under supervision; prints the run id first, exits 0 when the run completes. Recipes:
    squad (SQuAD v1.1), chat (conversations), instruct (prompt/completion), text (documents) on --data.

    Example: tamer run chat --preset tiny --max-steps 30
    """
    from tamer.daemon.supervisor import create_run

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
            "distributed.nnodes": nnodes,
            "distributed.rdzv_endpoint": rdzv_endpoint,
        }
        run_config, data_profile = build_run_config(recipe, preset, config, set_, options)
        resolved = Home.resolve(home)
        run_id = create_run(resolved, run_config, data_profile)
        typer.echo(run_id)
        if detach:
            from tamer.daemon.queue import detach_run

            pid = detach_run(resolved, run_id)
            err_console.print(
                f"supervisor pid {pid} runs it in the background; `tamer status {run_id}` follows it",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(0)
        code = _supervise(resolved, run_id)
        _report_end(resolved, run_id, code)
    except TamerError as error:
        _fail(error)
    raise typer.Exit(code)


@app.command()
def join(
    run_dir: Annotated[
        Path, typer.Argument(help="The run folder node 0 printed (`tamer show RUN` names it), on a shared filesystem.")
    ],
    node_rank: Annotated[int, typer.Option(help="This machine's node rank, 1 .. nnodes-1.")],
) -> None:
    """Run this machine's share of a multi-node run that node 0 supervises (`tamer run --nnodes N`).

    Example: tamer join /shared/tamer/runs/squad-20261203-101500-ab12 --node-rank 1
    """
    from tamer.daemon.follower import Follower

    try:
        follower = Follower(
            run_dir, node_rank, say=lambda line: err_console.print(line, highlight=False, soft_wrap=True)
        )
        code = follower.follow()
    except TamerError as error:
        _fail(error)
    raise typer.Exit(code)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")], home: HomeOption = None
) -> None:
    """Continue a run whose supervisor died (reboot, kill -9) from its newest valid checkpoint.

    Example: tamer resume squad-20261125-201500-ab12
    """
    from tamer.state.db import Database

    try:
        resolved = Home.resolve(home)
        db = Database(resolved.db_path, create=False)
        full_id = db.run(run_id)["id"]
        db.close()
        typer.echo(full_id)
        code = _supervise(resolved, full_id)
        _report_end(resolved, full_id, code)
    except TamerError as error:
        _fail(error)
    raise typer.Exit(code)


@app.command()
def runs(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List runs: id, recipe, status, steps done, started, duration.

    Example: tamer runs --json
    """

    try:
        db = open_database(home)
        rows = db.runs()
    except TamerError as error:
        _fail(error)
    from tamer.inspect.results import last_squad

    scores = {r["id"]: last_squad(db, r["id"]) for r in rows}
    if as_json:
        _print_json(
            [
                {
                    **{
                        k: r[k]
                        for k in (
                            "id",
                            "recipe",
                            "preset",
                            "status",
                            "steps_done",
                            "total_steps",
                            "started_at",
                            "ended_at",
                            "final_loss",
                            "failure_reason",
                        )
                    },
                    "squad": scores[r["id"]],
                }
                for r in rows
            ]
        )
        return
    table = output.table("id", "recipe", "status", "steps", "started", "duration", "final loss", "EM", "F1")
    for r in rows:
        table.add_row(
            r["id"],
            r["recipe"],
            r["status"],
            f"{r['steps_done'] or 0}/{r['total_steps'] or '?'}",
            output.when(r["started_at"]),
            output.duration(r["started_at"], r["ended_at"]),
            f"{r['final_loss']:.4f}" if r["final_loss"] is not None else "-",
            *(f"{scores[r['id']][metric]:.3f}" if scores[r["id"]] else "-" for metric in ("exact_match", "f1")),
        )
    output.print_table(console, table)


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """One run: config, attempts with their plans and outcomes, events, last checkpoint, final loss.

    Example: tamer show squad-20261125-201500-ab12
    """
    from tamer.state import checkpoints

    try:
        db = open_database(home)
        run_row = db.run(run_id)
    except TamerError as error:
        _fail(error)
    from tamer.inspect.history import timeline

    story = timeline(db, run_row["id"])
    events = db.events(run_row["id"])
    checkpoint, skipped = checkpoints.newest_valid(Path(run_row["run_dir"]))
    from tamer.inspect.results import export_location, last_squad, squad_text

    scores, exported = last_squad(db, run_row["id"]), export_location(db, run_row["id"])
    if as_json:
        _print_json(
            {
                "run": run_row,
                "config": json.loads(run_row["config_json"]),
                "timeline": story,
                "events": events,
                "evals": db.evals(run_row["id"]),
                "last_checkpoint": str(checkpoint.path) if checkpoint else None,
                "invalid_checkpoints": [{"name": name, "reason": reason} for name, reason in skipped],
                "squad": scores,
                "squad_scores": db.squad_scores(run_row["id"]),
                "export": exported,
            }
        )
        return
    totals = story["totals"]
    output.say(
        console,
        output.styled(
            run_row["id"],
            "bold",
            f"  {run_row['status']}  steps {run_row['steps_done']}/{run_row['total_steps']}  "
            f"started {output.when(run_row['started_at'])}  duration {output.duration(run_row['started_at'], run_row['ended_at'])}",
        ),
    )
    if run_row["failure_reason"]:
        output.say(console, f"reason: {run_row['failure_reason']}")
    for earlier in story["resumed_after"]:
        output.say(
            console,
            f"earlier: {earlier['status']} at {output.when(earlier['ended_at'])} ({earlier['reason']}); "
            f"resumed at {output.when(earlier['resumed_at'])}",
        )
    validated = json.loads(run_row["config_json"] or "{}").get("eval_samples", 1) > 0
    validation = (
        f"validation loss {output.loss(run_row['final_eval_loss'])} (best {output.loss(run_row['best_eval_loss'])})"
        if validated
        else "no validation (eval_samples 0)"
    )
    output.say(
        console,
        f"final loss {output.loss(run_row['final_loss'])}  {validation}  last checkpoint {checkpoint.path if checkpoint else '-'}",
    )
    for name, reason in skipped:
        output.say(
            console,
            output.styled(
                "warning:",
                "yellow",
                f" checkpoint {name} is not valid ({reason}); "
                + (
                    "the last checkpoint above is the newest valid one" if checkpoint else "no valid checkpoint is left"
                ),
            ),
        )
    output.say(
        console,
        f"SQuAD {squad_text(scores)}"
        + (f" on {scores['questions']} held-out questions at step {scores['step']}" if scores else "")
        + f"  export {exported['path'] if exported else '-'}",
    )
    output.say(
        console,
        f"totals: {totals['steps']} steps ({totals['steps_redone']} redone), {totals['samples'] or 0} samples, "
        f"{totals['tokens']:,} tokens; {totals['training_seconds']:.1f} s training, {totals['lost_seconds']:.1f} s lost to "
        f"{totals['failures']} failure{'' if totals['failures'] == 1 else 's'}"
        + (f" ({totals['recovered_in_process']} recovered in process)" if totals["recovered_in_process"] else "")
        + f", {totals['other_seconds']:.1f} s setup/checkpoints/eval",
    )
    from tamer.inspect.status import token_use

    use = token_use(db.steps(run_row["id"]))
    if use["padding_fraction"] is not None:
        output.say(
            console,
            f"tokens: {use['useful_tokens_per_s']:,.0f} useful tokens/s of step time, "
            f"{use['padding_fraction']:.1%} of computed tokens were padding",
        )
    if story["settled_plan"]:
        settled = story["settled_plan"]
        output.say(
            console,
            f"{'settled' if settled['settled'] else 'current'} plan (attempt {settled['attempt']}): {settled['summary']}",
        )
    config = json.loads(run_row["config_json"])
    output.say(
        console,
        "config: "
        + ", ".join(
            f"{k}={config[k]}"
            for k in (
                "preset",
                "model",
                "init",
                "data",
                "effective_batch_size",
                "micro_batch_size",
                "max_steps",
                "gpu_mem_cap",
                "host_mem_cap",
                "torch_threads",
            )
            if k in config
        ),
    )
    from tamer.checkpoint_policy import interval_in_force

    output.say(
        console, f"checkpoints: {interval_in_force(events) or 'no interval chosen yet (auto: after the first save)'}"
    )
    table = output.table("attempt", "seconds", "steps", "outcome", "phase", "plan", "why this plan", title="attempts")
    for a in story["attempts"]:
        seconds = f"{a['seconds']:.1f}" if a["ended_at"] else "running"
        steps = f"{a['resumed_from_step'] if a['resumed_from_step'] is not None else '-'}->{a['last_step'] if a['last_step'] is not None else '-'}"
        plan = a["plan_summary"] + "".join(
            f"; from step {split['step']}: micro-batch {split['micro_batch_size']} x {split['grad_accumulation']} (OOM in "
            f"{split['phase']}, split in process)"
            for split in a["splits_in_process"]
        )
        table.add_row(
            str(a["attempt"]), seconds, steps, a["outcome"] or "running", a["phase"] or "-", plan, a["reason"] or "-"
        )
    output.print_table(console, table)
    if story["deescalations"]:
        from tamer.cli.commands_inspect import steps_back_table

        output.print_table(console, steps_back_table(story["deescalations"]))
    events_table = output.table("time", "attempt", "event", "message", title="events")
    for e in events:
        events_table.add_row(output.when(e["time"]), str(e["attempt"] or "-"), e["kind"], e["message"])
    output.print_table(console, events_table)


@app.command()
def strategies(
    as_json: JsonOption = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="Show this config's ladder.")] = None,
    home: HomeOption = None,
) -> None:
    """Every memory-saving rung: those of the ladder (ladder.order) first, in order, then the others
    (marked `-`: the card ladder never applies them), with what each saves and costs.

    Example: tamer strategies --json
    """
    from tamer.config import build_config
    from tamer.strategies import registry
    from tamer.strategies.ladder import describe_ladder

    try:
        Home.resolve(home)
        order = build_config("tiny", config).ladder.order
    except TamerError as error:
        _fail(error)
    others = [name for name in registry.names() if name not in order]
    rows = [{**row, "position": index} for index, row in enumerate(describe_ladder(order), 1)] + [
        {**row, "position": None} for row in describe_ladder(others)
    ]
    if as_json:
        _print_json(rows)
        return
    table = output.table("#", "rung", "exact", "new process", "requires", "saves / costs")
    for row in rows:
        table.add_row(
            str(row["position"] or "-"),
            row["name"],
            "yes" if row["exact"] else "no",
            "yes" if row["new_process"] else "no",
            ", ".join(row["requires"]) or "-",
            row["summary"],
        )
    output.print_table(console, table)
    if others:
        output.say(
            console,
            "# -: not in ladder.order, so the card ladder never applies it (the planner may still choose chunked_loss)",
        )
