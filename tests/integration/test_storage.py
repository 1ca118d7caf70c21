"""A real full disk and a real file-size limit under a real tiny run: told as what they are, never retried as crashes.

The full disk is a small tmpfs holding the home (mounted here; skipped where this machine may not mount), grown
while the supervisor waits; the file-size limit is RLIMIT_FSIZE (`ulimit -f`) on the whole `tamer run`."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from tests.integration.runs import TINY, attempts, env, events, query, run_id_of, start, tamer, wait_for

RUN = ["run", "squad", *TINY, "--max-steps", "6", "--set", "checkpoint_every=3", "--set", "max_seq_len=64"]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (too small for the tiny model's first save), unmounted after the test."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_at_start_waits_for_space_then_trains_without_a_crash(small_disk):
    """The first attempt dies on the full disk: outcome disk_full, an event saying how much is free and what is
    needed, no retry while the disk stays full; once it grows the same plan restarts and the run finishes, with
    no crash, no `.tmp` left and no restart counted."""
    home = small_disk / "home"
    process, run_id = start(*RUN, "--set", "disk_full_wait=300", home=home)
    wait_for(
        home,
        "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'disk_full'",
        (run_id,),
        lambda rows: rows[0][0] >= 1,
    )
    time.sleep(3)  # the supervisor keeps waiting: no second attempt into a full disk
    assert [a["outcome"] for a in attempts(home, run_id)] == ["disk_full"]
    subprocess.run(["mount", "-o", "remount,size=400M", str(small_disk)], check=True)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert [a["outcome"] for a in attempts(home, run_id)] == ["disk_full", "done"]
    told = dict(events(home, run_id))
    assert (
        "disk full:" in told["disk_full"]
        and "waiting up to 300 s" in told["disk_full"]
        and f"tamer stop {run_id}" in told["disk_full"]
    )
    assert "free again" in told["disk_space"]
    assert "disk full" in stderr
    assert not list((home / "runs" / run_id).rglob("*.tmp*"))
    assert query(
        home,
        "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'restart' AND message LIKE '%restart 1 of%'",
        (run_id,),
    ) == [(0,)]


def test_a_full_disk_that_stays_full_fails_the_run_with_what_to_do(small_disk):
    """With disk_full_wait 0 the run ends `failed` at once, exit 7, its reason naming the free space and `tamer resume`."""
    home = small_disk / "home"
    result = tamer(*RUN, "--set", "disk_full_wait=0", home=home, timeout=300)
    run_id = run_id_of(result)
    assert result.returncode == 7, result.stderr
    assert [a["outcome"] for a in attempts(home, run_id)] == ["disk_full"]
    reason = query(home, "SELECT failure_reason FROM runs WHERE id = ?", (run_id,))[0][0]
    assert "free where the run writes" in reason and f"tamer resume {run_id}" in reason


def test_a_full_disk_at_the_final_checkpoint_resumes_once_and_finishes(tmp_path):
    """ENOSPC on the final checkpoint (injected; the disk has room) is a disk_full attempt followed by one restart
    on the same plan from the last checkpoint, not a crash retried twice."""
    home = tmp_path / "home"
    result = tamer(*RUN, "--inject", "enospc:phase=checkpoint,step=6,attempt=1", home=home, timeout=300)
    run_id = run_id_of(result)
    assert result.returncode == 0, result.stderr
    assert [a["outcome"] for a in attempts(home, run_id)] == ["disk_full", "done"]
    kinds = [kind for kind, _ in events(home, run_id)]
    assert kinds.count("checkpoint_failed") == 1 and "crash" not in str(attempts(home, run_id))


def test_a_file_size_limit_ends_the_run_at_once_naming_ulimit(tmp_path):
    """Under `ulimit -f` smaller than the model the run fails after one attempt, exit 7, saying 'ulimit -f'."""
    home = tmp_path / "home"

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))

    result = subprocess.run(
        [sys.executable, "-m", "tamer", *RUN, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env(),
        preexec_fn=limit_files,
    )
    run_id = run_id_of(result)
    assert result.returncode == 7, result.stderr
    assert [a["outcome"] for a in attempts(home, run_id)] == ["file_too_large"]
    assert "ulimit -f" in result.stderr and "Traceback" not in result.stderr


def test_a_read_only_home_can_be_inspected_but_not_written(tmp_path):
    """A finished night on a disk mounted read-only: runs, show, status, logs, sql, history and compare work;
    a new run is refused with one line (exit 5) naming the home."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200M", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        home = mount_point / "home"
        finished = tamer("run", "squad", *TINY, "--max-steps", "2", "--set", "max_seq_len=64", home=home, timeout=300)
        assert finished.returncode == 0, finished.stderr
        run_id = run_id_of(finished)
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        for command in (
            ["runs"],
            ["show", run_id],
            ["status", run_id],
            ["logs", run_id],
            ["history"],
            ["compare", run_id],
            ["sql", "SELECT count(*) FROM steps"],
            ["runs", "--json"],
        ):
            result = tamer(*command, home=home)
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout.strip() and "error" not in result.stderr, (command, result.stdout)
        refused = tamer("run", "squad", *TINY, home=home)
        assert refused.returncode == 5 and "not writable" in refused.stderr and refused.stderr.count("\n") == 1
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
