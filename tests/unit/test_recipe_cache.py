"""The examples cache behind the recipe interface: any recipe's tokenized examples are built once per run
folder, reused by later attempts, and rebuilt when the cache file is torn."""

from __future__ import annotations

from dataclasses import dataclass

from tamer.config import RunConfig
from tamer.engine.recipe import Examples, cached_examples


@dataclass
class Sequence:
    input_ids: list[int]
    labels: list[int]


class CountingRecipe:
    """A second recipe, as small as the interface allows: fixed sequences, every label scored."""

    score_every = None

    def __init__(self) -> None:
        self.builds = 0

    def load_tokenizer(self) -> None:
        return None

    def build_examples(self, tokenizer: object) -> Examples:
        self.builds += 1
        return Examples(
            [Sequence([1, 2, 3], [1, 2, 3])],
            [Sequence([4, 5], [4, 5])],
            "1 training and 1 validation example",
            {"n": 1},
        )

    def supervised_tokens(self, example: Sequence) -> int:
        return len(example.labels) - 1

    def score(self, trainer: object) -> None:
        raise AssertionError("never scored: score_every is None")


def test_examples_are_built_once_and_reused(tmp_path):
    """The first attempt builds and reports the examples; the next reads them from the run folder."""
    recipe, events = CountingRecipe(), []
    first = cached_examples(
        recipe, None, RunConfig(), tmp_path, lambda kind, message, **detail: events.append((kind, message, detail))
    )
    second = cached_examples(recipe, None, RunConfig(), tmp_path, lambda *args, **detail: events.append(args))
    assert recipe.builds == 1 and first == second and first[0][0].input_ids == [1, 2, 3]
    assert events == [("data", "1 training and 1 validation example", {"n": 1})]


def test_a_torn_cache_is_rebuilt(tmp_path):
    """A cache file that does not load is never trusted: the examples are built again."""
    recipe = CountingRecipe()
    cached_examples(recipe, None, RunConfig(), tmp_path, lambda *args, **detail: None)
    (cache,) = tmp_path.glob("examples-*.pt")
    cache.write_bytes(b"torn")
    train, evaluation = cached_examples(recipe, None, RunConfig(), tmp_path, lambda *args, **detail: None)
    assert recipe.builds == 2 and evaluation[0].input_ids == [4, 5]
