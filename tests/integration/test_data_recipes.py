"""`tamer run chat|instruct|text` for real on the tiny preset and the bundled samples: offline runs that record
what a squad run records, a chat run killed and resumed to bit-identical weights and the same samples, an
injected OOM recovered on the same samples, and a chat export that renders with the template it trained with."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.runs import (
    TINY,
    attempts,
    events,
    final_weights,
    kill_child_at_step,
    query,
    run_id_of,
    sample_ids,
    start,
    tamer,
)

STEPS = 12
CHAT = [
    "run",
    "chat",
    *TINY,
    "--max-steps",
    str(STEPS),
    "--set",
    "checkpoint_every=4",
    "--set",
    "kill_backoff=0",
    "--set",
    "eval_samples=24",
]


@pytest.fixture(scope="module")
def chat_baseline(tmp_path_factory):
    """One uninterrupted chat run with the post-run child: EM/F1 of the replies and the export."""
    home = tmp_path_factory.mktemp("chat")
    result = tamer(
        *CHAT, "--set", "export.enabled=true", "--set", "eval.em_f1=true", "--set", "eval.squad_samples=8", home=home
    )
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    return {"home": home, "run_id": run_id, "weights": final_weights(home, run_id), "samples": sample_ids(home, run_id)}


@pytest.mark.parametrize("recipe", ["instruct", "text"])
def test_instruct_and_text_train_offline_on_their_samples(tmp_path, recipe):
    """The bundled sample trains with no network; the run records its data, its profile and a validation loss,
    and every step row its useful and computed tokens."""
    result = tamer("run", recipe, *TINY, "--max-steps", "3", home=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    assert run_id.startswith(f"{recipe}-")
    kinds = dict(events(tmp_path, run_id))
    assert "validation examples" in kinds["data"] and "tokens per example on average" in kinds["created"]
    steps = query(
        tmp_path, "SELECT useful_tokens, computed_tokens FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
    )
    assert len(steps) == 3 and all(0 < useful <= computed for useful, computed in steps)
    assert query(tmp_path, "SELECT count(*) FROM evals WHERE run_id = ? AND step = 3", (run_id,)) == [(1,)]
    spec = json.loads((tmp_path / "runs" / run_id / "run.json").read_text())
    assert spec["config"]["recipe"] == recipe and spec["data_profile"]["examples"] > 0
    if recipe == "text":  # no replies to keep: refused in one line before the model loads, nothing written
        kept = tamer("eval", run_id, "--predictions", str(tmp_path / "replies.json"), home=tmp_path)
        assert kept.returncode == 2 and "text recipe" in kept.stderr and kept.stderr.count("\n") == 1, kept.stderr
        assert not (tmp_path / "replies.json").exists()


def test_a_chat_run_records_its_data_scores_its_replies_and_exports_its_template(chat_baseline):
    """The chat baseline: ChatML set by the tiny preset, rows skipped and counted, step rows with useful and
    computed tokens, EM/F1 of replies stored, and an export whose tokenizer renders as training rendered."""
    from transformers import AutoTokenizer

    from tamer.recipes.chat_templates import CHATML, ChatTemplate

    home, run_id = chat_baseline["home"], chat_baseline["run_id"]
    kinds = dict(events(home, run_id))
    assert "skipped as too long" in kinds["data"] and "squad_eval" in kinds and "export" in kinds
    config = json.loads(query(home, "SELECT config_json FROM runs WHERE id = ?", (run_id,))[0][0])
    assert config["chat_template"] == "chatml" and config["recipe"] == "chat"
    ((useful, computed),) = query(
        home, "SELECT sum(useful_tokens), sum(computed_tokens) FROM steps WHERE run_id = ?", (run_id,)
    )
    assert 0 < useful <= computed
    assert {metric for (metric,) in query(home, "SELECT metric FROM squad_scores WHERE run_id = ?", (run_id,))} == {
        "exact_match",
        "f1",
    }
    export = home / "runs" / run_id / "export"
    messages = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "Here."}]
    rendered = AutoTokenizer.from_pretrained(export).apply_chat_template(messages, tokenize=False)
    assert rendered == ChatTemplate(CHATML, "chatml").render(messages)


def test_a_chat_run_killed_mid_way_resumes_bit_identically(chat_baseline, tmp_path):
    """SIGKILL of the child at step 6: the run resumes from its checkpoint and ends with the uninterrupted run's
    weights, bit for bit, and the same samples in the same order."""
    process, run_id = start(*CHAT, home=tmp_path)
    kill_child_at_step(tmp_path, run_id, 1, 6)
    assert process.wait(timeout=300) == 0, process.stderr.read()
    rows = attempts(tmp_path, run_id)
    assert rows[0]["outcome"] == "outside_kill" and rows[-1]["outcome"] == "done" and rows[1]["resumed_from_step"] == 4
    weights = final_weights(tmp_path, run_id)
    assert weights.keys() == chat_baseline["weights"].keys()
    for name, tensor in chat_baseline["weights"].items():
        assert torch.equal(weights[name], tensor), f"{name} differs from the uninterrupted chat run"
    assert sample_ids(tmp_path, run_id) == chat_baseline["samples"]


def test_an_oom_in_a_chat_run_escalates_and_keeps_the_samples(chat_baseline, tmp_path):
    """An injected CUDA OOM in backward at step 5: the ladder applies its next rung, the run resumes from step 4 and
    trains the uninterrupted run's samples in the same order."""
    result = tamer(*CHAT, "--inject", "oom:step=5,phase=backward,attempt=1", home=tmp_path)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    rows = attempts(tmp_path, run_id)
    assert [row["outcome"] for row in rows] == ["cuda_oom", "done"] and rows[1]["resumed_from_step"] == 4
    assert "escalate" in dict(events(tmp_path, run_id))
    assert sample_ids(tmp_path, run_id) == chat_baseline["samples"]


def test_tamer_eval_and_compare_on_a_chat_run(chat_baseline):
    """`tamer eval` of a chat run gives the validation loss training recorded for that step (same rows, same model) and,
    with --predictions (which implies --em-f1), EM/F1 of the replies and every reply named by its row's id, scored as
    the means say; `tamer compare` shows its validation loss."""
    home, run_id = chat_baseline["home"], chat_baseline["run_id"]
    result = tamer("eval", run_id, "--limit", "4", "--predictions", str(home / "out") + "/", "--json", home=home)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    ((recorded,),) = query(home, "SELECT eval_loss FROM evals WHERE run_id = ? AND step = ?", (run_id, STEPS))
    assert abs(scores["eval_loss"] - recorded) < 1e-4 and scores["questions"] == 4 and 0 <= scores["f1"] <= 1
    assert "validation" in dict(events(home, run_id))
    compared = json.loads(tamer("compare", run_id, "--json", home=home).stdout)
    assert compared[0]["final_eval_loss"] == recorded
    document = json.loads((home / "out" / f"{run_id}.predictions.json").read_text())
    rows = document["predictions"]
    assert scores["predictions_file"] == str(home / "out" / f"{run_id}.predictions.json")
    assert len(rows) == 4 == document["questions"] and len({row["id"] for row in rows}) == 4
    assert abs(sum(row["f1"] for row in rows) / 4 - scores["f1"]) < 1e-6 and document["step"] == STEPS
