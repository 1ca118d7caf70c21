"""Strict schemas: sizes parsed once and stored as written, stored structures refused with unknown keys
instead of silently dropped, one size parser, and one pid lock."""

from __future__ import annotations

import json
import os

import pytest

from tamer.config import build_config, config_from_dict
from tamer.errors import ConfigError, LockedError
from tamer.outcome import Outcome, parse_oom_message
from tamer.plan import DeviceFacts, Plan
from tamer.state.lock import PidLock, lock_holder
from tamer.units import ByteSize


def test_sizes_are_bytes_in_the_config_and_spelt_as_written_in_its_dict():
    """gpu_mem_cap is a number of bytes after validation; to_dict and the stored config keep `15GiB`."""
    config = build_config("tiny", options={"gpu_mem_cap": "15GiB", "host_mem_cap": "512MiB"})
    assert config.gpu_mem_cap == 15 * 2**30 and config.host_mem_cap == 512 * 2**20
    assert config.deescalate.min_squeeze == 2**30
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["gpu_mem_cap"] == "15GiB" and stored["deescalate"]["min_squeeze"] == "1GiB"
    again = config_from_dict(stored)
    assert again == config and again.config_hash() == config.config_hash()


def test_config_hash_ignores_what_it_always_ignored():
    """Caps, restarts and the planner do not change the hash; the learning rate does."""
    base = build_config("tiny")
    assert (
        build_config("tiny", options={"gpu_mem_cap": "4GiB"}, sets=["planner.allow_lora=false"]).config_hash()
        == base.config_hash()
    )
    assert build_config("tiny", sets=["learning_rate=1e-4"]).config_hash() != base.config_hash()


def test_a_bad_size_names_its_key():
    """A size that does not parse is a ConfigError naming the nested key."""
    with pytest.raises(ConfigError, match="deescalate.min_squeeze: 'lots' is not a size"):
        build_config("tiny", sets=["deescalate.min_squeeze=lots"])


@pytest.mark.parametrize(
    "structure",
    [
        Plan(micro_batch_size=2, grad_accumulation=4, eval_batch_size=8, rungs=("lora",)),
        DeviceFacts(kind="cuda", name="H100", total_memory=80 * 2**30, compute_capability=(9, 0)),
        Outcome(kind="cuda_oom", message="out of memory", sizes={"free": 3}),
    ],
)
def test_stored_structures_round_trip_and_refuse_unknown_keys(structure):
    """Plan, DeviceFacts and Outcome read back from JSON equal; an unknown key is an error, not dropped."""
    data = json.loads(json.dumps(structure.to_dict()))
    assert type(structure).from_dict(data) == structure
    with pytest.raises(ConfigError, match="surplus: unknown key"):
        type(structure).from_dict({**data, "surplus": 1})


def test_oom_sizes_use_the_one_size_parser():
    """CUDA's `1.50 GiB` and `512 bytes` parse through units.parse_size, rounded to the byte."""
    sizes = parse_oom_message("Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 512 bytes")
    assert sizes == {"tried_to_allocate": 3 * 2**29, "total_capacity": 512}
    assert ByteSize("1.5G") == 3 * 2**29 and str(ByteSize("1.5G")) == "1.5G"


def test_one_pid_lock_for_runs_and_the_daemon(tmp_path):
    """A held lock names its holder's pid in the refusal; released, it is free again."""
    path = tmp_path / "lock"
    first = PidLock(path, "held by pid {holder}")
    first.acquire()
    assert lock_holder(path) == os.getpid()
    with pytest.raises(LockedError, match=f"held by pid {os.getpid()}"):
        PidLock(path, "held by pid {holder}").acquire()
    first.release()
    assert lock_holder(path) is None
