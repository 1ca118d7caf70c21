"""What every `tamer` command shares: the typer app, the option declarations, the one error handler
and the output helpers. The command modules (tamer/cli/commands_*.py) import from here, never from
the package (tamer/cli/__init__.py imports them to register their commands on `app`).

Errors a user can fix print one line, `error: ...`, and exit with the code of their kind
(tamer/errors.py): 2 config, 3 data, 4 model, 5 state, 6 locked; 1 when a run ends `failed`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from tamer import output
from tamer.cli.help import WholeHelpGroup
from tamer.errors import ConfigError, TamerError

app = typer.Typer(
    name="tamer",
    help="Fine-tune LLMs unattended on GPUs that are too small: tamer recovers from out-of-memory by itself.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain click help: flags show as flags (typer's rich help labels every flag `<bool>`).
    rich_markup_mode=None,
    cls=WholeHelpGroup,
)
# markup=False: messages carry user text (paths, crash messages) that must print as written, `[x].json` included;
# styled labels go through output.styled.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

HomeOption = Annotated[Optional[Path], typer.Option("--home", help="State folder (default: $TAMER_HOME or ~/.tamer).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# Options shared by `run` and `submit`.
RecipeArgument = Annotated[str, typer.Argument(help="Recipe to train: squad, chat, instruct or text.")]
PresetOption = Annotated[
    str, typer.Option(help="Starting config: llama-3.2-1b (the real model) or tiny (offline demo).")
]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="YAML file of config keys over the preset.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override one key: --set lora.r=8 (repeatable).")]
ModelOption = Annotated[Optional[str], typer.Option(help="Hub id or local folder of the model.")]
DataOption = Annotated[
    Optional[str],
    typer.Option(
        help="squad: a SQuAD v1.1 JSON file (default: rajpurkar/squad from the hub). "
        "chat, instruct, text: a .jsonl/.json/.parquet/.csv/.txt file, a folder, "
        "hub:NAME[:SUBSET], or bundled."
    ),
]
EvalDataOption = Annotated[
    Optional[str],
    typer.Option(
        "--eval-data", help="chat, instruct, text: validation rows from another source (default: held out of --data)."
    ),
]
MaxStepsOption = Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps.")]
GpuMemCapOption = Annotated[Optional[str], typer.Option(help="Cap the child's GPU memory, e.g. 15GiB.")]
HostMemCapOption = Annotated[
    Optional[str], typer.Option(help="Cap the child's address-space growth after setup, e.g. 2GiB.")
]
GpusOption = Annotated[
    Optional[int],
    typer.Option("--gpus", help="Processes (GPUs) on this machine; > 1 runs through torchrun (DDP, FSDP as a rung)."),
]
InjectOption = Annotated[
    Optional[list[str]], typer.Option(help="Rehearse a fault, e.g. oom:step=5,phase=backward (repeatable).")
]
InitOption = Annotated[Optional[str], typer.Option(help="pretrained or random (random weights, real architecture).")]
MicroBatchOption = Annotated[
    Optional[int], typer.Option(help="First plan's micro-batch (accumulation fills the effective batch).")
]
SeedOption = Annotated[Optional[int], typer.Option(help="Seed for data order and init.")]
DeviceOption = Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")]
MemorySnapshotOption = Annotated[
    bool, typer.Option("--memory-snapshot", help="Record CUDA allocator history; dump a snapshot on OOM.")
]


def _print_version(value: bool) -> None:
    if value:
        from tamer import __version__

        typer.echo(f"tamer {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Fine-tune LLMs unattended on GPUs that are too small: tamer recovers from out-of-memory by itself.

    Example: tamer run squad --preset tiny --max-steps 30
    """
    output.unwrap_when_piped(console, err_console)
    if home is not None:  # `tamer --home DIR CMD`: as if TAMER_HOME were set; a command's own --home still wins
        os.environ["TAMER_HOME"] = str(home)


def open_database(home: Optional[Path]) -> Any:
    """The database of `home`, opened for reading alone: commands that only look work in a read-only home too."""
    from tamer.state.db import Database
    from tamer.state.home import Home

    return Database(Home.resolve(home, writable=False).db_path, create=False, read_only=True)


def _fail(error: TamerError) -> None:
    err_console.print(output.styled("error:", "red", f" {error}"), highlight=False, soft_wrap=True)
    raise typer.Exit(error.exit_code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def check_recipe(recipe: str) -> None:
    """A one-line ConfigError for a recipe name tamer does not have (the config's `recipe` values)."""
    import difflib
    import typing

    from tamer.config import RunConfig

    recipes = typing.get_args(RunConfig.model_fields["recipe"].annotation)
    if recipe not in recipes:
        close = difflib.get_close_matches(recipe, recipes, n=1)
        raise ConfigError(
            f"recipe '{recipe}': unknown recipe; choose one of {', '.join(recipes)}"
            + (f"; did you mean {close[0]}?" if close else "")
        )


def build_run_config(
    recipe: str, preset: str, config_file: Path | None, overrides: list[str] | None, options: dict[str, Any]
) -> tuple[Any, Any]:
    """(the checked RunConfig, its data's token lengths or None) from `run`/`submit` options (None = not given),
    preflight included."""
    from tamer.config import build_config

    check_recipe(recipe)
    run_config = build_config(preset, config_file, {**options, "recipe": recipe}, overrides or [])
    if recipe != "squad":
        run_config = _absolute_paths(run_config)
    return run_config, _preflight(run_config)


def _absolute_paths(config: Any) -> Any:
    """Local paths made absolute, so that a queued or detached run reads what was meant from any directory."""
    from tamer.recipes.chat_templates import BUILT_IN

    named = {"bundled", *BUILT_IN}  # names, not paths (a hub:NAME source is never a path either)
    changed = {
        name: str(Path(value).expanduser().resolve())
        for name in ("data", "eval_data", "chat_template")
        if isinstance(value := getattr(config, name), str)
        and value not in named
        and not value.startswith("hub:")
        and Path(value).expanduser().exists()
    }
    return config.model_copy(update=changed) if changed else config


def _preflight(config: Any) -> Any:
    """Checks that catch bad input before a run is registered: milliseconds for squad; for chat, instruct and
    text every row is read and tokenized (tamer/recipes/prepare.py), which also measures the token lengths the
    planner sizes plans on (returned; None for squad, planned on SQuAD's figures)."""
    from tamer.hub import check_sources
    from tamer.trackers.base import check_installed

    check_installed(config)  # a tracker configured but not installed
    if config.recipe == "squad":
        from tamer.recipes import squad

        if config.data not in (None, "bundled"):
            squad.load_records(config.data)
        _go_offline(check_sources(config))
        return None
    _go_offline(check_sources(config))
    from tamer.recipes.prepare import prepare

    return prepare(config).profile


def _go_offline(offline: bool) -> None:
    if offline:  # hub unreachable, all it needs cached: its children must not wait on the network
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        typer.echo(
            "note: the hub is unreachable; using the cached copies of the model, tokenizer and data (HF_HUB_OFFLINE=1)",
            err=True,
        )
