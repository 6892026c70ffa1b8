"""Sizes ("2G") and durations ("1h30m"): parsing, formatting and the messages for bad values."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, ValidationError

from atlaslab.config.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    Duration,
    Size,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)

K, M, G, T = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("1K", K),
        ("512M", 512 * M),
        ("2G", 2 * G),
        ("2g", 2 * G),
        ("2GB", 2 * G),
        ("2GiB", 2 * G),
        ("2 gib", 2 * G),
        (" 1.5G ", int(1.5 * G)),
        ("1T", T),
        ("100B", 100),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2 gigs", "'2 gigs' is not a size; write it like 512M, 2G or 1T"),
        ("2P", "'2P' is not a size"),
        ("-1G", "'-1G' is not a size"),
        ("G", "'G' is not a size"),
        ("", "'' is not a size"),
        (2.5, "2.5 is not a size"),
        (None, "an empty value is not a size"),
        ([1], "a list is not a size"),
        (-5, "-5 is negative; a size is written like 512M or 2G"),
        (True, "not true/false"),
    ],
)
def test_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (90, 90),
        (1.9, 1),
        ("45", 45),
        ("90s", 90),
        ("30m", 1800),
        ("1h", 3600),
        ("1H", 3600),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("1.5h", 5400),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
    ],
)
def test_parse_duration(text: object, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1 hour", "'1 hour' is not a duration; write it like 90s, 30m, 1h or 1h30m"),
        ("1hour", "'1hour' is not a duration"),
        ("h", "'h' is not a duration"),
        ("1y", "'1y' is not a duration"),
        ("", "'' is not a duration"),
        ("-5m", "'-5m' is not a duration"),
        (-1, "-1 is negative"),
        (False, "not true/false"),
        (None, "an empty value is not a duration"),
        ({"h": 1}, "a mapping is not a duration"),
    ],
)
def test_bad_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (100, "100"), (K, "1K"), (1536 * M, "1536M"), (2 * G, "2G"), (3 * T, "3T"), (G + 1, str(G + 1))],
)
def test_format_size_round_trips(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text) == n


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (172800, "2d"), (604800 + 1, "1w1s")],
)
def test_format_duration_round_trips(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_json_schema_patterns_accept_what_the_parsers_accept() -> None:
    for text in ("512M", "2g", "2GiB", " 1.5G ", "4096"):
        assert re.match(SIZE_PATTERN, text), text
    for text in ("2 gigs", "2P", "G"):
        assert not re.match(SIZE_PATTERN, text), text
    for text in ("90s", "1h30m", "1H", "2d", "45", "1h 30m"):
        assert re.match(DURATION_PATTERN, text), text
    for text in ("1 hour", "1y", "h"):
        assert not re.match(DURATION_PATTERN, text), text


class Holder(BaseModel):
    size: Size = 0
    timeout: Duration = 0


def test_types_in_a_model_parse_and_serialise() -> None:
    held = Holder(size="2G", timeout="1h30m")
    assert (held.size, held.timeout) == (2 * G, 5400)
    assert held.model_dump() == {"size": 2 * G, "timeout": 5400}
    assert held.model_dump(mode="json") == {"size": "2G", "timeout": "1h30m"}
    assert Holder.model_validate(held.model_dump(mode="json")) == held


def test_types_in_a_model_report_the_fix() -> None:
    with pytest.raises(ValidationError) as e:
        Holder(size="lots", timeout="soon")
    messages = [err["msg"] for err in e.value.errors()]
    assert messages == [
        "Value error, 'lots' is not a size; write it like 512M, 2G or 1T",
        "Value error, 'soon' is not a duration; write it like 90s, 30m, 1h or 1h30m",
    ]
