"""The torch thread count is decided once per run, shared by a node's processes, and an explicit one wins."""

from __future__ import annotations

import os

import pytest

from tamer.config import build_config
from tamer.errors import ConfigError


@pytest.mark.parametrize(
    "cpus, processes, threads", [(1, 1, 1), (2, 1, 1), (16, 1, 15), (16, 2, 7), (2, 2, 1), (3, 2, 1)]
)
def test_threads_are_the_cpus_shared_by_a_nodes_processes_less_one_for_the_writer(
    monkeypatch, cpus, processes, threads
):
    """null becomes the CPUs this process may use divided by the processes per node, less one left to the checkpoint
    writer when that leaves at least one (2 cores: 1 thread), never below 1."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    fixed = build_config(
        "tiny", sets=[f"distributed.nproc_per_node={processes}", "effective_batch_size=8"]
    ).with_threads_fixed()
    assert fixed.torch_threads == threads


def test_an_explicit_thread_count_is_kept():
    """`torch_threads: 3` stays 3 whatever the machine."""
    assert build_config("tiny", sets=["torch_threads=3"]).with_threads_fixed().torch_threads == 3


def test_a_thread_count_below_one_is_refused():
    """0 threads is a config error naming the key."""
    with pytest.raises(ConfigError, match="torch_threads"):
        build_config("tiny", sets=["torch_threads=0"])
