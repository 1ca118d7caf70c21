"""The data order: a pure function of (seed, sample position), so a cursor in samples is the whole
data state.

Sample `g` (0-based, counted across epochs) is `permutation(epoch)[g % n]` with `epoch = g // n`.
Optimizer step `k` (1-based) trains samples `[(k-1)*E, k*E)` for effective batch E, however they are
cut into micro-batches: a micro-batch change keeps the order, a resume from a cursor continues it.
`LengthGroupedOrder` (the `bucket` and `packed` batching modes) regroups that order by length within
windows of steps, and stays a pure function of (seed, position).
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

    @lru_cache(maxsize=4)  # noqa: B019 (one order per attempt, alive as long as the cache)
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


class LengthGroupedOrder(SampleOrder):
    """The order of `SampleOrder`, regrouped by length within windows of `window_steps` optimizer steps,
    so each step holds samples of similar length (few, tight padded or packed shapes).

    Window `w` holds the positions `[w*W*E, (w+1)*W*E)` (E samples per step, W steps per window). Each
    epoch's part of a window (a window may straddle an epoch boundary) keeps its own samples: they are
    sorted by length (ties by position) and cut into the steps that lie wholly inside that part, in
    length order, and those steps are shuffled with a seed of (seed, w); a step that straddles the epoch
    boundary takes the rest. So every sample is still trained once per epoch, a window trains exactly the
    samples it would have trained in the plain order, and sample `g` stays a pure function of (seed, g).
    """

    def __init__(self, num_examples: int, seed: int, lengths: list[int], step_size: int, window_steps: int) -> None:
        super().__init__(num_examples, seed)
        if len(lengths) != num_examples or step_size < 1 or window_steps < 1:
            raise ValueError("lengths must cover every example; step_size and window_steps must be >= 1")
        self.lengths = lengths
        self.step_size = step_size
        self.window_steps = window_steps

    @lru_cache(maxsize=4)  # noqa: B019 (one order per attempt, alive as long as the cache)
    def window(self, index: int) -> tuple[int, ...]:
        size, step = self.step_size * self.window_steps, self.step_size
        start = index * size
        plain = super().indices(start, size)
        shuffler = random.Random(f"tamer-window-{self.seed}-{index}")
        out: list[int] = []
        low = 0
        while low < size:  # one part per epoch the window touches
            high = min(size, (self.epoch_of(start + low) + 1) * self.num_examples - start)
            ranked = sorted(plain[low:high], key=lambda example: self.lengths[example])
            first_step, end_step = -(-low // step), high // step  # the steps wholly inside [low, high)
            head = first_step * step - low if first_step < end_step else 0
            whole = max(0, end_step - first_step)
            middle = [ranked[head + k * step : head + (k + 1) * step] for k in range(whole)]
            shuffler.shuffle(middle)
            out += ranked[:head] + [example for chunk in middle for example in chunk] + ranked[head + whole * step :]
            low = high
        return tuple(out)

    def indices(self, start: int, count: int) -> list[int]:
        size = self.step_size * self.window_steps
        return [self.window(position // size)[position % size] for position in range(start, start + count)]
