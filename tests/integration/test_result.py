"""The result of a run on the tiny preset, with real processes: the export after a completed run
reloads with transformers to the trained checkpoint's logits and generates, a LoRA run exports merged
and as an adapter, scores are stored and shown, and a copy task is learned as `tamer eval` measures it."""

from __future__ import annotations

import json

import pytest
import torch

from tests.integration.runs import ONE_THREAD, query, run_id_of, tamer
from tests.integration.synthetic_qa import write_copy_task

WITH_RESULT = ["--preset", "tiny", *ONE_THREAD]  # runs.TINY leaves the result child out
SHORT = [
    "run",
    "squad",
    *WITH_RESULT,
    "--max-steps",
    "4",
    "--set",
    "checkpoint_every=4",
    "--set",
    "eval_samples=8",
    "--set",
    "max_seq_len=128",
    "--set",
    "eval.squad_samples=4",
    "--set",
    "eval.squad_max_new_tokens=4",
]
TEXT = "Context: The river runs north.\nQuestion: Which way does the river run?\nAnswer:"


def _finished(home, *extra):
    result = tamer(*SHORT, *extra, home=home)
    assert result.returncode == 0, result.stderr
    run_id = run_id_of(result)
    run_dir = home / "runs" / run_id
    return {"home": home, "run_id": run_id, "run_dir": run_dir, "result": result}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("result")


@pytest.fixture(scope="module")
def full_run(home):
    """A completed full fine-tune whose end-of-run export is fp32."""
    return _finished(home, "--set", "export.dtype=fp32")


@pytest.fixture(scope="module")
def lora_run(home):
    """A completed LoRA run (adapters from the first step)."""
    return _finished(home, "--set", "start_rungs=[lora]", "--set", "lora.r=4")


