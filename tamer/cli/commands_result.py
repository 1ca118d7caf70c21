"""The `tamer` commands about what a run produced: export, eval and compare.

Registered on tamer/cli/common.py's app when tamer/cli/__init__.py imports this module. export and
eval do their work in a child process (tamer/engine/result.py, started through tamer/daemon/result.py) so the CLI never
imports torch; compare only reads the database (tamer/inspect/results.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tamer import output
from tamer.cli.common import HomeOption, JsonOption, _fail, _print_json, app, console, open_database
from tamer.errors import TamerError
from tamer.state.home import Home

RunArgument = Annotated[str, typer.Argument(help="Run id (or a unique prefix).")]
StepOption = Annotated[
    Optional[int], typer.Option("--step", help="Checkpoint step (default: the newest valid checkpoint).")
]


def _run_folder(home: Optional[Path], run_id: str) -> tuple[str, Path]:
    from tamer.state.db import Database

    db = Database(Home.resolve(home).db_path, create=False)
    run = db.run(run_id)
    db.close()
    return run["id"], Path(run["run_dir"])


@app.command("export")
def export_command(
    run_id: RunArgument,
    step: StepOption = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="Folder to write (default: RUN_DIR/export, or RUN_DIR/export-step-N with --step)."
        ),
    ] = None,
    merge_lora: Annotated[
        Optional[bool],
        typer.Option(
            "--merge-lora/--no-merge-lora",
            help="LoRA: merge into the base (default, config export.merge_lora) or write the adapter with a pointer to its base.",
        ),
    ] = None,
    dtype: Annotated[
        Optional[str],
        typer.Option(
            help="bf16, fp16 or fp32 (default, config export.dtype=auto: bf16 when trained with fp32 master weights)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an earlier tamer export in the -o folder (never a folder of other files)."
        ),
    ] = False,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write a Hugging Face model folder (safetensors, config, tokenizer, generation config, model card)
    from a run's checkpoint; it loads with AutoModelForCausalLM/AutoTokenizer.from_pretrained.

    The folder must be new or empty; one that holds an earlier tamer export is replaced only with
    --force, and a folder of other files never is. Missing parent folders are created.

    Example: tamer export squad-20261125-201500-ab12 -o ./squad-model --dtype fp32
    """
    from tamer import outputs
    from tamer.daemon.result import run_result_child

    try:
        if dtype is not None and dtype not in ("bf16", "fp16", "fp32"):
            from tamer.errors import ConfigError

            raise ConfigError(f"--dtype {dtype}: unknown dtype; choose bf16, fp16 or fp32")
        full_id, run_dir = _run_folder(home, run_id)
        destination = (output or run_dir / ("export" if step is None else f"export-step-{step}")).expanduser().resolve()
        destination = outputs.export_folder(
            destination, owned=destination.is_relative_to(run_dir.resolve()), force=force
        )
        arguments = ["--export", str(destination)] + (["--step", str(step)] if step is not None else [])
        if merge_lora is not None:
            arguments.append("--merge-lora" if merge_lora else "--no-merge-lora")
        if dtype is not None:
            arguments += ["--dtype", dtype]
        summary = run_result_child(run_dir, arguments)
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(summary)
        return
    exported = summary["export"]
    what = "LoRA adapter (points at its base)" if exported["adapter_only"] else f"{exported['dtype']} weights"
    console.print(
        f"exported {full_id} step {exported['step']} ({what}, {exported['bytes'] / 1e6:.1f} MB, "
        f"{exported['seconds']:.1f} s) to",
        highlight=False,
    )
    typer.echo(exported["path"])


