"""No identifier is ever cut with `…`: every command's output, at 80 columns on a terminal and piped,
keeps run ids, rung names, plan text and numbers whole, and every table fits 80 and 120 columns (the
same check on real runs: tests/integration/test_output_widths.py). `--help` lists each command's
summary whole. Also the root options: `--version`, `--home` before the subcommand, and one-line errors
for a home that cannot be one."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from tamer.cli import app
from tests.output_widths import HEADERS, plain, problems

RUN_ID = "squad-20260101-000000-beef"
TERMINAL_80 = {"COLUMNS": "80", "TTY_COMPATIBLE": "1"}
PIPED = {"COLUMNS": "80", "TTY_COMPATIBLE": "0"}
PIPED_WITHOUT_COLUMNS = {"COLUMNS": None, "TTY_COMPATIBLE": "0"}
# Commands that print a table (or, status and doctor, only text) from the recorded run.
TABLE_COMMANDS = [
    ["runs"],
    ["show", RUN_ID],
    ["strategies"],
    ["history"],
    ["steps", RUN_ID],
    ["events", RUN_ID],
    ["sql", "SELECT * FROM attempts"],
    ["doctor"],
    ["plan", "--preset", "tiny", "--gpu-mem", "16GiB"],
    ["queue"],
    ["status", RUN_ID],
    ["compare", RUN_ID, RUN_ID],
]
# Commands that read the recorded run; the others (run, submit, daemon, ...) start work and are
# checked through their --help here and through real runs in tests/integration.
READING_COMMANDS = [
    ["runs"],
    ["show", RUN_ID],
    ["strategies"],
    ["history"],
    ["steps", RUN_ID],
    ["events", RUN_ID],
    ["sql", "SELECT * FROM attempts"],
    ["doctor"],
    ["plan", "--preset", "tiny", "--gpu-mem", "16GiB"],
    ["queue"],
    ["status", RUN_ID],
    ["logs", RUN_ID],
    ["--version"],
]
ALL_COMMANDS = sorted(typer.main.get_command(app).commands)


def _invoke(args: list[str], home, environment: dict[str, str]):
    result = CliRunner().invoke(app, ["--home", str(home), *args], env={**environment, "TAMER_HOME": None})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("environment", [TERMINAL_80, PIPED], ids=["terminal-80", "piped"])
@pytest.mark.parametrize("args", READING_COMMANDS, ids=lambda args: args[0])
def test_reading_commands_never_ellipsize(args, environment, recorded_home):
    """The output of each reading command has no `…`, and a run id it prints is printed whole."""
    output = _invoke(args, recorded_home, environment)
    assert "…" not in output
    if args[0] in ("runs", "show", "history", "status"):
        assert RUN_ID in output


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
@pytest.mark.parametrize("args", TABLE_COMMANDS, ids=lambda args: args[0])
def test_tables_fit_the_width(args, terminal, width, recorded_home):
    """At COLUMNS 80 and 120, on a terminal and piped, no line of a table command is wider than that (but
    a lone path), nothing ends in `…` and no header is broken inside a word."""
    output = _invoke(args, recorded_home, {"COLUMNS": str(width), "TTY_COMPATIBLE": "1" if terminal else "0"})
    assert problems(output, width, HEADERS[args[0]]) == []


def test_wrapped_text_keeps_values_whole(recorded_home):
    """At 80 columns `tamer show` wraps its text lines at spaces: the run id and the checkpoint path it
    names are each whole on one line."""
    output = _invoke(["show", RUN_ID], recorded_home, TERMINAL_80)
    assert problems(output, 80) == []
    lines = plain(output).splitlines()
    assert any(RUN_ID in line for line in lines)
    assert any(f"runs/{RUN_ID}/checkpoints/step-4" in line for line in lines)


def test_help_lists_every_summary_whole():
    """`tamer --help` at 80 columns lists each command with its whole first sentence (click would cut it
    to one line ending in `...`), wrapped at spaces within 80 columns."""
    commands = typer.main.get_command(app).commands
    output = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    listing = output[output.index("Commands:") :]
    assert all(len(line) <= 80 for line in listing.splitlines())
    joined = " ".join(listing.split())
    for name, command in commands.items():
        first_sentence = " ".join(command.help.split("\n\n")[0].split())
        first_sentence = first_sentence[: first_sentence.find(". ") + 1] if ". " in first_sentence else first_sentence
        assert f"{name} {first_sentence}" in joined, name


def test_help_breaks_no_word_at_a_hyphen():
    """At every width from 40 to 100 columns, help text and option help wrap at spaces only: `--node-rank`
    and `micro-batch` stay whole (click's own formatter breaks them after the hyphen at some widths)."""
    from tamer.cli.help import ClickHelpFormatter, HelpFormatter

    text = "Example: tamer join /shared/tamer/runs/squad-20261203-101500-ab12 --node-rank 1 with a micro-batch of 8"

    def words(formatter_class: type, width: int) -> list[str]:
        formatter = formatter_class(width=width)
        formatter.write_text(text)
        formatter.write_dl([("--gpus <int>", text)])
        return formatter.getvalue().split()

    for width in range(40, 101):
        assert "--node-rank" in words(HelpFormatter, width) and "micro-batch" in words(HelpFormatter, width), width
    assert any("--node-rank" not in words(ClickHelpFormatter, width) for width in range(40, 101))  # what it fixes


@pytest.mark.parametrize("environment", [TERMINAL_80, PIPED], ids=["terminal-80", "piped"])
@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_help_never_ellipsizes(name, environment, recorded_home):
    """Every command's --help, at 80 columns and piped, has no `…` and shows --json as a plain flag."""
    output = _invoke([name, "--help"], recorded_home, environment)
    assert "…" not in output
    assert "<bool>" not in output


def test_plot_and_report_write_files(recorded_home, tmp_path):
    """plot and report print only the path they wrote, whole, at 80 columns; `-o NEW/` (a trailing slash) is a folder
    to create, with RUN.png / RUN.html inside, not a file named NEW."""
    for name, suffix in (("plot", "png"), ("report", "html")):
        path = tmp_path / f"a-long-folder-name-{'x' * 60}" / f"{RUN_ID}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        output = _invoke([name, RUN_ID, "-o", str(path)], recorded_home, TERMINAL_80)
        assert output.strip() == str(path) and path.exists()
        folder = tmp_path / f"new-{name}"
        output = _invoke([name, RUN_ID, "-o", f"{folder}/"], recorded_home, PIPED)
        assert folder.is_dir() and output.strip() == str(folder / f"{RUN_ID}.{suffix}"), output


def test_piped_text_lines_are_not_wrapped(recorded_home):
    """Piped without COLUMNS, `tamer show` prints its header and totals each on one line, however long."""
    lines = _invoke(["show", RUN_ID], recorded_home, PIPED_WITHOUT_COLUMNS).splitlines()
    assert any(line.startswith(RUN_ID) and "duration" in line for line in lines)
    assert any(line.startswith("totals:") and "setup/checkpoints/eval" in line for line in lines)


def test_version():
    """`tamer --version` prints the package version."""
    from tamer import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"tamer {__version__}"


def test_home_before_or_after_the_subcommand(recorded_home, tmp_path):
    """--home works before the subcommand, and a command's own --home wins over it."""
    runner = CliRunner()
    before = runner.invoke(app, ["--home", str(recorded_home), "runs", "--json"], env={"TAMER_HOME": None})
    assert RUN_ID in before.output
    overridden = runner.invoke(
        app,
        ["--home", str(tmp_path / "elsewhere"), "runs", "--json", "--home", str(recorded_home)],
        env={"TAMER_HOME": None},
    )
    assert RUN_ID in overridden.output


@pytest.mark.parametrize("where", ["file", "inside-file", "proc"])
def test_unusable_home_is_one_line_exit_5(where, tmp_path):
    """A home that is a file, inside a file, or under /proc ends in one `error:` line and exit code 5."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    home = {"file": afile, "inside-file": afile / "home", "proc": "/proc/tamer-home"}[where]
    for args in (["runs"], ["status"], ["doctor"], ["strategies"]):
        result = CliRunner().invoke(app, ["--home", str(home), *args], env={"TAMER_HOME": None})
        assert result.exit_code == 5, (args, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith("error: home ")


def test_doctor_keeps_third_party_prints_off_stdout(recorded_home, monkeypatch):
    """What a library prints while doctor inspects it goes to stderr, so `tamer doctor --json | jq` works."""
    import json

    import tamer.inspect.doctor as doctor

    real = doctor.diagnose

    def noisy() -> dict:
        print("bitsandbytes: a warning printed on import")
        return real()

    monkeypatch.setattr(doctor, "diagnose", noisy)
    result = CliRunner().invoke(app, ["doctor", "--json", "--home", str(recorded_home)])
    assert result.exit_code == 0
    assert "warning printed" not in result.stdout and "warning printed" in result.stderr
    assert json.loads(result.stdout)["home"] == str(recorded_home)


def test_logs_prints_events_and_step_lines(recorded_home):
    """`tamer logs` interleaves the run's events and its step lines in time order."""
    lines = _invoke(["logs", RUN_ID], recorded_home, PIPED).splitlines()
    kinds = [line.split()[1] if line.split()[1] == "step" else line.split()[3].rstrip(":") for line in lines]
    assert kinds == ["start", "step", "step", "in_process_split", "step", "step", "checkpoint"]
    assert "step 3/4 loss 9.7000" in lines[4] and "tok/s" in lines[4] and "ETA" in lines[4]


def test_submit_takes_the_options_of_run_that_suit_a_queued_job():
    """Every option of `tamer run` but --detach and the multi-node ones is an option of `tamer submit`."""
    commands = typer.main.get_command(app).commands
    options = {name: {opt for param in commands[name].params for opt in param.opts} for name in ("run", "submit")}
    not_for_the_queue = {"--detach", "--nnodes", "--rdzv-endpoint"}
    assert options["run"] - not_for_the_queue <= options["submit"]


def test_errors_print_as_written_never_as_rich_markup(tmp_path):
    """Square brackets in a message (a file named `[x].json`, a C++ `[enforce fail ...]`) reach the user as
    written: the error line is plain text, not rich markup."""
    missing = tmp_path / "[x].json"
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path / "home"), "run", "squad", "--preset", "tiny", "--data", str(missing)],
        env={"COLUMNS": "200", "TAMER_HOME": None},
    )
    assert result.exit_code == 3 and f"--data {missing}: no such file" in result.output
    from tamer.cli.common import _fail
    from tamer.errors import StateError

    failing = typer.Typer()

    @failing.command()
    def crash() -> None:
        _fail(StateError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory"))

    said = CliRunner().invoke(failing, [], env={"COLUMNS": "200"})
    assert said.exit_code == 5 and "error: [enforce fail at alloc_cpu.cpp:117] data." in said.output


@pytest.mark.parametrize("size", ["0", "300MiB"])
def test_plan_refuses_a_card_smaller_than_the_cuda_context(size, tmp_path):
    """`tamer plan --gpu-mem 0` is a one-line config error (exit 2), not a plan for a negative budget."""
    result = CliRunner().invoke(
        app,
        ["--home", str(tmp_path), "plan", "squad", "--preset", "tiny", "--gpu-mem", size],
        env={"COLUMNS": "200", "TAMER_HOME": None},
    )
    assert result.exit_code == 2 and "cannot even hold the CUDA context" in result.output and "GiB" in result.output
    assert "-0." not in result.output


BITSANDBYTES_NOTE = (
    "Failed to load CPU gemm_4bit_forward from kernels-community: Kernel repository "
    "'kernels-community/quantization-bitsandbytes' could not verify publisher trust status."
)


@pytest.fixture
def noisy_probe(monkeypatch):
    """The doctor's torch probe as a child that prints bitsandbytes' import note on stderr."""
    import json
    import subprocess

    import tamer.inspect.doctor as doctor

    facts = {
        "torch": {
            "version": "2.13.0+cpu",
            "cuda_build": None,
            "cuda_available": False,
            "cpu_bf16": True,
            "allocator_env": {"PYTORCH_CUDA_ALLOC_CONF": None},
            "devices": [],
        },
        "bitsandbytes": {"usable": True, "version": "0.50.2", "device": "cpu", "round_trip_error": 0.007},
    }
    done = subprocess.CompletedProcess([], 0, stdout=json.dumps(facts) + "\n", stderr=BITSANDBYTES_NOTE + "\n")
    monkeypatch.setattr(doctor.subprocess, "run", lambda *args, **kwargs: done)


def test_doctor_shows_a_library_import_note_as_a_note(noisy_probe, recorded_home):
    """What bitsandbytes prints on import no longer opens the doctor's output: the report starts with the
    host, and the note follows the bitsandbytes line, marked as a library's note, within 80 columns."""
    result = CliRunner().invoke(app, ["--home", str(recorded_home), "doctor"], env=TERMINAL_80)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout.startswith("Host: ")
    lines = plain(result.stdout).splitlines()
    note = next(index for index, line in enumerate(lines) if "library note" in line)
    assert lines[note - 1].startswith("bitsandbytes 0.50.2: usable")
    assert "Failed to load CPU gemm_4bit_forward" in " ".join(" ".join(lines[note:]).split())
    assert problems(result.stdout, 80) == []


def test_doctor_json_is_unchanged_by_the_note(noisy_probe, recorded_home):
    """With --json the JSON has the same keys as before (no note in it) and the note goes to stderr."""
    import json

    result = CliRunner().invoke(app, ["--home", str(recorded_home), "doctor", "--json"])
    assert result.exit_code == 0
    assert set(json.loads(result.stdout)) == {"host", "nvml", "torch", "bitsandbytes", "explanation", "home"}
    assert BITSANDBYTES_NOTE in result.stderr


def test_plan_past_attempts_table_fits(monkeypatch, recorded_home):
    """`tamer plan`'s table of past attempts on this card (one of them an OOM, measured as a lower bound)
    fits 80 columns with its plans whole."""
    from tamer.config import build_config
    from tamer.plan import Plan
    from tamer.planner.calibrate import Observation
    from tamer.planner.candidates import shape_of
    from tamer.planner.estimate import Workload, estimate

    shape = shape_of(build_config("tiny"))
    plans = [
        Plan(micro_batch_size=8, grad_accumulation=1, eval_batch_size=8),
        Plan(
            micro_batch_size=4,
            grad_accumulation=2,
            eval_batch_size=8,
            gradient_checkpointing=True,
            optimizer="paged_adamw_8bit",
        ),
    ]
    past = [
        Observation(RUN_ID, number, plan, outcome, "backward", 2**28, None, estimate(shape, plan, Workload()))
        for number, (plan, outcome) in enumerate(zip(plans, ("cuda_oom", "done")), 1)
    ]
    monkeypatch.setattr("tamer.cli.commands_plan._past", lambda home, shape, facts: past)
    output = _invoke(["plan", "--preset", "tiny", "--gpu-mem", "16GiB"], recorded_home, TERMINAL_80)
    assert "past attempts of this model on this card:" in output
    headers = HEADERS["plan"] + ("run", "attempt", "outcome", "predicted GiB", "measured GiB", "error")
    assert problems(output, 80, headers) == []
    assert "lower bound" in output and f"{RUN_ID}" in output
