"""Where the chat, instruct and text recipes read their rows: a local file or folder, a hub dataset, or a
bundled sample; which columns hold what; and which rows validate.

    rows = load_rows("support.jsonl", "chat", split="train", option="--data")    # through `datasets`
    rows = load_rows("hub:tatsu-lab/alpaca", "instruct", split="train", option="--data")
    train, held_out = hold_out(len(rows.rows), eval_samples=64, validation_split=None, seed=0, label=rows.label)

SOURCE is a `.jsonl` / `.json` / `.parquet` / `.csv` file (or `.txt`, one document per file, for text), a
folder of such files (one format per folder), `hub:NAME[:SUBSET]` (a hub dataset, `split` picks the split),
or `bundled` (the recipe's sample shipped with tamer, tamer/recipes/data/SOURCES.md). Files are read with
`datasets.load_dataset` (json, parquet, csv, text), which keeps an Arrow copy in its cache
(HF_DATASETS_CACHE). Problems a user can fix are one-line DataErrors: no such file, bytes that are not
UTF-8 (with the line), a line that is not JSON, a folder mixing formats, a hub name that does not exist, a
split or subset it does not have, a column that is not there (with the columns and the closest name).
"""

from __future__ import annotations

import codecs
import difflib
import json
import os
import random
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from tamer.errors import DataError
from tamer.hub import HUB_SOURCE as HUB_PREFIX

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}
TEXT_FORMATS = (".jsonl", ".json", ".csv", ".txt")
"""Formats read as text: checked for UTF-8 before datasets reads them."""
BUNDLED = {
    recipe: Path(str(files("tamer.recipes") / "data" / f"{recipe}_sample.jsonl"))
    for recipe in ("chat", "instruct", "text")
}
"""The sample each recipe trains on with `data: bundled` (the tiny preset's default)."""


@dataclass
class Rows:
    """The rows of a source as plain dicts, its column names, and how errors name it."""

    rows: list[dict[str, Any]]
    columns: list[str]
    label: str
    """`data FILE`, `eval_data hub:NAME`: the start of every error about these rows."""


def hub_name(source: str) -> tuple[str, str | None] | None:
    """(name, subset) of a `hub:NAME[:SUBSET]` source; None for anything else."""
    if not source.startswith(HUB_PREFIX):
        return None
    name, _, subset = source[len(HUB_PREFIX) :].partition(":")
    return name, subset or None


def load_rows(source: str, recipe: str, split: str, option: str) -> Rows:
    """Every row of `source` (see the module docstring); `option` names the setting in errors (`data`, `eval_data`)."""
    label = f"{option} {source}"
    hub = hub_name(source)
    if hub is not None:
        if not hub[0] or hub[0].count("/") > 1:
            raise DataError(f"{label}: expected hub:NAME or hub:NAME:SUBSET (e.g. hub:tatsu-lab/alpaca)")
        return _from_hub(hub[0], hub[1], split, label)
    path = BUNDLED[recipe] if source == "bundled" else Path(source).expanduser()
    return _from_files(_data_files(path, recipe, label), label)


