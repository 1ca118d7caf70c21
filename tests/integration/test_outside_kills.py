"""Kills from outside tamer are not crash loops: a child SIGKILLed again and again while it loads is
restarted until the run finishes, and `tamer history`/`show` say it was an outside kill and how long tamer waited."""

from __future__ import annotations

import json

from tests.integration.runs import TINY, attempts, query, run_id_of, tamer

BASE = ["run", "squad", *TINY, "--set", "restart_backoff=0", "--set", "checkpoint_every=2"]


def test_three_kills_during_load_do_not_fail_the_run(tmp_path):
    """Three SIGKILLs during model loading (more than crash_loop_limit=2 and max_restarts=1 allow for crashes)
    are restarted with the outside-kill backoff, and the run finishes on its own."""
    kills = [f"kill:phase=load,attempt={attempt}" for attempt in (1, 2, 3)]
    result = tamer(
        *BASE,
        "--max-steps",
        "3",
        "--set",
        "crash_loop_limit=2",
        "--set",
        "max_restarts=1",
        "--set",
        "kill_backoff=0.2",
        "--set",
        "kill_backoff_max=0.5",
        *[item for kill in kills for item in ("--inject", kill)],
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(tmp_path, run_id)
    assert [row["outcome"] for row in rows] == ["outside_kill"] * 3 + ["done"]
    waits = [
        json.loads(detail)["wait_seconds"]
        for (detail,) in query(
            tmp_path, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'restart' ORDER BY id", (run_id,)
        )
    ]
    assert waits == [0.2, 0.4, 0.5]  # doubling, capped by kill_backoff_max
    assert query(tmp_path, "SELECT status FROM runs WHERE id = ?", (run_id,)) == [("done",)]

    history = tamer("history", "--run", run_id, "--json", home=tmp_path)
    failures = json.loads(history.stdout)
    assert [(f["outcome"], f["restart_cause"], f["waited_seconds"]) for f in failures] == [
        ("outside_kill", "outside kill", 0.2),
        ("outside_kill", "outside kill", 0.4),
        ("outside_kill", "outside kill", 0.5),
    ]
    shown = tamer("history", "--run", run_id, home=tmp_path).stdout
    assert "outside kill" in shown and "waited 0.4 s" in shown
    story = json.loads(tamer("show", run_id, "--json", home=tmp_path).stdout)["timeline"]
    assert story["attempts"][2]["outcome"] == "outside_kill" and story["attempts"][2]["reason"].endswith(
        "after waiting 0.4 s"
    )


def test_code_crashes_still_stop_at_the_crash_loop_guard(tmp_path):
    """Negative control: the same three failures as exceptions in our code end the run `failed` by the crash-loop guard."""
    crashes = [f"crash:phase=load,attempt={attempt}" for attempt in (1, 2, 3)]
    result = tamer(
        *BASE,
        "--max-steps",
        "3",
        "--set",
        "crash_loop_limit=2",
        *[item for crash in crashes for item in ("--inject", crash)],
        home=tmp_path,
    )
    assert result.returncode == 1
    run_id = run_id_of(result)
    assert [row["outcome"] for row in attempts(tmp_path, run_id)] == ["crash", "crash"]
    status, reason = query(tmp_path, "SELECT status, failure_reason FROM runs WHERE id = ?", (run_id,))[0]
    assert status == "failed" and reason.startswith("crash loop")
