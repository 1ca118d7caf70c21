"""The torch thread count is decided once per run, shared by a node's processes, and an explicit one wins."""

from __future__ import annotations

import os

import pytest

from tamer.config import build_config
from tamer.errors import ConfigError


def test_threads_are_the_available_cpus_shared_by_the_processes_of_a_node():
    """null becomes the CPUs this process may use divided by the processes per node, at least 1."""
    available = len(os.sched_getaffinity(0))
    assert build_config("tiny").with_threads_fixed().torch_threads == available
    two = build_config("tiny", sets=["distributed.nproc_per_node=2"]).with_threads_fixed()
    assert two.torch_threads == max(1, available // 2)


def test_an_explicit_thread_count_is_kept():
    """`torch_threads: 3` stays 3 whatever the machine."""
    assert build_config("tiny", sets=["torch_threads=3"]).with_threads_fixed().torch_threads == 3


def test_a_thread_count_below_one_is_refused():
    """0 threads is a config error naming the key."""
    with pytest.raises(ConfigError, match="torch_threads"):
        build_config("tiny", sets=["torch_threads=0"])
