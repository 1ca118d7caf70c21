"""Byte sizes as people write them: `15GiB`, `512MiB`, `16GB`, `1.5G`, or a plain number of bytes."""

import re

from tamer.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
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
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(num_bytes: int | float | None) -> str:
    """`num_bytes` in GiB/MiB/KiB with one decimal, `-` for None."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{int(value)} B"
