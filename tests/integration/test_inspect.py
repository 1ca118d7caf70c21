"""The inspect commands (history, steps, events, sql, plot, report, doctor) on a database written by a
real tiny run with an injected OOM, driven in-process through typer's CliRunner.

The run: 12 steps, checkpoint every 4; an OOM fires in the backward of step 6 whenever the micro-batch
is at least 8. Attempt 1 (micro-batch 8) does steps 1-5 and dies; gradient_checkpointing keeps
micro-batch 8, so attempt 2 redoes step 5 from checkpoint 4 and dies again; split_micro_batch makes it
4 x 2 and attempt 3 redoes step 5 and finishes. So: 2 OOM rows, 1 step lost each, 14 step rows.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tamer.cli import app
from tamer.inspect.history import failures
from tamer.inspect.plot import plot_data
from tamer.state.db import Database
from tests.integration.runs import TINY, run_id_of, tamer

RUN_ARGS = [
    "run",
    "squad",
    *TINY,
    "--max-steps",
    "12",
    "--set",
    "checkpoint_every=4",
    "--inject",
    "oom:step=6,phase=backward,min_micro_batch=8",
    "--set",
    "ladder.order=[gradient_checkpointing,split_micro_batch]",
    "--set",
    "ladder.mode=card",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory):
    """One finished run that survived two injected OOMs: its home and id."""
    home = tmp_path_factory.mktemp("inspect")
    result = tamer(*RUN_ARGS, home=home, timeout=300)
    assert result.returncode == 0, result.stderr
    return {"home": home, "run_id": run_id_of(result)}


def invoke(oom_run, *args: str):
    return runner.invoke(app, [*args, "--home", str(oom_run["home"])])


def test_history_json_lists_both_ooms_with_rungs_and_cost(oom_run):
    """`history --json` has one row per OOM: backward at step 6, micro-batch 8, the rung applied, one step lost."""
    result = invoke(oom_run, "history", "--run", oom_run["run_id"], "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["attempt"], r["outcome"], r["phase"], r["step"], r["micro_batch_size"]) for r in rows] == [
        (1, "cuda_oom", "backward", 6, 8),
        (2, "cuda_oom", "backward", 6, 8),
    ]
    assert [r["rungs_applied"] for r in rows] == [["gradient_checkpointing"], ["split_micro_batch"]]
    assert [r["steps_lost"] for r in rows] == [1, 1]  # step 5 came after checkpoint 4 and was redone each time
    assert [r["next_resumed_from_step"] for r in rows] == [4, 4]
    assert all(r["tried_to_allocate"] == round(1.96 * 1024**3) for r in rows)  # from the injected OOM message
    assert all(r["time_lost_seconds"] > 0 for r in rows)
    assert rows[0]["recovered_at"] is None and rows[1]["recovered_at"] is not None  # attempt 2 failed before recovering
    db = Database(oom_run["home"] / "tamer.db", create=False)
    assert rows == json.loads(json.dumps(failures(db, oom_run["run_id"])))  # the JSON is the computed data, whole


def test_history_table_names_rungs_and_totals(oom_run):
    """The history table shows each rung applied and a line totalling the failures and steps lost."""
    result = invoke(oom_run, "history")
    assert result.exit_code == 0, result.output
    assert "+gradient_checkpointing" in result.stdout and "+split_micro_batch" in result.stdout
    assert "2 failures:" in result.stdout and "2 steps lost" in result.stdout


def test_history_filters(oom_run):
    """--kind done selects the finishing attempt, --since keeps today's failures, and a bad --kind exits 2."""
    done = json.loads(invoke(oom_run, "history", "--kind", "done", "--json").stdout)
    assert [row["attempt"] for row in done] == [3]
    assert len(json.loads(invoke(oom_run, "history", "--since", "1d", "--json").stdout)) == 2
    bad = invoke(oom_run, "history", "--kind", "oom")
    assert bad.exit_code == 2 and "unknown outcome oom" in bad.stderr