def _logits(model, tokenizer):
    batch = tokenizer([TEXT, "Context: a b c\nQuestion: d?\nAnswer:"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_export_after_run_reloads_to_the_checkpoint_logits_and_generates(full_run):
    """The automatic fp32 export gives the trained checkpoint's logits within 1e-5 and generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = full_run["run_dir"] / "export"
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (export / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(export)
    exported = AutoModelForCausalLM.from_pretrained(export).eval()
    trained = AutoModelForCausalLM.from_pretrained(full_run["run_dir"] / "checkpoints" / "step-4" / "model").eval()
    assert exported.dtype == torch.float32
    assert torch.allclose(_logits(exported, tokenizer), _logits(trained, tokenizer), atol=1e-5)
    prompt = tokenizer(TEXT, return_tensors="pt")
    generated = exported.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_exported_tokenizer_round_trips_like_the_training_one(full_run):
    """The exported tokenizer encodes as the bundled training tokenizer does and decodes back to the text."""
    from transformers import AutoTokenizer

    from tamer.recipes import squad

    exported = AutoTokenizer.from_pretrained(full_run["run_dir"] / "export")
    training = squad.load_tokenizer("bundled", "tiny-llama")
    text = "Où est la gare? 42 km — naïve café"
    assert exported(text)["input_ids"] == training(text)["input_ids"]
    assert exported.decode(exported(text)["input_ids"], skip_special_tokens=True) == text
    assert exported.eos_token_id == training.eos_token_id and exported.pad_token_id is not None


def test_scores_and_export_are_stored_and_shown(full_run):
    """The run ends with an EM/F1 line and the export path; show, runs --json and the table agree."""
    home, run_id = full_run["home"], full_run["run_id"]
    assert "SQuAD exact match" in full_run["result"].stderr and "model exported to" in full_run["result"].stderr
    metrics = query(
        home, "SELECT metric, questions, step, data FROM squad_scores WHERE run_id = ? ORDER BY metric", (run_id,)
    )
    assert metrics == [("exact_match", 4, 4, "held-out"), ("f1", 4, 4, "held-out")]
    shown = tamer("show", run_id, home=home)
    assert str(full_run["run_dir"] / "export") in shown.stdout.replace("\n", "")
    listed = {row["id"]: row for row in json.loads(tamer("runs", "--json", home=home).stdout)}
    assert listed[run_id]["squad"]["questions"] == 4
    card = (full_run["run_dir"] / "export" / "README.md").read_text()
    assert "tiny-llama" in card and "exact match" in card and "micro-batch" in card


def test_lora_export_merged_matches_the_unmerged_adapter(lora_run, tmp_path):
    """A LoRA checkpoint exported merged gives the base+adapter logits within 1e-3; as an adapter it
    names its base and loads through transformers to the same logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home, run_id, run_dir = lora_run["home"], lora_run["run_id"], lora_run["run_dir"]
    merged_dir, adapter_dir = tmp_path / "merged", tmp_path / "adapter"
    assert tamer("export", run_id, "-o", str(merged_dir), "--dtype", "fp32", home=home).returncode == 0
    result = tamer("export", run_id, "-o", str(adapter_dir), "--no-merge-lora", home=home)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((run_dir / "checkpoints" / "step-4" / "manifest.json").read_text())
    base = str((run_dir / manifest["base"]).resolve())
    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), str(run_dir / "checkpoints" / "step-4" / "adapter")
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    reference = _logits(unmerged, tokenizer)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not (merged_dir / "adapter_config.json").exists()
    assert torch.allclose(_logits(merged, tokenizer), reference, atol=1e-3)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    assert torch.allclose(
        _logits(AutoModelForCausalLM.from_pretrained(adapter_dir).eval(), tokenizer), reference, atol=1e-5
    )


def test_export_never_writes_into_a_folder_it_did_not_create(full_run, tmp_path):
    """Export into a folder of the user's files is refused (exit 2, one line) and keeps them, --force too; onto a
    file it is refused; nothing half-written is left beside either."""
    home, run_id = full_run["home"], full_run["run_id"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        result = tamer("export", run_id, "-o", str(mine), *extra, home=home)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "not a tamer export" in result.stderr
    assert [path.name for path in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    a_file = tmp_path / "model.bin"
    a_file.write_text("weights of mine")
    result = tamer("export", run_id, "-o", str(a_file), home=home)
    assert result.returncode == 2 and "is a file" in result.stderr and a_file.read_text() == "weights of mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine", "model.bin"]


def test_a_second_export_into_one_folder_needs_force(full_run, tmp_path):
    """Export creates missing parents and marks its folder; exporting there again is refused without --force
    and replaces the earlier export with it, leaving no temporary or old folder."""
    home, run_id = full_run["home"], full_run["run_id"]
    target = tmp_path / "new" / "model"
    assert tamer("export", run_id, "-o", str(target), home=home).returncode == 0
    assert json.loads((target / ".tamer-export.json").read_text())["run_id"] == run_id
    again = tamer("export", run_id, "-o", str(target), home=home)
    assert again.returncode == 2 and "earlier tamer export" in again.stderr and "--force" in again.stderr
    forced = tamer("export", run_id, "-o", str(target), "--force", "--dtype", "fp32", home=home)
    assert forced.returncode == 0, forced.stderr
    assert "fp32" in (target / "README.md").read_text()
    assert sorted(path.name for path in target.parent.iterdir()) == ["model"]


def test_compare_puts_plans_and_scores_side_by_side(full_run, lora_run):
    """compare --json has one row per run, in the order asked, with its settled plan, EM and F1."""
    result = tamer("compare", full_run["run_id"], lora_run["run_id"], "--json", home=full_run["home"])
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["run_id"] for row in rows] == [full_run["run_id"], lora_run["run_id"]]
    assert all(row["steps"] == 4 and row["exact_match"] is not None and row["f1"] is not None for row in rows)
    assert ["LoRA" in row["plan"] for row in rows] == [False, True]


def test_eval_keeps_every_reply_and_never_replaces_a_file_it_did_not_write(full_run, tmp_path):
    """--predictions FILE: one row per scored question (id, reply, gold answers, its EM and F1) whose means are the
    stored scores; a second --predictions replaces tamer's own file; a file of the user's there is refused in one
    line (exit 2) before any work, and left as it was."""
    home, run_id = full_run["home"], full_run["run_id"]
    target = tmp_path / "new" / "replies.json"
    result = tamer("eval", run_id, "--limit", "4", "--predictions", str(target), home=home)
    assert result.returncode == 0, result.stderr
    assert f"every reply: {target}" in result.stdout
    document = json.loads(target.read_text())
    rows = document["predictions"]
    assert document["tamer"] == "eval predictions" and document["run_id"] == run_id and document["step"] == 4
    assert len(rows) == 4 and all(set(row) == {"id", "answer", "gold", "exact_match", "f1"} for row in rows)
    assert sum(row["exact_match"] for row in rows) / 4 == document["exact_match"]
    stored = query(
        home,
        "SELECT value FROM squad_scores WHERE run_id = ? AND metric = 'f1' ORDER BY id DESC LIMIT 1",
        (run_id,),
    )
    assert abs(sum(row["f1"] for row in rows) / 4 - stored[0][0]) < 1e-6
    again = tamer("eval", run_id, "--limit", "2", "--predictions", str(target), home=home)
    assert again.returncode == 0, again.stderr
    assert len(json.loads(target.read_text())["predictions"]) == 2
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    refused = tamer("eval", run_id, "--predictions", str(mine), home=home)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--predictions" in refused.stderr and "did not write" in refused.stderr
    assert mine.read_text() == '{"my": "notes"}' and sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "new"]


