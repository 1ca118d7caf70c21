"""TAMER_HOME (default ~/.tamer): `tamer.db` and `runs/<run-id>/`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tamer.errors import StateError

# Kernel pseudo-filesystems: files there are not storage.
PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"), Path("/dev"))
FIX = "pass --home or set TAMER_HOME to a writable folder"


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, override: str | Path | None = None, *, writable: bool = True) -> Home:
        """`--home` if given, else $TAMER_HOME, else ~/.tamer; a StateError if it cannot hold a home. `writable=False`:
        only to be read (runs, show, sql, ...), which a read-only home allows."""
        root = Path(override or os.environ.get("TAMER_HOME") or Path.home() / ".tamer").expanduser().resolve()
        _check_usable(root, writable)
        return cls(root)

    @property
    def db_path(self) -> Path:
        return self.root / "tamer.db"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id


def _check_usable(root: Path, writable: bool = True) -> None:
    """A home must be (or be creatable as) a writable folder on real storage."""
    for pseudo in PSEUDO_FILESYSTEMS:
        if root == pseudo or pseudo in root.parents:
            raise StateError(f"home {root}: under {pseudo}, a kernel pseudo-filesystem, not storage; {FIX}")
    existing = next(path for path in (root, *root.parents) if path.exists())
    if not existing.is_dir():
        what = "is a file" if existing == root else f"would be inside {existing}, a file"
        raise StateError(f"home {root}: {what}, not a folder; {FIX}")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == root else f" (its nearest existing folder {existing})"
        raise StateError(f"home {root}{where}: not writable by this user; {FIX}")