def test_steps_keep_redone_rows_and_thin_with_every(oom_run):
    """`steps` returns every attempt's rows (step 5 three times) as JSON and CSV; --every 4 keeps steps 4, 8, 12."""
    rows = json.loads(invoke(oom_run, "steps", oom_run["run_id"], "--json").stdout)
    assert len(rows) == 14
    assert [row["attempt"] for row in rows if row["step"] == 5] == [1, 2, 3]
    table = list(csv.DictReader(io.StringIO(invoke(oom_run, "steps", oom_run["run_id"], "--csv").stdout)))
    assert len(table) == 14 and {"loss", "host_rss", "sample_ids"} <= set(table[0])
    thinned = json.loads(invoke(oom_run, "steps", oom_run["run_id"], "--every", "4", "--json").stdout)
    assert [row["step"] for row in thinned] == [4, 8, 12]
    both = invoke(oom_run, "steps", oom_run["run_id"], "--csv", "--json")
    assert both.exit_code == 2


def test_events_filter_by_kind(oom_run):
    """`events --kind escalate,restart --json` returns the two escalations and two restarts with parsed detail."""
    rows = json.loads(invoke(oom_run, "events", oom_run["run_id"], "--kind", "escalate,restart", "--json").stdout)
    assert [row["kind"] for row in rows] == ["escalate", "restart", "escalate", "restart"]
    assert rows[0]["detail"]["applied"] == ["gradient_checkpointing"]
    table = invoke(oom_run, "events", oom_run["run_id"])
    assert "attempt_start" in table.stdout and "finish" in table.stdout


def test_sql_reads_and_refuses_writes(oom_run):
    """`sql` answers a SELECT (table and JSON) and refuses DELETE, UPDATE and ATTACH with exit 2, leaving the database unchanged."""
    result = invoke(oom_run, "sql", "SELECT attempt, outcome FROM attempts ORDER BY attempt", "--json")
    assert json.loads(result.stdout) == [
        {"attempt": 1, "outcome": "cuda_oom"},
        {"attempt": 2, "outcome": "cuda_oom"},
        {"attempt": 3, "outcome": "done"},
    ]
    assert "cuda_oom" in invoke(oom_run, "sql", "SELECT outcome FROM attempts").stdout
    database = oom_run["home"] / "tamer.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    for statement in (
        "DELETE FROM steps",
        "UPDATE runs SET status = 'failed'",
        f"ATTACH DATABASE '{database}' AS again",
    ):
        refused = invoke(oom_run, "sql", statement)
        assert refused.exit_code == 2, statement
        assert refused.stderr.startswith("error: tamer sql only reads") and refused.stderr.count("\n") == 1
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before
    counts = json.loads(
        invoke(oom_run, "sql", "SELECT (SELECT count(*) FROM steps) AS steps, status FROM runs", "--json").stdout
    )
    assert counts == [{"steps": 14, "status": "done"}]


def test_plot_writes_png_of_requested_size_with_markers(oom_run, tmp_path):
    """`plot` writes a PNG of the asked size; its data marks both OOMs and escalations at step 6 and both restarts at step 4."""
    output = tmp_path / "run.png"
    result = invoke(oom_run, "plot", oom_run["run_id"], "-o", str(output), "--width", "1000", "--height", "700")
    assert result.exit_code == 0, result.output
    image = Image.open(output).convert("RGB")
    assert image.size == (1000, 700)
    red, green, blue = np.asarray(image).astype(int).transpose(2, 0, 1)
    assert ((red > 180) & (green < 100) & (blue < 100)).sum() > 500  # the OOM lines (#d62728) run down both panels
    data = plot_data(Database(oom_run["home"] / "tamer.db", create=False), oom_run["run_id"])
    assert sorted((m["step"], m["kind"]) for m in data["markers"]) == [
        (4, "restart"),
        (4, "restart"),
        (6, "cuda_oom"),
        (6, "cuda_oom"),
        (6, "escalate"),
        (6, "escalate"),
    ]
    assert data["train"]["step"] == list(range(1, 13)) and data["redone"]["step"] == [5, 5]
    assert data["eval"]["step"] == [12] and "host_rss" in data["memory"]


