"""TAMER_HOME (default ~/.tamer): `tamer.db` and `runs/<run-id>/`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, override: str | Path | None = None) -> Home:
        """`--home` if given, else $TAMER_HOME, else ~/.tamer."""
        root = override or os.environ.get("TAMER_HOME") or Path.home() / ".tamer"
        return cls(Path(root).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "tamer.db"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id
