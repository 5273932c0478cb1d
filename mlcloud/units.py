"""Parsing of the human units used in specs: durations ("1h30m") and sizes ("4Gi")."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?[dhms])+")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|KB|MB|GB|TB)?")
_FACTORS = {
    None: 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
}


def parse_duration(value: object) -> int:
    """``"1h30m"``, ``"90s"``, ``"2d"`` or a number of seconds → whole seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '90s', '30m', '1h30m' or a number of seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = float(value.strip())
    elif isinstance(value, str) and _DURATION_FULL.fullmatch(value.strip()):
        seconds = sum(float(n) * _SECONDS[u] for n, u in _DURATION_PART.findall(value.strip()))
    else:
        raise ValueError("expected a duration like '90s', '30m', '1h30m' or a number of seconds")
    if not 0 < seconds < 366 * 86400:
        raise ValueError("a duration must be more than 0 seconds and less than a year")
    return round(seconds)


def format_duration(seconds: int) -> str:
    """Inverse of :func:`parse_duration` for display: 5400 → '1h30m'."""
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            out.append(f"{count}{unit}")
    return "".join(out) or "0s"


def parse_size(value: object) -> int:
    """``"4Gi"``, ``"512Mi"``, ``"2G"`` or a number of bytes → bytes (> 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like '512Mi', '4Gi' or a number of bytes")
    if isinstance(value, (int, float)):
        size = float(value)
    elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        size = float(m.group(1)) * _FACTORS[m.group(2)]
    else:
        raise ValueError("expected a size like '512Mi', '4Gi' or a number of bytes")
    if not 0 < size < 1024**5:
        raise ValueError("a size must be more than 0 bytes and less than 1 PiB")
    return int(size)