def test_plot_refuses_absurd_sizes(oom_run, tmp_path):
    """A width below 200 pixels is a config error (exit 2), and no file is written."""
    result = invoke(oom_run, "plot", oom_run["run_id"], "-o", str(tmp_path / "x.png"), "--width", "10")
    assert result.exit_code == 2 and not (tmp_path / "x.png").exists()


def test_report_is_self_contained_and_renders(oom_run, tmp_path):
    """`report` writes one HTML page with the plot inline and the attempts; headless Chromium renders it to a non-blank screenshot."""
    page_path = tmp_path / "run.html"
    result = invoke(oom_run, "report", oom_run["run_id"], "-o", str(page_path))
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    image_data = page.split('src="data:image/png;base64,')[1].split('"')[0]
    assert Image.open(io.BytesIO(base64.b64decode(image_data))).size == (1200, 800)
    assert oom_run["run_id"] in page and "+gradient_checkpointing" in page and "+split_micro_batch" in page
    assert "micro-batch 4 x 2" in page  # the settled plan
    assert 'src="http' not in page and 'href="http' not in page  # nothing fetched from elsewhere
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the page was checked but not rendered")
    screenshot = tmp_path / "page.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={screenshot}",
            "--window-size=1200,1600",
            page_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    rendered = Image.open(screenshot).convert("L")
    assert rendered.size == (1200, 1600)
    low, high = rendered.getextrema()
    assert high - low > 100  # text and the plot drew, not a blank page


@pytest.mark.parametrize("command, suffix", [("plot", "png"), ("report", "html")])
def test_plot_and_report_take_a_folder_or_a_new_path_and_never_overwrite_a_foreign_file(
    oom_run, tmp_path, command, suffix
):
    """-o of an existing folder writes RUN.SUFFIX inside it; -o under missing folders creates them; tamer's own
    earlier file is replaced; a file tamer did not write is refused (exit 2, unchanged) unless --force."""
    run_id = oom_run["run_id"]
    into_folder = invoke(oom_run, command, run_id, "-o", str(tmp_path))
    assert into_folder.exit_code == 0, into_folder.output
    assert (tmp_path / f"{run_id}.{suffix}").stat().st_size > 1000
    nested = tmp_path / "missing" / "deeper" / f"x.{suffix}"
    assert invoke(oom_run, command, run_id, "-o", str(nested)).exit_code == 0 and nested.is_file()
    again = invoke(oom_run, command, run_id, "-o", str(nested))
    assert again.exit_code == 0, again.output
    foreign = tmp_path / f"mine.{suffix}"
    foreign.write_text("my own file")
    refused = invoke(oom_run, command, run_id, "-o", str(foreign))
    assert refused.exit_code == 2 and "tamer did not write" in refused.output and "Traceback" not in refused.output
    assert foreign.read_text() == "my own file"
    assert invoke(oom_run, command, run_id, "-o", str(foreign), "--force").exit_code == 0
    assert foreign.read_bytes() != b"my own file"
    blocked = invoke(oom_run, command, run_id, "-o", str(foreign / f"x.{suffix}"))
    assert blocked.exit_code == 2 and "is a file, not a folder" in blocked.output
    assert not [path for path in tmp_path.rglob("*") if ".tmp" in path.name]


def test_doctor_without_gpu_prints_cpu_facts_and_exits_0(monkeypatch):
    """Without NVML or CUDA, `doctor` says so plainly, still reports host, torch and bitsandbytes facts, and exits 0."""
    import pynvml
    import torch

    def no_nvml():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "no NVIDIA GPU found" in result.stdout and "CUDA is not available" in result.stdout
    assert "CPUs" in result.stdout and "bitsandbytes" in result.stdout and "caching allocator" in result.stdout
    facts = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert facts["nvml"]["available"] is False and facts["torch"]["cuda_available"] is False
    assert facts["host"]["cpu_count"] >= 1 and facts["host"]["memory_total"] > 0