@app.command("eval")
def eval_command(
    run_id: RunArgument,
    step: StepOption = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            help="squad: a SQuAD v1.1 JSON file (default: the run's held-out validation slice); questions the run trained on are left out. chat, instruct, text: a source in the recipe's format, every row of it."
        ),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Answer at most this many questions (default: config eval.squad_samples).")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(help="Questions decoded together (default: config eval.squad_batch_size); an OOM halves it."),
    ] = None,
    em_f1: Annotated[
        bool, typer.Option("--em-f1", help="chat, instruct: also exact match and F1 of greedy replies (as eval.em_f1).")
    ] = False,
    predictions: Annotated[
        Optional[str],  # str, not Path: a trailing "/" (a folder to create) must survive
        typer.Option(
            help="Also write every reply, its gold answers, exact match and F1 to this JSON file (a folder: RUN.predictions.json in it); implies --em-f1. Never replaces a file tamer did not write.",
            metavar="FILE",
        ),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """SQuAD exact match and F1 of a checkpoint by greedy generation on held-out questions, with the
    training prompt; the scores are stored (tamer show, runs, report, compare). chat, instruct and text
    runs: the validation loss, and with --em-f1 (chat, instruct) EM and F1 of the replies.

    Example: tamer eval squad-20261125-201500-ab12 --limit 200
    """
    from tamer import outputs
    from tamer.daemon.result import run_result_child

    try:
        for name, value in (("--limit", limit), ("--batch-size", batch_size)):
            if value is not None and value < 1:
                from tamer.errors import ConfigError

                raise ConfigError(f"{name} {value}: must be >= 1")
        full_id, run_dir = _run_folder(home, run_id)
        arguments = ["--eval"] + (["--step", str(step)] if step is not None else []) + (["--em-f1"] if em_f1 else [])
        if data is not None:
            local = data != "bundled" and not data.startswith("hub:")
            arguments += ["--data", str(Path(data).expanduser().resolve()) if local else data]
        if limit is not None:
            arguments += ["--limit", str(limit)]
        if batch_size is not None:
            arguments += ["--batch-size", str(batch_size)]
        if predictions is not None:
            written = outputs.output_file(
                predictions,
                f"{full_id}.predictions.json",
                "predictions",
                outputs.PREDICTIONS_SIGNATURE,
                None,
                "--predictions",
            )
            arguments += ["--predictions", str(written)]
        summary = run_result_child(run_dir, arguments)
    except TamerError as error:
        _fail(error)
    result = summary["eval"]
    if as_json:
        _print_json(
            {"run_id": full_id, "step": summary["step"], "plan": summary["plan"], "device": summary["device"], **result}
        )
        return
    if "eval_loss" in result:
        console.print(
            f"{full_id} step {summary['step']}: validation loss {result['eval_loss']:.4f} on {result['eval_samples']} "
            f"{result['data']} examples ({result['eval_tokens']:,} scored tokens, {summary['device']})",
            highlight=False,
        )
        if "exact_match" not in result:
            return
    console.print(
        f"{full_id} step {summary['step']}: exact match {result['exact_match']:.3f}, F1 {result['f1']:.3f} on "
        f"{result['questions']} {result['data']} questions ({result['seconds']:.1f} s, "
        f"{result['questions_per_second'] or 0:.1f} questions/s, batch {result['batch_size']}, {summary['device']})",
        highlight=False,
    )
    for example in result["examples"][:3]:
        console.print(f"  answered {example['answer']!r}; gold {example['gold'][0]!r}", highlight=False)
    if "predictions_file" in result:
        console.print(f"every reply: {result['predictions_file']}", highlight=False)


@app.command()
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids (or unique prefixes).")],
    data: Annotated[
        Optional[str],
        typer.Option(help="EM/F1 of `tamer eval --data FILE` on this file (default: the held-out validation slice)."),
    ] = None,
    home: HomeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs side by side: settled plan, steps, tokens, wall time, final and validation loss, SQuAD EM
    and F1 — what a LoRA or 8-bit plan cost in answer quality.

    Example: tamer compare squad-20261125-201500-ab12 squad-20261126-090000-cd34
    """
    from tamer.inspect.results import compare as compare_rows
    from tamer.protocol import HELD_OUT

    try:
        label = (
            HELD_OUT if data is None else data if data == "bundled" else str(Path(data).expanduser().resolve())
        )  # as `tamer eval` stores it
        rows = compare_rows(open_database(home), run_ids, label)
    except TamerError as error:
        _fail(error)
    if as_json:
        _print_json(rows)
        return
    table = output.table("run", "status", "EM", "F1", "val loss", "final loss", "steps", "tokens", "wall time", "plan")
    for row in rows:
        plan = (row["plan"] or "-") + ("" if row["plan_settled"] else " (not settled)")
        table.add_row(
            row["run_id"],
            row["status"],
            output.number(row["exact_match"], 3),
            output.number(row["f1"], 3),
            output.number(row["final_eval_loss"]),
            output.number(row["final_loss"]),
            str(row["steps"]),
            f"{row['tokens']:,}",
            output.seconds(row["wall_seconds"]),
            plan,
        )
    output.print_table(console, table)