def _data_files(path: Path, recipe: str, label: str) -> list[Path]:
    """The files of a file or folder source, all of one format this recipe reads."""
    if path.is_dir():
        found = sorted(
            file
            for file in path.rglob("*")
            if file.is_file()
            and file.suffix.lower() in BUILDERS
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
        if not found:
            raise DataError(f"{label}: the folder has no {', '.join(BUILDERS)} files")
        suffixes = sorted({file.suffix.lower() for file in found})
        if len({BUILDERS[suffix] for suffix in suffixes}) > 1:
            raise DataError(f"{label}: the folder mixes {' and '.join(suffixes)} files; keep one format per folder")
    elif path.is_file():
        found = [path]
    else:
        raise DataError(
            f"{label}: no such file or folder; pass a .jsonl, .json, .parquet, .csv or .txt file, a folder, "
            "hub:NAME[:SUBSET], or bundled"
        )
    suffix = found[0].suffix.lower()
    if suffix not in BUILDERS:
        raise DataError(f"{label}: unknown format {suffix or '(no extension)'}; expected {', '.join(BUILDERS)}")
    if suffix == ".txt" and recipe != "text":
        raise DataError(
            f"{label}: .txt files are plain text, which `tamer run text` trains on; the {recipe} recipe reads "
            ".jsonl, .json, .parquet or .csv rows"
        )
    if suffix in TEXT_FORMATS:
        for file in found:
            check_utf8(file, label)
    return found


def check_utf8(path: Path, label: str) -> None:
    """A DataError naming the line of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line += chunk[: error.start].count(b"\n")
                raise DataError(
                    f"{label}: {path.name} is not UTF-8 text (byte 0x{chunk[error.start]:02x} on line {line}); "
                    "convert it, e.g. iconv -f latin1 -t utf-8"
                ) from None
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(
                f"{label}: {path.name} is not UTF-8 text (it ends inside a character); convert it to UTF-8"
            ) from None


def _quiet_datasets() -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    return datasets


def _from_files(paths: list[Path], label: str) -> Rows:
    datasets = _quiet_datasets()
    builder = BUILDERS[paths[0].suffix.lower()]
    extra = {"sample_by": "document"} if builder == "text" else {}
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(path) for path in paths], split="train", **extra)
    except Exception as error:  # datasets wraps the reader's error (pyarrow, pandas) in its own
        raise DataError(f"{label}: could not be read as {builder} ({_why_unreadable(paths, builder, error)})") from None
    rows = dataset.to_list()
    if builder == "text":  # one document per file: name each row after its file, from the folder given
        root = paths[0].parent if len(paths) == 1 else Path(os.path.commonpath([str(path) for path in paths]))
        for row, path in zip(rows, paths):
            row.setdefault("id", str(path.relative_to(root)))
    return Rows(rows, list(dataset.column_names), label)


def _why_unreadable(paths: list[Path], builder: str, error: BaseException) -> str:
    """The line that breaks a JSON file, else the innermost reason the reader gave."""
    if builder == "json":
        for path in paths:
            text = path.read_text(encoding="utf-8")
            try:
                json.loads(text)
                continue  # one JSON document (an array of rows): fine as a whole
            except ValueError:
                pass
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError as bad:
                        return f"{path.name} line {number} is not JSON: {str(bad).split(':')[0]}"
    causes = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    reason = next((str(c).strip().splitlines()[0] for c in reversed(causes) if str(c).strip()), type(error).__name__)
    return reason[:300]


def _from_hub(name: str, subset: str | None, split: str, label: str) -> Rows:
    datasets = _quiet_datasets()
    from datasets.exceptions import DatasetNotFoundError

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except DatasetNotFoundError:
        raise DataError(
            f"{label}: no dataset {name} on the hub (a private or gated one also needs HF_TOKEN); check the name, "
            "or pass a local file"
        ) from None
    except ConnectionError as error:
        raise DataError(
            f"{label}: could not reach the hub ({str(error).splitlines()[0][:200]}); pass a local file"
        ) from None
    except ValueError as error:  # an unknown split or subset: datasets lists the ones there are
        reason = str(error).strip().splitlines()[0][:300]
        what = f"split '{split}'" if "split" in reason.lower() else f"subset '{subset}'"
        raise DataError(f"{label}: {what}: {reason}") from None
    except OSError as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise DataError(f"{label}: could not be loaded ({reason}); pass a local file") from None
    return Rows(dataset.to_list(), list(dataset.column_names), label)


# ---------------------------------------------------------------------------------------------
# Columns


def did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def looks_like(rows: Rows, wanted: tuple[str, ...]) -> str:
    """`; column 'promt' looks like 'prompt'` for the first wanted name a column of the data nearly spells."""
    for name in wanted:
        close = difflib.get_close_matches(
            name, [column for column in rows.columns if column not in wanted], n=1, cutoff=0.6
        )
        if close:
            return f"; column '{close[0]}' looks like '{name}'"
    return ""


def missing_column(rows: Rows, column: str, key: str) -> DataError:
    """`column` is not in the data: name the columns there are and the closest one."""
    return DataError(
        f"{rows.label}: no column '{column}' (columns: {', '.join(rows.columns) or 'none'}){did_you_mean(column, rows.columns)}"
        f"; name yours with columns: {{{key}: COLUMN}}"
    )


def mapped_columns(
    rows: Rows, columns: dict[str, str] | None, keys: tuple[str, ...], required: tuple[str, ...]
) -> dict[str, str] | None:
    """The `columns` mapping checked against this recipe's keys and the data's columns; None when not set."""
    if columns is None:
        return None
    for key in columns:
        if key not in keys:
            raise DataError(
                f"columns: unknown key '{key}' for this recipe; its keys: {', '.join(keys)}{did_you_mean(key, list(keys))}"
            )
    for key in required:
        if key not in columns:
            raise DataError(f"columns: missing '{key}' (this recipe needs {', '.join(required)}); add {key}: COLUMN")
    for key, column in columns.items():
        if column not in rows.columns:
            raise missing_column(rows, column, key)
    return dict(columns)


def row_id(row: dict[str, Any], position: int) -> str:
    """A row's `id` column when it has one, else `row N` (its position in the source, from 0)."""
    value = row.get("id")
    return (
        str(value)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value)
        else f"row {position}"
    )


def row_name(identifier: str) -> str:
    """How errors name a record: `row 12`, or `row 'abc-1'` for a row with an `id` column."""
    return identifier if identifier.startswith("row ") else f"row {identifier!r}"


def answers_value(value: Any, where: str) -> tuple[str, ...]:
    """The non-empty reference answers of an `answers` cell (a list of texts; None: none), which EM/F1 scores against."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"{where}: 'answers' must be a list of texts")
    return tuple(item for item in value if item.strip())


def text_value(value: Any) -> str | None:
    """A cell as text: strings as they are, numbers written out (a CSV column of numbers), None for a missing
    cell; anything else (a list, an object) is not text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


# ---------------------------------------------------------------------------------------------
# Validation rows


def hold_out(
    count: int, eval_samples: int, validation_split: float | None, seed: int, label: str
) -> tuple[list[int], list[int]]:
    """(train positions, validation positions) of `count` rows: a `validation_split` fraction (rounded) or
    `eval_samples` rows, the first of a permutation seeded by `seed` alone, so every attempt and resume holds
    out the same rows; training rows keep their order (the trainer shuffles them itself)."""
    if validation_split is not None:
        held = round(count * validation_split)
        if not 1 <= held < count:
            raise DataError(
                f"validation_split: {validation_split} of the {count} rows of {label} is {held} rows; "
                "pick a fraction that holds out at least one row and leaves at least one to train on"
            )
    else:
        held = eval_samples
        if not 0 <= held < count:
            raise DataError(
                f"eval_samples: {held} must be less than the {count} rows of {label}; lower eval_samples, "
                "or set validation_split (a fraction) or --eval-data"
            )
    order = list(range(count))
    random.Random(seed).shuffle(order)
    chosen = set(order[:held])
    return [position for position in range(count) if position not in chosen], order[:held]
