"""Checkpoints on disk: atomic save, verification, newest valid, pruning.

    checkpoints/step-N.tmp/  <- the writer fills it; every file fsynced
    manifest.json            <- written last: a digest of every file, step, cursor, plan, config hash
    checkpoints/step-N/      <- one rename, then the folder is fsynced

A checkpoint counts only if its manifest parses and every file's digest matches: a torn write, a
truncated file or a flipped bit makes it invisible, and resume falls back to the previous one. The
newest `keep` valid checkpoints are kept (>= 2, so a bad newest one always has a predecessor).

Digests are xxh3-128 (format 2), computed while the bytes are written (`HashingFile`), so a save never
reads its gigabytes back; files the writer did not hash itself (small config files) are read once.
Format 1 manifests (sha256, read back after writing) still verify.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
HASH = "xxh3_128"
BLOCK = 1 << 22


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


def new_hasher(name: str = HASH) -> Any:
    """A streaming hasher: xxh3-128 (fast, catches any torn write or flipped bit) or sha256 (format 1)."""
    if name == "sha256":
        return hashlib.sha256()
    if name == HASH:
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown checkpoint hash {name}")


def hash_file(path: Path, name: str = HASH) -> str:
    digest = new_hasher(name)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashingFile(io.RawIOBase):
    """A write-only file that hashes every byte it writes and fsyncs on close: `digest` is then the
    file's xxh3-128, with no read back. torch.save and the safetensors writer write through it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._handle = open(path, "wb", buffering=0)
        self._hasher = new_hasher()
        self.digest: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while written < len(view):  # a raw write may be short; the hash must cover exactly what landed
            count = self._handle.write(view[written:])
            self._hasher.update(view[written : written + count])
            written += count
        return written

    def close(self) -> None:
        if not self.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self.digest = self._hasher.hexdigest()
        super().close()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def hash_folder(folder: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """The digest of every file under `folder` (manifest excluded), by relative path; fsyncs each one.
    `known`: digests the writer took while writing (those files are not read back)."""
    known = known or {}
    hashes = {}
    for file in _files(folder):
        name = str(file.relative_to(folder))
        fsync_path(file)
        hashes[name] = known[name] if name in known else hash_file(file)
    for directory in sorted({p.parent for p in _files(folder)} | {folder}):
        fsync_path(directory)
    return hashes


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` through a temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save(
    run_dir: Path, step: int, write_files: Callable[[Path], dict[str, str] | None], manifest: dict[str, Any], keep: int
) -> Checkpoint:
    """Write checkpoint `step` atomically: `write_files(folder)` fills a temporary folder (and may return
    the digests it took while writing, by relative path), then the manifest is written last and the
    folder renamed into place. On any error the temporary folder is removed and the previous
    checkpoints are untouched."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f"step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        known = write_files(tmp)
        full_manifest = dict(
            manifest, step=step, format=FORMAT_VERSION, hash=HASH, created_at=time.time(), files=hash_folder(tmp, known)
        )
        write_json_atomic(tmp / MANIFEST, full_manifest)
        if final.exists():  # the same step written again after a restart: swap, never a moment with neither
            old = root / f"step-{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(run_dir, keep)
    return Checkpoint(final, full_manifest)


def read_manifest(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) if the checkpoint at `path` has a readable manifest (its files unchecked), else (None, why not)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no manifest (write did not finish)"
    except (OSError, ValueError) as error:
        return None, f"manifest unreadable: {error}"
    if manifest.get("format") not in READABLE_FORMATS or "files" not in manifest:
        return None, "manifest of an unknown format"
    return manifest, None


def verify(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) if the checkpoint at `path` is intact, else (None, why not)."""
    manifest, problem = read_manifest(path)
    if manifest is None:
        return None, problem
    algorithm = "sha256" if manifest["format"] == 1 else manifest.get("hash", HASH)
    expected = manifest["files"]
    present = {str(p.relative_to(path)) for p in _files(path)}
    missing = set(expected) - present
    if missing:
        return None, f"missing files: {', '.join(sorted(missing))}"
    for name, digest in expected.items():
        if hash_file(path / name, algorithm) != digest:
            return None, f"{algorithm} mismatch in {name}"
    return manifest, None


def _candidates(run_dir: Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith("step-") and path.name[5:].isdigit():
            found.append(path)
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def newest_valid(run_dir: Path, below: int | None = None) -> tuple[Checkpoint | None, list[tuple[str, str]]]:
    """The newest checkpoint that verifies (of steps below `below`, when given), and the (name, reason)
    of newer ones skipped."""
    skipped = []
    for path in _candidates(run_dir):
        if below is not None and int(path.name[5:]) >= below:
            continue
        manifest, problem = verify(path)
        if manifest is not None:
            return Checkpoint(path, manifest), skipped
        skipped.append((path.name, problem or "invalid"))
    return None, skipped


def newest_complete(run_dir: Path) -> tuple[Checkpoint | None, list[tuple[str, str]]]:
    """The newest checkpoint with a readable manifest, its files not yet verified (resume verifies
    them while the model loads), and the (name, reason) of newer ones skipped."""
    skipped = []
    for path in _candidates(run_dir):
        manifest, problem = read_manifest(path)
        if manifest is not None:
            return Checkpoint(path, manifest), skipped
        skipped.append((path.name, problem or "invalid"))
    return None, skipped


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints (manifest present; hashing every file of a large
    model on each save would cost seconds, and load verifies anyway); drop older ones, incomplete ones
    older than the newest complete one, and leftover temporary folders."""
    root = checkpoint_dir(run_dir)
    for leftover in root.glob("step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
    kept = 0
    for path in _candidates(run_dir):
        if (path / MANIFEST).is_file() and kept < keep:
            kept += 1
            continue
        if kept > 0:
            shutil.rmtree(path, ignore_errors=True)
