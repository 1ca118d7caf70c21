"""On a CUDA GPU: the supervisor's card reading (NVML, no CUDA in the reader) sees another process take
memory and give it back, which is what de-escalation decides from (run on the lent GPU machine: `pytest -m gpu`).
The whole story (escalate under a real second process, step back when it leaves) is bench/squeeze.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tamer.daemon.card import read_card, settled_card

GIB = 1024**3
HOLD = """
import sys, time, torch
block = torch.empty(3 * 1024**3, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("holding", flush=True)
sys.stdin.readline()
"""


@pytest.mark.gpu
def test_card_reading_sees_another_process_come_and_go():
    """A second process holding 3 GiB raises the card's used memory by at least that; once it exits, the settled reading drops back."""
    before = read_card()
    assert before is not None and before.total > 0 and 0 < before.free <= before.total
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        during = read_card()
        assert during.used - before.used >= 3 * GIB
        listed = {process.pid: process.used for process in during.processes}
        if listed:  # some containers list no processes: the memory figures are what the policy relies on
            assert any(used and used >= 3 * GIB for used in listed.values())
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    time.sleep(0.2)
    after = settled_card()
    assert after.used - before.used < GIB
