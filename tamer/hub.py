"""What a run needs from the Hugging Face hub, checked from the torch-free side in seconds.

`tamer run` and `tamer submit` call `check_sources(config)` before a run is registered:
- the model must be a causal language model (its config.json names a `...ForCausalLM` or
  `...LMHeadModel` architecture): a BERT is refused in preflight with one line, never started and retried;
- without the hub (no network, or HF_HUB_OFFLINE=1) a model, tokenizer or dataset (SQuAD's, or a
  `hub:NAME` source of the chat, instruct and text recipes) that is not cached
  fails in about PROBE_SECONDS with the usual one-line message, instead of the ~25 s of retries per file
  that huggingface_hub spends on each of them; when everything needed is cached, the run goes on offline.
The probe is one TCP connection to the hub's host (or to the HTTPS proxy), so it costs milliseconds online.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tamer.errors import DataError, ModelError

HUB_DATASET = "rajpurkar/squad"
HUB_SOURCE = "hub:"
"""How the chat, instruct and text recipes name a hub dataset: `--data hub:NAME[:SUBSET]`."""
PROBE_SECONDS = 5.0
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class HubNeed:
    """One repository the run will fetch: what it is for, its id, its kind, and the hint for a local copy."""

    described: str
    repo: str
    repo_type: str
    local_hint: str


def looks_local(name: str) -> bool:
    """A directory rather than a hub id (`org/name`)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def needs(config: Any) -> list[HubNeed]:
    """The hub repositories `config` reads: the model (pretrained weights, or its tokenizer), a hub
    tokenizer, the SQuAD dataset when a squad run gives no --data, a `hub:NAME` data or eval_data."""
    wanted = []
    model_needed = config.init == "pretrained" or config.tokenizer is None
    if model_needed and not looks_local(config.model):
        wanted.append(HubNeed(f"model {config.model}", config.model, "model", "--model PATH"))
    if config.tokenizer not in (None, "bundled") and not looks_local(config.tokenizer):
        wanted.append(HubNeed(f"tokenizer {config.tokenizer}", config.tokenizer, "model", "--set tokenizer=PATH"))
    if config.recipe == "squad":
        if config.data is None:
            wanted.append(
                HubNeed(
                    f"data {HUB_DATASET}",
                    HUB_DATASET,
                    "dataset",
                    "--data PATH with a local SQuAD v1.1 JSON file (or --data bundled)",
                )
            )
        return wanted
    for option in ("data", "eval_data"):
        source = getattr(config, option)
        if isinstance(source, str) and source.startswith(HUB_SOURCE):
            name = source[len(HUB_SOURCE) :].partition(":")[0]
            wanted.append(
                HubNeed(f"{option} {source}", name, "dataset", f"--{option.replace('_', '-')} with a local file")
            )
    return wanted


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def probe(timeout: float = PROBE_SECONDS) -> str | None:
    """None when the hub (or the HTTPS proxy in front of it) accepts a TCP connection within `timeout`,
    else why not."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname or host, parts.port or 3128
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port}: {error.strerror or error}"


def cached(need: HubNeed) -> bool:
    """Whether huggingface_hub's cache holds a snapshot of the repository."""
    from huggingface_hub.constants import HF_HUB_CACHE

    folder = Path(HF_HUB_CACHE) / f"{need.repo_type}s--{need.repo.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def config_json_on_disk(model: str) -> Path | None:
    """The config.json of `model` on this machine, without the network: a local folder's, or the hub cache's
    copy of a hub id's (preflight's `check_causal` puts it there); None when there is none."""
    if looks_local(model):
        found = Path(model).expanduser() / "config.json"
        return found if found.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(found) if isinstance(found, str) else None


def check_sources(config: Any, probe_timeout: float = PROBE_SECONDS) -> bool:
    """Refuse, in one line, a model that is not a causal LM and anything the hub would have to send when
    it cannot; True when the run must go offline (hub unreachable, everything needed cached)."""
    wanted = needs(config)
    offline = False
    if wanted:
        reason = "HF_HUB_OFFLINE is set" if offline_requested() else probe(probe_timeout)
        if reason is not None:
            offline = True
            for need in wanted:
                if not cached(need):
                    error = DataError if need.repo_type == "dataset" else ModelError
                    raise error(
                        f"{need.described}: could not reach the hub ({reason}) and there is no cached copy; "
                        f"pass {need.local_hint}"
                    )
    if config.init == "pretrained":
        check_causal(config.model, offline)
    return offline


def check_causal(model: str, offline: bool) -> None:
    """A one-line ModelError unless `model`'s config.json names a causal-LM architecture (a model whose
    config names none is left to the loader)."""
    path = Path(model).expanduser()
    if looks_local(model):
        if not path.is_dir():
            raise ModelError(f"--model {model}: no such folder; pass a hub id or a local model folder")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelError(
                f"--model {model}: the folder has no config.json; pass a Hugging Face model folder "
                "(as written by save_pretrained) or a hub id"
            )
    else:
        config_file = _hub_config(model, offline)
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as error:
        raise ModelError(
            f"model {model}: its config.json could not be read ({error}); pass a Hugging Face model folder"
        ) from None
    if architectures and not any(name.endswith(CAUSAL_SUFFIXES) for name in architectures):
        raise ModelError(
            f"model {model} is not a causal language model (its config.json names {', '.join(architectures)}); "
            "tamer fine-tunes decoder-only models (a ...ForCausalLM such as meta-llama/Llama-3.2-1B)"
        )


def _hub_config(model: str, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model, "config.json", local_files_only=offline))
    except (OSError, ValueError) as error:
        raise hub_error(error, f"model {model}", "--model PATH") from None


def hub_error(error: BaseException, described: str, local_hint: str) -> ModelError:
    """A ModelError that says why the hub refused, found in the chain of `error`'s causes."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    causes = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    status_codes = {
        getattr(getattr(cause, "response", None), "status_code", None)
        for cause in causes
        if isinstance(cause, HfHubHTTPError)
    }
    if any(isinstance(cause, GatedRepoError) for cause in causes) or status_codes & {401, 403}:
        return ModelError(
            f"{described} is gated: accept its licence on the hub and log in (set HF_TOKEN or run "
            f"`hf auth login`), or pass {local_hint} to a local copy"
        )
    if any(isinstance(cause, RepositoryNotFoundError) for cause in causes):
        return ModelError(
            f"{described} was not found on the hub (a private repository also needs HF_TOKEN); "
            f"check the name, or pass {local_hint} to a local copy"
        )
    if any(isinstance(cause, LocalEntryNotFoundError) for cause in causes):
        return ModelError(
            f"{described}: could not reach the hub and there is no cached copy; pass {local_hint} to a local copy"
        )
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(f"{described}: could not be loaded ({reason}); pass {local_hint} to a local copy")
