"""The recipe interface: what the training loop needs from a task, the recipes, and the examples cache.

A recipe turns the run's config into a tokenizer and tokenized train and validation examples, counts the
tokens the loss scores in an example, and may score the model its own way between steps. The loop
(tamer/engine/trainer.py) sees only `Recipe`; a task is a class and an entry in RECIPES under the config's
`recipe` name, with no change to the loop: `SquadRecipe`, and `DataRecipe` for chat, instruct and text
(their torch-free pipeline, tamer/recipes/prepare.py, is the one preflight ran). Examples are token ids and
labels (IGNORE_INDEX where not scored); tamer/engine/batching.py pads or packs them into micro-batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import torch

from tamer.config import DATA_KEYS, RunConfig
from tamer.engine import result
from tamer.engine.attempt import Attempt
from tamer.recipes import prepare, squad, tokens
from tamer.recipes.examples import scored_tokens

log = structlog.get_logger("tamer.child")


class Example(Protocol):
    """One tokenized training sequence, as batching reads it."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Examples:
    """A recipe's tokenized data, and what the `data` event says about it."""

    train: list[Any]
    evaluation: list[Any]
    summary: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


class Recipe(Protocol):
    """What the training loop needs from a task."""

    score_every: int | None
    """Score the model with `score` every this many steps during training (None: never in the loop)."""

    def load_tokenizer(self) -> Any:
        """The tokenizer, with a pad token."""

    def build_examples(self, tokenizer: Any) -> Examples:
        """Tokenized train and validation examples (the trainer caches them in the run folder)."""

    def supervised_tokens(self, example: Any) -> int:
        """How many of `example`'s tokens the loss scores (the step's loss is normalised by their sum)."""

    def score(self, attempt: Attempt, model: Any, tokenizer: Any) -> None:
        """The task's own quality score of `model` (the one being trained), recorded in the database."""


class SquadRecipe:
    """SQuAD: prompt (context, question), answer-only labels; scored by generation (EM and F1)."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.score_every = config.eval.squad_every

    def load_tokenizer(self) -> Any:
        config = self.config
        return squad.load_tokenizer(
            config.tokenizer if config.tokenizer else ("bundled" if config.init == "random" else None), config.model
        )

    def build_examples(self, tokenizer: Any) -> Examples:
        config = self.config
        train_records, eval_records = squad.load_train_and_eval(config.data, config.eval_samples, config.seed)
        train, train_stats = squad.build_examples(train_records, tokenizer, config.max_seq_len)
        evaluation, eval_stats = squad.build_examples(eval_records, tokenizer, config.max_seq_len)
        summary = (
            f"{len(train)} training and {len(evaluation)} validation examples; "
            f"{train_stats['truncated']} truncated, {train_stats['skipped_too_long']} skipped as too long"
        )
        return Examples(train, evaluation, summary, {"train": train_stats, "eval": eval_stats})

    def supervised_tokens(self, example: Any) -> int:
        return squad.answer_token_count(example)

    def score(self, attempt: Attempt, model: Any, tokenizer: Any) -> None:
        result.evaluate_during_training(attempt, model, tokenizer)


class DataRecipe:
    """chat, instruct and text: the user's rows through tamer/recipes/prepare.py; validation loss only in the loop
    (EM/F1 of replies, `eval.em_f1`, runs after the run in tamer/engine/result.py)."""

    score_every = None

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    def load_tokenizer(self) -> Any:
        """transformers' tokenizer of the same files (its pad token pads batches); examples use prepare's own."""
        return squad.load_tokenizer(tokens.tokenizer_source(self.config), self.config.model)

    def build_examples(self, tokenizer: Any) -> Examples:
        prepared = prepare.prepare(self.config)
        return Examples(
            prepared.train,
            prepared.evaluation,
            prepared.summary,
            {**prepared.detail, "profile": prepared.profile.to_dict()},
        )

    def supervised_tokens(self, example: Any) -> int:
        return scored_tokens(example)

    def score(self, attempt: Attempt, model: Any, tokenizer: Any) -> None:
        raise NotImplementedError("score_every is None: the data recipes are not scored during training")


RECIPES: dict[str, Callable[[RunConfig], Recipe]] = {
    "squad": SquadRecipe,
    **{name: DataRecipe for name in prepare.DATA_RECIPES},
}


def recipe_for(config: RunConfig) -> Recipe:
    """The recipe the config names."""
    return RECIPES[config.recipe](config)


def cached_examples(
    recipe: Recipe, tokenizer: Any, config: RunConfig, run_dir: Path, event: Callable[..., None]
) -> tuple[list[Any], list[Any]]:
    """Tokenized train and eval examples, cached in the run folder so restarts skip tokenizing; `event`
    reports a fresh build (the `data` event)."""
    inputs = [config.data, config.tokenizer, config.model, config.max_seq_len, config.eval_samples, config.seed]
    if config.recipe != "squad":  # what else decides a data recipe's examples (squad's key stays as it was)
        inputs += [config.recipe, *(getattr(config, name) for name in DATA_KEYS)]
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    cache = run_dir / f"examples-{key}.pt"
    if cache.is_file():
        try:
            data = torch.load(cache, weights_only=False)
            return data["train"], data["eval"]
        except Exception as error:  # a torn cache is rebuilt, never trusted
            log.warning("examples_cache_unreadable", error=str(error))
    examples = recipe.build_examples(tokenizer)
    event("data", examples.summary, **examples.detail)
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    try:
        torch.save({"train": examples.train, "eval": examples.evaluation}, tmp)
        os.replace(tmp, cache)
    finally:  # a full disk leaves nothing half-written behind
        tmp.unlink(missing_ok=True)
    return examples.train, examples.evaluation
