"""bench/squeeze.py finds the attempt that trains the squeezed plan however the OOM was answered."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "squeeze.py"


def _bench(tmp_path, events, steps):
    spec = importlib.util.spec_from_file_location("bench_squeeze", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    squeeze = module.Squeeze(argparse.Namespace(device="cuda", out=tmp_path))
    squeeze.events = lambda: [(0.0, attempt, kind, "", "{}") for attempt, kind in events]
    squeeze.steps_of = lambda attempt: steps.get(attempt, 0)
    return squeeze


def test_an_escalation_means_the_next_attempt_once_it_trains(tmp_path):
    events = [(1, "attempt_start"), (2, "attempt_start"), (2, "escalate")]
    assert _bench(tmp_path, events, {1: 20, 2: 0}).escalated_attempt() is None
    assert _bench(tmp_path, events, {1: 20, 3: 1}).escalated_attempt() == 3


def test_an_in_process_split_means_the_same_attempt(tmp_path):
    """On an H200 the squeezed restart halved its micro-batch in process and went on: no new attempt."""
    events = [(1, "attempt_start"), (2, "attempt_start"), (2, "in_process_split"), (2, "squeeze")]
    assert _bench(tmp_path, events, {1: 20, 2: 2}).escalated_attempt() == 2
    assert _bench(tmp_path, [(1, "attempt_start")], {1: 20}).escalated_attempt() is None
