"""Text for times, durations and sizes, shared by the inspect commands and the HTML report."""

from __future__ import annotations

import time

from tamer.units import format_size


def when(timestamp: float | None) -> str:
    """Local date and time, `-` for None."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def seconds(value: float | None) -> str:
    """`4.2 s`, `3 min 05 s`, `2 h 03 min`; `-` for None."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f} s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def number(value: float | int | None, digits: int = 4) -> str:
    """A loss or rate with `digits` decimals, `-` for None."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def peak(row: dict) -> str:
    """An attempt's peak memory: GPU reserved when torch measured it, else the host RSS."""
    if row.get("peak_reserved"):
        return f"{format_size(row['peak_reserved'])} reserved"
    if row.get("peak_host_rss"):
        return f"{format_size(row['peak_host_rss'])} RSS"
    return "-"
