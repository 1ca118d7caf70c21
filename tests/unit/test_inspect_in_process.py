"""An OOM the child recovered from itself (an `in_process_split` event) is a failure and a recovery in
the record: history, timeline, plot, report and `tamer show` all count it, and the settled plan is the
split one its last steps ran with. The run is conftest.py's `recorded_home`.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tamer.cli import app
from tamer.inspect.history import failures, timeline
from tamer.state.db import Database

RUN_ID = "squad-20260101-000000-beef"


def test_in_process_split_is_a_failure_row(recorded_home):
    """history lists the in-process OOM with its phase, step, sizes, the split it did and the work thrown away."""
    (row,) = failures(Database(recorded_home / "tamer.db", create=False), RUN_ID)
    assert row["in_process"] is True
    assert (row["outcome"], row["phase"], row["step"], row["micro_batch_size"]) == ("cuda_oom", "backward", 3, 8)
    assert row["tried_to_allocate"] == round(1.96 * 1024**3)
    assert row["recovery"] == "split in process" and row["rungs_applied"] == ["split_micro_batch"]
    assert row["next_plan"].startswith("micro-batch 4 x 2")
    assert row["steps_lost"] == 0
    assert row["time_lost_seconds"] == pytest.approx(2.5)  # step 3 began at 11, the retry at 13.5


def test_in_process_split_filters_like_a_cuda_oom(recorded_home):
    """--kind cuda_oom keeps the in-process OOM and --kind host_oom drops it."""
    db = Database(recorded_home / "tamer.db", create=False)
    assert len(failures(db, kinds=["cuda_oom"])) == 1
    assert failures(db, kinds=["host_oom"]) == []


def test_timeline_counts_it_and_settles_on_the_split_plan(recorded_home):
    """The timeline counts one failure recovered in process, moves its thrown-away work from training to
    lost, and names the plan the last steps ran with as settled."""
    story = timeline(Database(recorded_home / "tamer.db", create=False), RUN_ID)
    totals = story["totals"]
    assert (totals["failures"], totals["recovered_in_process"]) == (1, 1)
    assert totals["training_seconds"] == pytest.approx(9.0 - 2.5)
    assert totals["lost_seconds"] == pytest.approx(2.5)
    assert story["settled_plan"]["summary"].startswith("micro-batch 4 x 2")
    assert story["settled_plan"]["rungs"] == ["split_micro_batch"]
    assert story["attempts"][0]["plan_at_end"].startswith("micro-batch 4 x 2")
    assert story["attempts"][0]["splits_in_process"] == [
        {"step": 3, "phase": "backward", "micro_batch_size": 4, "grad_accumulation": 2}
    ]


def test_plot_and_report_mark_it(recorded_home):
    """The plot has an OOM marker at step 3 saying it was recovered in process; the report lists it."""
    from tamer.inspect.plot import plot_data
    from tamer.inspect.report import render

    db = Database(recorded_home / "tamer.db", create=False)
    markers = plot_data(db, RUN_ID)["markers"]
    assert any(m["step"] == 3 and m["kind"] == "cuda_oom" and "recovered in process" in m["label"] for m in markers)
    page = render(db, RUN_ID, 600, 400)
    assert "split in process" in page and "No failures" not in page


def test_the_plot_legend_names_a_split_and_no_escalation(recorded_home):
    """An in-process split is drawn and listed as a split, never as an escalation (no new plan started)."""
    from tamer.inspect.plot import figure, plot_data

    data = plot_data(Database(recorded_home / "tamer.db", create=False), RUN_ID)
    assert [m["kind"] for m in data["markers"] if m["step"] == 3] == ["cuda_oom", "split"]
    legend = [
        text.get_text()
        for axes in figure(data, 600, 400).axes
        if axes.get_legend()
        for text in axes.get_legend().get_texts()
    ]
    assert "micro-batch halved in process (no restart)" in legend and "escalation (new plan)" not in legend


def test_show_and_history_commands_count_it(recorded_home):
    """`tamer show` counts the failure and shows the split plan as settled; `tamer history` has its row."""
    runner = CliRunner()
    shown = runner.invoke(app, ["show", RUN_ID, "--home", str(recorded_home)])
    assert shown.exit_code == 0, shown.output
    assert "1 failure (1 recovered in process)" in shown.output
    assert "settled plan (attempt 1): micro-batch 4 x 2" in shown.output
    listed = runner.invoke(app, ["history", "--home", str(recorded_home)])
    assert listed.exit_code == 0, listed.output
    assert "+split_micro_batch in process" in listed.output and "1 failure (1 recovered in process)" in listed.output
