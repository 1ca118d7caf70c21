"""Output paths (tamer/outputs.py): what `-o` of export, plot and report may write, and what it must never touch."""

from __future__ import annotations

import errno
import json
import os

import pytest

from tamer import outputs
from tamer.errors import ConfigError, OutputError


def test_export_into_a_folder_of_other_files_is_refused_and_keeps_them(tmp_path):
    """A non-empty folder that is not a tamer export is refused, with --force too; the user's file stays."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(ConfigError, match="not empty .*thesis.tex.* not a tamer export"):
            outputs.export_folder(folder, owned=False, force=force)
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_an_earlier_export_is_replaced_only_with_force_or_in_the_run_folder(tmp_path):
    """A folder with the export marker needs --force, unless it is the run folder's own export."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / outputs.EXPORT_MARKER).write_text(json.dumps({"run_id": "squad-1", "step": 12}))
    with pytest.raises(ConfigError, match="earlier tamer export \\(run squad-1 step 12\\); add --force"):
        outputs.export_folder(folder, owned=False, force=False)
    assert outputs.export_folder(folder, owned=False, force=True) == folder
    assert outputs.export_folder(folder, owned=True, force=False) == folder


def test_export_folder_creates_missing_parents_and_refuses_a_file(tmp_path):
    """Missing parents are created; an existing file, or a file in the parents, is a one-line ConfigError."""
    assert outputs.export_folder(tmp_path / "a" / "b" / "model", owned=False, force=False).parent.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder path"):
        outputs.export_folder(tmp_path / "file", owned=False, force=False)
    with pytest.raises(ConfigError, match="file is a file, not a folder"):
        outputs.export_folder(tmp_path / "file" / "model", owned=False, force=False)


def test_export_into_a_read_only_place_is_an_output_error(tmp_path, monkeypatch):
    """A parent tamer may not write to is an OutputError (exit 7) naming it (os.access stands in for a
    read-only mount, which root cannot be denied by permission bits)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputError) as raised:
        outputs.export_folder(tmp_path / "model", owned=False, force=False)
    assert raised.value.exit_code == 7 and f"{tmp_path}: cannot write there" in str(raised.value)
    read_only = outputs.os_problem(OSError(errno.EROFS, "Read-only file system"), tmp_path / "x", "write the plot")
    assert (
        str(read_only)
        == f"{tmp_path / 'x'}: could not write the plot (Read-only file system); the file system is read-only; choose a writable place"
    )


def test_replace_folder_swaps_an_earlier_export_and_refuses_files_that_appeared(tmp_path):
    """The finished folder replaces an earlier export; a folder that gained foreign files meanwhile is kept."""
    destination, tmp = tmp_path / "model", tmp_path / ".model.tmp"
    destination.mkdir()
    (destination / outputs.EXPORT_MARKER).write_text("{}")
    (destination / "old.bin").write_text("old")
    tmp.mkdir()
    (tmp / "new.bin").write_text("new")
    outputs.replace_folder(tmp, destination)
    assert sorted(p.name for p in destination.iterdir()) == ["new.bin"] and not tmp.exists()
    assert not list(tmp_path.glob("model.old-*"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    tmp.mkdir()
    with pytest.raises(ConfigError, match="files appeared"):
        outputs.replace_folder(tmp, foreign)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_a_legacy_export_is_recognised_by_its_model_card(tmp_path):
    """An export from before the marker is recognised by the first line of its model card, and nothing else is."""
    (tmp_path / "README.md").write_text("# squad-20261126-1: tiny-llama fine-tuned on SQuAD by tamer\n")
    assert outputs.read_marker(tmp_path)["run_id"] == "squad-20261126-1"
    (tmp_path / "README.md").write_text("# My project\n")
    assert outputs.read_marker(tmp_path) is None


def test_output_file_takes_a_folder_or_a_file_and_creates_parents(tmp_path):
    """-o of a folder puts the default name in it; a missing folder ending in / too; a file path creates its parents."""
    assert outputs.output_file(tmp_path, "run.png", "plot", outputs.PNG_SIGNATURE) == tmp_path / "run.png"
    made = outputs.output_file(tmp_path / "new" / "deeper", "run.png", "plot", outputs.PNG_SIGNATURE)
    assert made == tmp_path / "new" / "deeper" and made.parent.is_dir()
    slash = outputs.output_file(f"{tmp_path}/plots/", "run.png", "plot", outputs.PNG_SIGNATURE)
    assert slash == tmp_path / "plots" / "run.png" and slash.parent.is_dir()


def test_output_file_never_overwrites_a_file_tamer_did_not_write(tmp_path):
    """A foreign file at the path is refused without --force; a file with tamer's signature is replaced."""
    foreign, ours = tmp_path / "a.png", tmp_path / "b.png"
    foreign.write_bytes(b"\x89PNG someone else's picture")
    ours.write_bytes(b"\x89PNG...tEXtSoftware\x00" + outputs.PNG_SIGNATURE)
    with pytest.raises(ConfigError, match="a file tamer did not write is there.*--force"):
        outputs.output_file(foreign, "x.png", "plot", outputs.PNG_SIGNATURE)
    assert outputs.output_file(foreign, "x.png", "plot", outputs.PNG_SIGNATURE, force=True) == foreign
    assert outputs.output_file(ours, "x.png", "plot", outputs.PNG_SIGNATURE) == ours
    (tmp_path / "plots" / "run.png").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder with the plot's name"):
        outputs.output_file(tmp_path / "plots", "run.png", "plot", outputs.PNG_SIGNATURE)


def test_write_file_atomic_leaves_no_tmp_file_when_the_write_fails(tmp_path, monkeypatch):
    """A full disk during the write is one OutputError line, the old file unchanged, no tmp file left."""
    target = tmp_path / "report.html"
    target.write_text("earlier")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match="No space left on device.*the disk is full"):
        outputs.write_file_atomic(target, b"new page", "write the report")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert target.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    outputs.write_file_atomic(target, b"new page", "write the report")
    assert target.read_text() == "new page"
