"""Where tamer writes what a user asks for (`-o` of export, plot and report), without ever losing a file.

    path = output_file(option, default_name="RUN.png", what="plot", signature=PNG_SIGNATURE)
    (also `tamer eval --predictions`: RUN.predictions.json, PREDICTIONS_SIGNATURE)
    write_file_atomic(path, data)             # PATH.tmp-PID, then one rename; the tmp is gone on failure
    folder = export_folder(option, owned=False, force=False)   # refused unless new, empty or a tamer export

Rules (the same for every command):
- `-o` names a file or a folder: a folder (existing, or given with a trailing `/`) gets the default
  file name inside it; missing parent folders are created.
- tamer replaces only what it wrote itself: a file it made carries a signature (a PNG text chunk, an
  HTML meta tag, a JSON file's first key), an export folder a marker file (EXPORT_MARKER). Anything
  else in the way is refused, unless `--force` says to overwrite that one file (`tamer eval
  --predictions` has no --force); a folder holding other files is never replaced.
- Every OS error (read-only place, no permission, disk full, a file where a folder should be) is one
  line naming the path and what to do: OutputError (exit 7), or ConfigError for a wrong kind of path.
No torch, no tamer imports above the ground floor: both the CLI and the export child use it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tamer.errors import ConfigError, OutputError

EXPORT_MARKER = ".tamer-export.json"
"""In an export folder: which run and step tamer exported there (a later export may replace it)."""
PNG_SIGNATURE = b"tamer plot"
"""Written into the PNG's Software text chunk by `tamer plot`."""
HTML_SIGNATURE = b'<meta name="generator" content="tamer report">'
"""The first lines of a page `tamer report` wrote."""
PREDICTIONS_SIGNATURE = b'"tamer": "eval predictions"'
"""The first key of the JSON file `tamer eval --predictions` wrote."""


def os_problem(error: OSError, path: Path, doing: str) -> OutputError:
    """One line for an OS error while `doing` (e.g. 'write the plot') at `path`, with what to do."""
    code = error.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "the disk is full; free some space or write elsewhere"
    elif code == errno.EFBIG:
        advice = "the file is larger than this process may write (ulimit -f); raise the limit or write elsewhere"
    elif code in (errno.EACCES, errno.EPERM):
        advice = "no permission; choose a folder you can write to"
    elif code == errno.EROFS:
        advice = "the file system is read-only; choose a writable place"
    elif code == errno.ENOTDIR:
        advice = "a part of the path is a file, not a folder; choose another path"
    elif code == errno.EISDIR:
        advice = "it is a folder; give a file name"
    else:
        advice = "choose another path"
    reason = error.strerror or type(error).__name__
    return OutputError(f"{path}: could not {doing} ({reason}); {advice}")


def _is_folder_request(option: Path | str, path: Path) -> bool:
    return path.is_dir() or str(option).endswith(os.sep)


def output_file(
    option: Path | str | None,
    default_name: str,
    what: str,
    signature: bytes,
    force: bool | None = False,
    flag: str = "-o",
) -> Path:
    """The file to write for `-o option` (None: `default_name` here); parents created. Refused (ConfigError)
    when a file is there that tamer did not write (no `signature` in its first 64 KiB), unless `force` (None:
    the command has no --force). `flag` names the option in errors."""
    path = Path(default_name) if option is None else Path(option).expanduser()
    if option is not None and _is_folder_request(option, path):
        path = path / default_name
    path = path.absolute()
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder with the {what}'s name; give another file name")
    if path.exists() and not force and not _signed(path, signature):
        remedy = "give another name" if force is None else "give another name, or add --force to replace it"
        raise ConfigError(f"{flag} {path}: a file tamer did not write is there; tamer never overwrites it: {remedy}")
    _make_parents(path, flag)
    return path


def _make_parents(path: Path, flag: str = "-o") -> None:
    """Create the folders above `path`, or say in one line why they cannot be."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            f"{flag} {path}: {_first_file(path.parent)} is a file, not a folder; choose another path"
        ) from None
    except OSError as error:
        raise os_problem(error, path.parent, "create the folder") from None


def _first_file(folder: Path) -> Path:
    """The first component of `folder` that exists and is not a folder."""
    for parent in reversed((folder, *folder.parents)):
        if parent.exists() and not parent.is_dir():
            return parent
    return folder


def _signed(path: Path, signature: bytes) -> bool:
    try:
        with path.open("rb") as file:
            return signature in file.read(65536)
    except OSError:
        return False


def write_file_atomic(path: Path, data: bytes, doing: str) -> None:
    """`data` to `path` through `path.tmp-PID` and one rename; the tmp file never outlives a failure."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise os_problem(error, path, doing) from None
    finally:
        tmp.unlink(missing_ok=True)


def export_folder(option: Path, owned: bool, force: bool) -> Path:
    """The export folder for `option`, checked before any work: new, empty, or an earlier tamer export.

    `owned`: the default folder inside the run folder, which tamer alone writes (replaced freely). A user's
    folder that holds an earlier tamer export (EXPORT_MARKER) is replaced only with `force`; a folder with
    anything else in it is never written into."""
    path = Path(option).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path}: is a file; give a folder path (new, or empty) for the model")
    if path.is_dir():
        try:
            entries = [entry.name for entry in path.iterdir()]
        except OSError as error:
            raise os_problem(error, path, "read the folder") from None
        if entries:
            earlier = read_marker(path)
            if earlier is None:
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise ConfigError(
                    f"-o {path}: the folder is not empty ({shown}) and is not a tamer export; tamer never "
                    "writes into it: give a new or empty folder"
                )
            if not (owned or force):
                raise ConfigError(
                    f"-o {path}: holds an earlier tamer export (run {earlier.get('run_id')} step "
                    f"{earlier.get('step')}); add --force to replace it, or give another folder"
                )
    _make_parents(path)
    if not os.access(path.parent, os.W_OK):
        raise OutputError(
            f"{path.parent}: cannot write there (no permission or a read-only file system); "
            "choose a writable place for -o"
        )
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a tamer export folder, or None when `folder` is not one."""
    try:
        data = json.loads((folder / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        return _legacy_export(folder)
    return data if isinstance(data, dict) else None


def _legacy_export(folder: Path) -> dict[str, Any] | None:
    """An export written before the marker existed (tamer 0.1.0): its model card opens `# RUN_ID: MODEL
    fine-tuned on SQuAD by tamer`."""
    try:
        with (folder / "README.md").open(encoding="utf-8") as file:
            first = file.readline()
    except (OSError, UnicodeDecodeError):
        return None
    if first.startswith("# ") and first.rstrip().endswith("by tamer") and ": " in first:
        return {"run_id": first[2:].split(": ", 1)[0], "step": "?"}
    return None


def replace_folder(tmp: Path, destination: Path) -> None:
    """Move the finished folder `tmp` to `destination`, replacing only an earlier tamer export or an empty
    folder there (export_folder checked it; checked again here, since time has passed)."""
    old = None
    if destination.is_dir() and any(destination.iterdir()):
        if read_marker(destination) is None:
            raise ConfigError(
                f"-o {destination}: files appeared in the folder during the export; tamer never "
                "writes into a folder it did not create: give a new or empty folder"
            )
        old = destination.with_name(f"{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
    try:
        os.replace(tmp, destination)
    except OSError:
        if old is not None:
            os.replace(old, destination)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
