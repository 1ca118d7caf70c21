"""The token lengths of a run's training examples, which the planner sizes its plans on.

Measured once, in preflight, where the examples are built (tamer/recipes/prepare.py), and kept in the run
folder's run.json (`data_profile`), where the supervisor and the calibration of later runs read it:

    profile = DataProfile.of(examples)
    read(run_dir)                     # the profile of a run, or None (a squad run: the planner uses SQuAD's figures)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tamer.recipes.examples import Example, scored_tokens


@dataclass(frozen=True)
class DataProfile:
    """How long the training examples are, in tokens, and how many of their tokens the loss scores."""

    examples: int
    mean_tokens: float
    max_tokens: int
    mean_scored: float
    max_scored: int

    @classmethod
    def of(cls, examples: list[Example]) -> DataProfile:
        lengths = [len(example.input_ids) for example in examples] or [0]
        scored = [scored_tokens(example) for example in examples] or [0]
        return cls(len(examples), sum(lengths) / len(lengths), max(lengths), sum(scored) / len(scored), max(scored))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataProfile:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def describe(self) -> str:
        return (
            f"{self.mean_tokens:.0f} tokens per example on average (longest {self.max_tokens:,}), "
            f"{self.mean_scored:.0f} scored (most {self.max_scored:,})"
        )


def read(run_dir: Path) -> DataProfile | None:
    """The profile recorded in `run_dir`/run.json when the run was created; None when there is none."""
    try:
        data = json.loads((run_dir / "run.json").read_text()).get("data_profile")
    except (OSError, ValueError):
        return None
    try:
        return DataProfile.from_dict(data) if isinstance(data, dict) else None
    except (KeyError, TypeError):
        return None
