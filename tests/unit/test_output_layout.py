"""The one table layout of tamer/output.py, without a command around it: side by side when the columns
fit, the leading columns plus a `header: value` detail line per row when they do not, blocks when not
even the first column fits; values whole, free text wrapped at spaces, headers never broken inside a
word, nothing cut with `…`. Also the width it fits (COLUMNS, a terminal's, none when piped) and `say`."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tamer import output
from tests.output_widths import problems

RUN_A, RUN_B = "squad-20261206-144051-8108", "squad-20261206-144131-4843"
RUNS_HEADERS = ("id", "recipe", "status", "steps", "started", "duration", "final loss", "EM", "F1")
PATH = "/home/someone/experiments/tamer-home/runs/squad-20261206-144051-8108/export/model.safetensors"


def runs_table() -> output.Table:
    table = output.table(*RUNS_HEADERS, title="runs")
    table.add_row(RUN_A, "squad", "done", "12/12", "2026-12-06 14:40:51", "0:00:16", "9.8705", "0.412", "0.538")
    table.add_row(RUN_B, "squad", "queued", "0/?", "-", "-", "-", "-", "-")
    return table


def lines(table: output.Table, width: int) -> list[str]:
    return [line.plain for line in output.lay_out(table, width)]


def test_a_table_that_fits_is_one_line_per_row():
    """At 120 columns the runs table is a title, one header line, a rule and one line per run, every value on its row."""
    shown = lines(runs_table(), 120)
    assert len(shown) == 5 and shown[0] == "runs"
    assert shown[1].split() == ["id", "recipe", "status", "steps", "started", "duration", "final", "loss", "EM", "F1"]
    assert shown[3].split() == [
        RUN_A,
        "squad",
        "done",
        "12/12",
        "2026-12-06",
        "14:40:51",
        "0:00:16",
        "9.8705",
        "0.412",
        "0.538",
    ]
    assert problems("\n".join(shown), 120, RUNS_HEADERS) == []


def test_a_table_too_wide_keeps_the_leading_columns_and_a_detail_line_per_row():
    """At 80 columns the runs table keeps id .. duration side by side and prints final loss, EM and F1
    under each run as `header: value`, within 80 columns, nothing cut, no header broken."""
    shown = lines(runs_table(), 80)
    text = "\n".join(shown)
    assert problems(text, 80, RUNS_HEADERS) == []
    assert shown[1].split() == ["id", "recipe", "status", "steps", "started", "duration"]
    assert shown[3].split()[0] == RUN_A and shown[4] == "  final loss: 9.8705  EM: 0.412  F1: 0.538"
    assert shown[5].split()[0] == RUN_B and shown[6] == "  final loss: -  EM: -  F1: -"


def test_a_header_wraps_at_its_space_never_inside_a_word():
    """A value column narrower than its two-word header shows the header on two lines, each word whole."""
    table = output.table("id", "tried to allocate")
    table.add_row("x" * 60, "2.0 GiB")
    shown = lines(table, 70)
    assert [line.split() for line in shown[:2]] == [["tried", "to"], ["id", "allocate"]]
    assert problems("\n".join(shown), 70, ("id", "tried to allocate")) == []


def test_free_text_wraps_at_spaces_and_values_stay_on_one_line():
    """A prose column (plan) wraps between words; the value columns beside it keep each value on one line."""
    table = output.table("attempt", "started", "plan")
    plan = "micro-batch 8 x 1, fp32 weights, bf16 autocast, checkpointing, paged_adamw_8bit, expandable segments"
    table.add_row("1", "2026-12-06 14:40:51", plan)
    shown = lines(table, 70)
    assert problems("\n".join(shown), 70, ("attempt", "started", "plan")) == []
    assert shown[2].split()[:3] == ["1", "2026-12-06", "14:40:51"] and len(shown) > 3
    column = shown[0].index("plan")
    assert " ".join(line[column:].strip() for line in shown[2:]) == plan  # every word whole, in order


def test_when_not_even_the_first_column_fits_each_row_is_a_block():
    """At 20 columns every run is a block of `header: value` lines, blocks apart by a blank line; a value
    wider than the width (the run id) is alone on its line, whole."""
    shown = lines(runs_table(), 20)
    text = "\n".join(shown)
    assert problems(text, 20, RUNS_HEADERS) == []
    assert shown[1:3] == ["  id:", f"    {RUN_A}"] and "" in shown
    assert "  status: done" in shown and "  status: queued" in shown


def test_a_long_path_in_a_detail_line_stands_alone_and_whole():
    """A path longer than the width goes on a line of its own, unbroken; the words around it wrap."""
    table = output.table("time", "event", "message")
    table.add_row("14:41:12", "export", f"exported step 12 to {PATH} (bf16, 7.8 MB)")
    shown = lines(table, 60)
    assert problems("\n".join(shown), 60, ("time", "event", "message")) == []
    assert f"    {PATH}" in shown


@pytest.mark.parametrize("width", range(20, 130, 7))
def test_no_width_cuts_or_overflows(width):
    """For every width from 20 to 127 columns the runs table fits, cuts nothing and breaks no header."""
    assert problems("\n".join(lines(runs_table(), width)), width, RUNS_HEADERS) == []


def test_wrap_breaks_only_at_spaces():
    """wrap keeps the spacing inside a line, breaks between words and gives a too-long word its own line."""
    assert output.wrap("a  b c", 10) == ["a  b c"]
    assert output.wrap(f"last checkpoint {PATH} ok", 30, indent="  ") == ["last checkpoint", f"  {PATH}", "  ok"]
    assert output.wrap("one\ntwo three", 5) == ["one", "two", "three"]


def test_the_width_to_fit(monkeypatch):
    """COLUMNS when set (piped too); else a terminal's width; piped without COLUMNS, none."""
    terminal = Console(file=io.StringIO(), force_terminal=True, width=132)
    piped = Console(file=io.StringIO(), force_terminal=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert output.fit_width(terminal) == 132 and output.fit_width(piped) is None
    monkeypatch.setenv("COLUMNS", "90")
    assert output.fit_width(terminal) == 90 and output.fit_width(piped) == 90


def test_print_table_piped_without_columns_lays_out_for_the_piped_width(monkeypatch):
    """Piped without COLUMNS a table is laid out PIPED_TABLE_WIDTH wide: the runs table on one line per run."""
    monkeypatch.delenv("COLUMNS", raising=False)
    buffer = io.StringIO()
    output.print_table(Console(file=buffer, force_terminal=False), runs_table())
    assert [line for line in buffer.getvalue().splitlines() if line.startswith("squad-")][0].split()[-3:] == [
        "9.8705",
        "0.412",
        "0.538",
    ]


def test_say_wraps_at_spaces_and_keeps_a_path_whole(monkeypatch):
    """say fits the width with words whole (a path alone on its line), styles kept off the text, brackets in
    the text printed as written (never read as markup), and one whole line when piped without COLUMNS."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    monkeypatch.setenv("COLUMNS", "40")
    output.say(console, output.styled("final loss", "bold", f" 9.8705  last checkpoint {PATH}"))
    assert buffer.getvalue().splitlines() == ["final loss 9.8705  last checkpoint", PATH]
    buffer.truncate(0), buffer.seek(0)
    output.say(console, "reason: [enforce fail at x.cpp:1] no memory")
    assert buffer.getvalue().splitlines() == ["reason: [enforce fail at x.cpp:1] no", "memory"]
    monkeypatch.delenv("COLUMNS")
    buffer.truncate(0), buffer.seek(0)
    output.say(console, f"final loss 9.8705  last checkpoint {PATH}")
    assert buffer.getvalue() == f"final loss 9.8705  last checkpoint {PATH}\n"
