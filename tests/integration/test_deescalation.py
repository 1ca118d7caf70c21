"""De-escalation end to end on the tiny preset with a fake card (TAMER_FAKE_CARD): another job holds the
card at an OOM, tamer escalates; the job leaves, tamer steps back to the first plan at a step boundary."""

from __future__ import annotations

import json
import time

from tests.integration.runs import TINY, attempts, query, start, tamer, wait_for

GIB = 1024**3
BASE = [
    "run",
    "squad",
    *TINY,
    "--set",
    "restart_backoff=0",
    "--set",
    "checkpoint_every=2",
    "--set",
    "deescalate.poll_seconds=0.3",
    "--set",
    "ladder.order=[gradient_checkpointing]",
]
SQUEEZED = {"total": "40GiB", "free": "2GiB", "processes": [{"pid": 4242, "used": "38GiB", "name": "other job"}]}
EMPTY = {"total": "40GiB", "free": "39.5GiB", "processes": []}


def _write(path, view) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(view))
    tmp.replace(path)


def test_steps_back_to_the_first_plan_when_the_other_job_leaves(tmp_path):
    """An OOM while another job holds 38 GiB escalates; while it stays, no step back; once it leaves, the
    child stops at a step boundary and the first plan resumes from that step; show/history list the step back."""
    fake = tmp_path / "card.json"
    _write(fake, SQUEEZED)
    home = tmp_path / "home"
    process, run_id = start(
        *BASE,
        "--max-steps",
        "20",
        "--inject",
        "oom:step=3,phase=forward,attempt=1",
        home=home,
        extra_env={"TAMER_FAKE_CARD": str(fake)},
    )
    wait_for(
        home,
        "SELECT max(step) FROM steps WHERE run_id = ? AND attempt = 2",
        (run_id,),
        lambda r: (r[0][0] or 0) >= 5,
        timeout=300,
    )
    time.sleep(1.0)  # a few polls while the other job still holds the card
    assert query(home, "SELECT count(*) FROM events WHERE run_id = ? AND kind = 'deescalate'", (run_id,)) == [(0,)]
    _write(fake, EMPTY)
    assert process.wait(timeout=600) == 0, process.stderr.read()

    rows = attempts(home, run_id)
    assert [row["outcome"] for row in rows] == ["cuda_oom", "stopped", "done"]
    plans = [json.loads(row["plan_json"]) for row in rows]
    assert "gradient_checkpointing" in plans[1]["rungs"] and plans[2] == plans[0]
    assert rows[2]["resumed_from_step"] == rows[1]["last_step"]  # the stop checkpointed: nothing redone
    assert rows[1]["message"].startswith("stopped by tamer to step back")
    assert query(home, "SELECT status, steps_done FROM runs WHERE id = ?", (run_id,)) == [("done", 20)]

    (escalation,) = [
        json.loads(d)
        for (d,) in query(home, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'escalate'", (run_id,))
    ]
    assert escalation["card"]["processes"][0]["pid"] == 4242 and escalation["squeeze"]["others"] == 38 * GIB
    (step_back,) = [
        json.loads(d)
        for (d,) in query(home, "SELECT detail_json FROM events WHERE run_id = ? AND kind = 'deescalate'", (run_id,))
    ]
    assert "gone: pid 4242" in step_back["reason"] and step_back["tokens_per_s_squeezed"] > 0

    story = json.loads(tamer("show", run_id, "--json", home=home).stdout)["timeline"]
    (listed,) = story["deescalations"]
    assert (listed["attempt"], listed["next_attempt"]) == (2, 3) and listed["gain"] > 0
    assert "steps back" in tamer("history", "--run", run_id, home=home).stdout
