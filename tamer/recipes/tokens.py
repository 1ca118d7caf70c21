"""A tokenizer without torch: the Rust tokenizer of a model folder, its special tokens and its chat template.

The chat, instruct and text recipes tokenize with this on both sides of the torch line: the supervisor in
preflight (to refuse bad data and measure its token lengths before a run is registered) and the child to
train, so both see the same ids. transformers' tokenizer imports torch; this reads the same files that
`AutoTokenizer.from_pretrained` reads (tokenizer.json, tokenizer_config.json, chat_template.jinja) and
encodes with the same Rust backend, without the special tokens its post-processor would add.

    tokenizer = load("bundled", model="tiny-llama")
    tokenizer.ids("Hello")          # [22557]
    tokenizer.bos_id, tokenizer.eos_id, tokenizer.chat_template
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tamer.errors import ModelError
from tamer.hub import hub_error, looks_local, offline_requested
from tamer.recipes.squad import BUNDLED_TOKENIZER

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass
class TextTokenizer:
    """The Rust tokenizer of a model and what a recipe needs around it."""

    backend: Any
    """A `tokenizers.Tokenizer`."""
    described: str
    """How errors name it: `the bundled tokenizer`, `the tokenizer of model X`, `tokenizer X`."""
    special: dict[str, str] = field(default_factory=dict)
    """bos_token, eos_token, unk_token, pad_token as text (those the tokenizer has): chat templates read them."""
    chat_template: str | None = None
    """The tokenizer's own Jinja chat template, if it has one."""

    @property
    def bos_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_id(self) -> int | None:
        return self._id("eos_token")

    def _id(self, name: str) -> int | None:
        text = self.special.get(name)
        return None if text is None else self.backend.token_to_id(text)

    def ids(self, text: str) -> list[int]:
        """`text`'s ids, no special tokens added (those in the text itself, such as `<|im_start|>`, are kept)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[Any]:
        """Encodings (ids and character offsets) of `texts`, no special tokens added, in one Rust call."""
        return self.backend.encode_batch(texts, add_special_tokens=False)

    def require_eos(self) -> int:
        """The end-of-sequence id, or a ModelError: completions and documents end with it."""
        if self.eos_id is None:
            raise ModelError(
                f"{self.described} has no end-of-sequence token; each completion ends with one, so pick another tokenizer"
            )
        return self.eos_id


def tokenizer_source(config: Any) -> str | None:
    """What the config tokenizes with (as squad.load_tokenizer resolves it): a name, `bundled`, or None = the model's."""
    if config.tokenizer:
        return config.tokenizer
    return "bundled" if config.init == "random" else None


def load(name: str | None, model: str) -> TextTokenizer:
    """The tokenizer `name` (`bundled`, a hub id or a folder; None = the model's own)."""
    if name == "bundled":
        return _from_folder(BUNDLED_TOKENIZER, "the bundled tokenizer")
    source, described, hint = (
        (model, f"the tokenizer of model {model}", "--model PATH")
        if name is None
        else (name, f"tokenizer {name}", "--set tokenizer=PATH")
    )
    path = Path(source).expanduser()
    if looks_local(source):
        if not path.is_dir():
            raise ModelError(f"{described}: no such directory; pass a hub id or {hint} to a local copy")
        return _from_folder(path, described)
    return _from_folder(_hub_folder(source, described, hint), described)


def _hub_folder(repo: str, described: str, hint: str) -> Path:
    """The folder of the hub cache that holds `repo`'s tokenizer files (downloaded when missing)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        folder = Path(hf_hub_download(repo, TOKENIZER_FILES[0], local_files_only=offline_requested())).parent
    except LocalEntryNotFoundError as error:  # not cached and no hub (a kind of EntryNotFoundError, so first)
        raise hub_error(error, described, hint) from None
    except EntryNotFoundError:
        raise ModelError(
            f"{described} has no tokenizer.json on the hub; tamer needs a fast tokenizer (pass {hint})"
        ) from None
    except (OSError, ValueError) as error:
        raise hub_error(error, described, hint) from None
    for name in TOKENIZER_FILES[
        1:
    ]:  # optional: a repository has some of them; offline, those never fetched count as absent
        try:
            hf_hub_download(repo, name, local_files_only=offline_requested())
        except (OSError, ValueError):
            continue
    return folder


def _from_folder(folder: Path, described: str) -> TextTokenizer:
    from tokenizers import Tokenizer

    file = folder / "tokenizer.json"
    if not file.is_file():
        raise ModelError(f"{described} has no tokenizer.json; tamer needs a fast tokenizer (a tokenizer.json)")
    try:
        backend = Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust side raises plain Exceptions for a file it cannot read
        raise ModelError(f"{described}: tokenizer.json could not be read ({str(error).splitlines()[0]})") from None
    settings = _json(folder / "special_tokens_map.json") | _json(folder / "tokenizer_config.json")
    special = {name: text for name in SPECIAL_NAMES if (text := _token_text(settings.get(name))) is not None}
    return TextTokenizer(backend, described, special, _chat_template(folder, settings))


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: text, or an AddedToken dict with `content`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _chat_template(folder: Path, settings: dict[str, Any]) -> str | None:
    """chat_template.jinja (how transformers 5 saves it), else tokenizer_config.json's `chat_template`: a
    string, or a list of named templates of which `default` is the one apply_chat_template uses."""
    file = folder / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None