def test_eval_refuses_a_missing_step(full_run):
    """--step of a checkpoint that does not exist is a one-line state error naming the kept steps."""
    result = tamer("eval", full_run["run_id"], "--step", "3", home=full_run["home"])
    assert result.returncode == 5
    assert "pick one of the kept steps: 4" in result.stderr


def test_a_copy_task_is_learned_as_tamer_eval_measures_it(tmp_path):
    """Train -> export -> eval: on held-out questions of a synthetic copy task, `tamer eval` scores an
    early checkpoint near 0 and the final one at EM >= 0.9; eval.squad_every scores during training."""
    data = write_copy_task(tmp_path / "copy.json", 400)
    home = tmp_path / "home"
    run = tamer(
        "run",
        "squad",
        *WITH_RESULT,
        "--data",
        str(data),
        "--max-steps",
        "160",
        "--set",
        "effective_batch_size=16",
        "--set",
        "learning_rate=0.003",
        "--set",
        "warmup_ratio=0.02",
        "--set",
        "max_seq_len=32",
        "--set",
        "eval_samples=40",
        "--set",
        "checkpoint_every=10",
        "--set",
        "keep_checkpoints=16",
        "--set",
        "eval.squad_every=80",
        "--set",
        "eval.squad_samples=40",
        "--set",
        "eval.squad_max_new_tokens=4",
        home=home,
    )
    assert run.returncode == 0, run.stderr
    run_id = run_id_of(run)
    early = tamer("eval", run_id, "--step", "10", "--json", home=home)
    final = tamer("eval", run_id, "--json", home=home)
    assert early.returncode == 0 and final.returncode == 0, early.stderr + final.stderr
    early, final = json.loads(early.stdout), json.loads(final.stdout)
    assert early["questions"] == final["questions"] == 40 and early["data"] == "held-out"
    assert early["exact_match"] <= 0.2
    assert final["exact_match"] >= 0.9, final["examples"]
    during = query(
        home, "SELECT attempt FROM squad_scores WHERE run_id = ? AND step = 80 AND metric = 'exact_match'", (run_id,)
    )
    assert during == [(1,)]
