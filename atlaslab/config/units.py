"""Human-friendly sizes ("2G") and durations ("1h") as pydantic-ready types."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``512M``, ``2G``, ``1.5GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    raise ValueError(f"{value!r} is not a size; write it like 512M, 2G or 1T")


def parse_duration(value: object) -> int:
    """Seconds from an int or a string such as ``90s``, ``30m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30m or 1h, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts).lower() == text.lower():
            return int(sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts))
    raise ValueError(f"{value!r} is not a duration; write it like 90s, 30m, 1h or 1h30m")


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit] and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE_RE.pattern}]}),
]
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]
