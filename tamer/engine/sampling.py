"""The data order: a pure function of (seed, sample position), so a cursor in samples is the whole
data state.

Sample `g` (0-based, counted across epochs) is `permutation(epoch)[g % n]` with `epoch = g // n`.
Optimizer step `k` (1-based) trains samples `[(k-1)*E, k*E)` for effective batch E, however they are
cut into micro-batches: a micro-batch change keeps the order, a resume from a cursor continues it.
"""

from __future__ import annotations

import random
from functools import lru_cache


class SampleOrder:
    def __init__(self, num_examples: int, seed: int) -> None:
        if num_examples < 1:
            raise ValueError("no training examples")
        self.num_examples = num_examples
        self.seed = seed

    @lru_cache(maxsize=4)
    def permutation(self, epoch: int) -> tuple[int, ...]:
        order = list(range(self.num_examples))
        random.Random(f"tamer-order-{self.seed}-{epoch}").shuffle(order)
        return tuple(order)

    def indices(self, start: int, count: int) -> list[int]:
        """Example indices of samples `start .. start+count-1`."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_examples)
            out.append(self.permutation(epoch)[offset])
        return out

    def epoch_of(self, position: int) -> int:
        return position // self.num_examples
