"""With nothing held out (eval_samples: 0) the trainer records no evaluation: a 0 loss over 0 tokens
would read as a perfect model in `tamer show` and the plot."""

from __future__ import annotations

from types import SimpleNamespace

from tamer.engine.trainer import Trainer


class Report:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def test_no_held_out_examples_means_no_eval_row():
    report = Report()
    trainer = SimpleNamespace(eval_examples=[], report=report)
    assert Trainer.evaluate(trainer) is None
    assert report.calls == []
