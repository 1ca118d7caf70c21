"""The hub preflight (tamer/hub.py): non-causal models refused at once, an unreachable hub fails fast
unless everything needed is cached. No network is used: the hub endpoint is pointed at a closed local port."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tamer import hub
from tamer.cli import app
from tamer.config import build_config
from tamer.errors import DataError, ModelError


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty huggingface_hub cache and an endpoint on a local port nothing listens on."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: connections are refused
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return cache


def cache_repo(cache: Path, repo: str, repo_type: str, files: dict[str, str]) -> None:
    """Lay out a snapshot the way huggingface_hub's cache does (refs/main -> snapshots/<commit>/...)."""
    root = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)


def model_folder(tmp_path: Path, architectures: list[str] | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architectures": architectures} if architectures else {"model_type": "llama"})
    )
    return folder


def test_the_tiny_preset_needs_nothing_from_the_hub_and_the_1b_preset_needs_model_and_data():
    """What the run would fetch: nothing for the offline demo; the model and rajpurkar/squad for the 1B preset."""
    assert hub.needs(build_config("tiny", None, {}, [])) == []
    wanted = hub.needs(build_config("llama-3.2-1b", None, {}, []))
    assert [(need.repo, need.repo_type) for need in wanted] == [
        ("meta-llama/Llama-3.2-1B", "model"),
        ("rajpurkar/squad", "dataset"),
    ]
    assert (
        hub.needs(build_config("llama-3.2-1b", None, {"data": "bundled"}, ["tokenizer=bundled", "init=random"])) == []
    )


def test_a_model_that_is_not_a_causal_lm_is_refused_in_one_line(tmp_path, hub_cache):
    """A local BERT (config.json: BertForMaskedLM) is a ModelError naming its architecture; a causal LM and a
    config without architectures pass."""
    bert = model_folder(tmp_path, ["BertForMaskedLM"])
    config = build_config("llama-3.2-1b", None, {"model": str(bert), "data": "bundled"}, [])
    with pytest.raises(
        ModelError, match=r"is not a causal language model \(its config.json names BertForMaskedLM\)"
    ) as error:
        hub.check_sources(config)
    assert "\n" not in str(error.value)
    (bert / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert hub.check_sources(config) is False
    (bert / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert hub.check_sources(config) is False


def test_a_folder_without_config_json_or_no_folder_is_a_model_error(tmp_path, hub_cache):
    """--model naming a missing folder or one without config.json says so before anything starts."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for model, expected in ((empty, "has no config.json"), (tmp_path / "missing", "no such folder")):
        with pytest.raises(ModelError, match=expected):
            hub.check_sources(build_config("llama-3.2-1b", None, {"model": str(model), "data": "bundled"}, []))


def test_an_unreachable_hub_without_a_cached_model_fails_within_seconds(hub_cache):
    """No connection to the hub and no cached copy: a one-line ModelError with the reason, in seconds (the hub
    client alone retries for ~25 s per file)."""
    config = build_config("llama-3.2-1b", None, {"data": "bundled"}, [])
    started = time.monotonic()
    with pytest.raises(
        ModelError,
        match=r"model meta-llama/Llama-3.2-1B: could not reach the hub \(127.0.0.1:\d+: .*\) "
        r"and there is no cached copy; pass --model PATH",
    ):
        hub.check_sources(config)
    assert time.monotonic() - started < hub.PROBE_SECONDS + 1


def test_an_uncached_dataset_is_a_data_error_and_hf_hub_offline_skips_the_network(hub_cache, monkeypatch):
    """With HF_HUB_OFFLINE=1 the hub is not asked at all; the cached model passes, the missing dataset is a DataError."""
    cache_repo(
        hub_cache,
        "meta-llama/Llama-3.2-1B",
        "model",
        {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]})},
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        hub, "probe", lambda timeout=0: pytest.fail("probed the network although HF_HUB_OFFLINE is set")
    )
    with pytest.raises(DataError, match=r"data rajpurkar/squad: could not reach the hub \(HF_HUB_OFFLINE is set\)"):
        hub.check_sources(build_config("llama-3.2-1b", None, {}, []))


def test_everything_cached_goes_offline_and_the_cached_config_is_checked(hub_cache):
    """Hub unreachable, model and dataset cached: the run goes on offline (True), and the cached config.json is
    still checked for a causal LM."""
    cache_repo(
        hub_cache,
        "meta-llama/Llama-3.2-1B",
        "model",
        {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"]})},
    )
    cache_repo(hub_cache, "rajpurkar/squad", "dataset", {"README.md": "squad"})
    assert hub.check_sources(build_config("llama-3.2-1b", None, {}, [])) is True
    cache_repo(hub_cache, "org/bert", "model", {"config.json": json.dumps({"architectures": ["BertModel"]})})
    with pytest.raises(ModelError, match="not a causal language model"):
        hub.check_sources(build_config("llama-3.2-1b", None, {"model": "org/bert", "data": "bundled"}, []))


def test_tamer_run_refuses_a_non_causal_model_before_registering_anything(tmp_path, hub_cache):
    """`tamer run` with a BERT folder exits 4 with one error line and leaves no run behind."""
    bert = model_folder(tmp_path, ["BertForSequenceClassification"])
    home = tmp_path / "home"
    result = CliRunner().invoke(
        app,
        ["run", "squad", "--preset", "llama-3.2-1b", "--model", str(bert), "--data", "bundled", "--home", str(home)],
    )
    assert result.exit_code == 4, result.output
    assert result.stderr.strip().startswith("error: model ") and len(result.stderr.strip().splitlines()) == 1
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())
