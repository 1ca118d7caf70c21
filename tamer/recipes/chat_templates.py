"""Chat templates: which one a chat run uses, rendering it, and where each assistant turn lies in the text.

    template = resolve(config.chat_template, tokenizer)       # `chatml`, a Jinja file, or the tokenizer's own
    text = template.render(messages)                           # as apply_chat_template(tokenize=False) renders it
    spans = template.assistant_spans(messages)                 # [(begin, end), ...] character spans of the replies

Rendering follows transformers' `apply_chat_template`: a sandboxed Jinja environment with trim_blocks and
lstrip_blocks, `raise_exception`, `strftime_now` and a `tojson` that keeps non-ASCII text, the messages and
the tokenizer's special tokens as variables. Most templates have no `{% generation %}` markers, so an
assistant turn is found as TRL and torchtune find it, by rendering prefixes: it begins where the text of the
messages before it plus the generation prompt ends, and ends where the text of the messages up to it ends
(trailing whitespace left out, so the turn's end-of-turn marker is scored and the newline after it is not).
A template that renders earlier turns differently once later ones follow cannot be cut this way: it is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tamer.errors import ConfigError, DataError, ModelError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, as OpenAI published it and Qwen, SmolLM2 and others use it: `<|im_start|>{role}\\n{content}<|im_end|>\\n`."""

BUILT_IN = {"chatml": CHATML}


class TemplateRefused(Exception):
    """The template raised (raise_exception) or failed on a conversation; the message says why."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template ready to render, and where it came from."""

    text: str
    source: str
    """`chatml` (built in), a file path, or `the tokenizer's` (its own)."""
    special: tuple[tuple[str, str], ...] = ()
    """The tokenizer's special tokens as template variables (bos_token, eos_token, ...)."""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly as apply_chat_template(tokenize=False) renders it."""
        try:
            return _compiled(self.text).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **dict(self.special)
            )
        except Exception as error:  # jinja2's TemplateError and whatever a template's expressions raise
            raise TemplateRefused(str(error).splitlines()[0] if str(error).strip() else type(error).__name__) from None

    def assistant_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """(the whole text, the character span of each assistant turn in it, in order)."""
        whole = self.render(messages)
        spans = []
        for position, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            begin = len(self._prefix(messages[:position], True, whole, position))
            end = len(self._prefix(messages[: position + 1], False, whole, position + 1))
            text = whole[begin:end]
            end = begin + len(text.rstrip())
            if end > begin:
                spans.append((begin, end))
        return whole, spans

    def _prefix(self, messages: list[dict[str, str]], generation_prompt: bool, whole: str, count: int) -> str:
        text = self.render(messages, add_generation_prompt=generation_prompt)
        if not whole.startswith(text):
            raise ConfigError(
                f"chat template ({self.source}): it renders the first {count} messages differently once later ones "
                "follow, so the assistant turns cannot be found by rendering prefixes; set chat_template: FILE to a "
                f"template that renders earlier turns unchanged (or a built-in: {', '.join(BUILT_IN)})"
            )
        return text


@lru_cache(maxsize=8)
def _compiled(text: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(text)


def resolve(setting: str | None, tokenizer: Any) -> ChatTemplate:
    """The template a chat run renders with: `chat_template` (a built-in name or a Jinja file), else the
    tokenizer's own, else a ModelError that names the key to set."""
    special = tuple(sorted(tokenizer.special.items()))
    if setting is None:
        if tokenizer.chat_template is None:
            raise ModelError(
                f"{tokenizer.described} has no chat template; set one with `chat_template: FILE | NAME` "
                f"(e.g. --set chat_template=chatml; built in: {', '.join(BUILT_IN)})"
            )
        template = ChatTemplate(tokenizer.chat_template, "the tokenizer's", special)
    elif setting in BUILT_IN:
        template = ChatTemplate(BUILT_IN[setting], setting, special)
    else:
        template = ChatTemplate(read_file(setting), str(Path(setting).expanduser()), special)
    try:
        _compiled(template.text)
    except Exception as error:  # a syntax error in the template
        raise ConfigError(
            f"chat_template ({template.source}): not a valid Jinja template ({str(error).splitlines()[0]})"
        ) from None
    return template


def read_file(setting: str) -> str:
    """The text of a chat template file, or a ConfigError naming the built-ins."""
    path = Path(setting).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"chat_template: {setting!r} is neither a file nor a built-in template ({', '.join(BUILT_IN)}); "
            "pass a Jinja file or a built-in name"
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"chat_template: {setting} is not UTF-8 text; pass a Jinja template file") from None


def refused(label: str, where: str, error: TemplateRefused) -> DataError:
    """A DataError for a conversation the template refused."""
    return DataError(f"{label}: {where}: the chat template refused it ({error})")
