"""Byte sizes as people write them: `15GiB`, `512MiB`, `16GB`, `1.5G`, or a plain number of bytes.

The one parser of sizes: config values (`ByteSize`, parsed once when the config is validated), the
sizes in CUDA's out-of-memory messages (tamer/daemon/classify.py) and command-line options.
"""

from __future__ import annotations

import re
from typing import Any

from tamer.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int | float, what: str = "size") -> int:
    """Bytes from `text`; a ConfigError names `what` when the text is not a size."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"{what}: '{text}' is not a size; write e.g. 15GiB, 512MiB or 16GB")
    return round(float(match.group(1)) * _UNITS[unit])


class ByteSize(int):
    """A number of bytes that remembers how it was written: arithmetic sees bytes; `str()` and the stored
    config see the spelling (`15GiB`), so a config round-trips as the user wrote it."""

    text: str

    def __new__(cls, value: str | int | float, what: str = "size") -> ByteSize:
        size = super().__new__(cls, parse_size(value, what))
        size.text = value if isinstance(value, str) else str(int(value))
        return size

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ByteSize({self.text!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda size: size.text)
        )

    @classmethod
    def _validate(cls, value: Any) -> ByteSize:
        if isinstance(value, ByteSize):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"expected a size such as 15GiB, got {value!r}")
        try:
            return cls(value)
        except ConfigError:  # pydantic reports a ValueError under the key's path
            raise ValueError(f"'{value}' is not a size; write e.g. 15GiB, 512MiB or 16GB") from None


def format_size(num_bytes: int | float | None) -> str:
    """`num_bytes` in GiB/MiB/KiB with one decimal, `-` for None."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"
