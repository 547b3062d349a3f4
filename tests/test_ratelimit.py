"""Rate-limit headers -> the normalized dict (workers/ratelimit.py), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from workers.ratelimit import (
    ANTHROPIC,
    GENERIC,
    OPENAI,
    HeaderFamily,
    Reading,
    duration,
    field_table,
    parse_ratelimit,
)

NOW = 1_735_689_600.0  # 2025-01-01T00:00:00Z


def parse(families: tuple[HeaderFamily, ...], headers: dict[str, str]) -> dict[str, float]:
    return parse_ratelimit(field_table(families), headers, now=NOW)


CASES: list[tuple[str, tuple[HeaderFamily, ...], dict[str, str], dict[str, Any]]] = [
    (
        "openai full capture",
        (OPENAI,),
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "160000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "6m0s",
            "x-ratelimit-limit-tokens_usage_based": "160000",  # not ours: ignored
            "content-type": "text/event-stream",
        },
        {
            "requests_limit": 5000,
            "tokens_limit": 160000,
            "requests_remaining": 4999,
            "tokens_remaining": 159976,
            "requests_reset": 0.012,
            "tokens_reset": 360.0,
        },
    ),
    (
        "openai header names in any case",
        (OPENAI,),
        {"X-RateLimit-Remaining-Requests": "0", "X-RateLimit-Reset-Requests": "1s"},
        {"requests_remaining": 0, "requests_reset": 1.0},
    ),
    (
        "anthropic RFC 3339 resets",
        (ANTHROPIC,),
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2025-01-01T01:00:01.5+01:00",
            "anthropic-ratelimit-input-tokens-remaining": "20000",
            "anthropic-ratelimit-output-tokens-reset": "2024-12-31T23:59:00Z",  # past: 0
        },
        {
            "requests_limit": 50,
            "requests_remaining": 49,
            "requests_reset": 30.0,
            "tokens_limit": 40000,
            "tokens_remaining": 39000,
            "tokens_reset": 1.5,
            "input_tokens_remaining": 20000,
            "output_tokens_reset": 0.0,
        },
    ),
    (
        "each family reads only its own headers",
        (ANTHROPIC,),
        {"x-ratelimit-remaining-requests": "0", "retry-after": "3"},
        {},
    ),
    (
        "openrouter generic 429 headers: epoch ms, epoch s, delta",
        (GENERIC,),
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int((NOW + 20) * 1000))},
        {"requests_remaining": 0, "requests_reset": 20.0},
    ),
    (
        "generic reset in epoch seconds",
        (GENERIC,),
        {"x-ratelimit-remaining": "3", "x-ratelimit-reset": str(int(NOW + 7))},
        {"requests_remaining": 3, "requests_reset": 7.0},
    ),
    (
        "garbage values are left out, the good ones kept",
        (OPENAI, ANTHROPIC),
        {
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "-1",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-limit-tokens": "nan",
            "x-ratelimit-remaining-tokens": "1e400",
            "x-ratelimit-reset-tokens": "-5s",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30",  # no zone
            "anthropic-ratelimit-tokens-reset": "tomorrow",
            "anthropic-ratelimit-tokens-limit": "",
            "anthropic-ratelimit-requests-remaining": " 7 ",
        },
        {"requests_remaining": 7},
    ),
    ("no headers at all", (OPENAI, ANTHROPIC, GENERIC), {}, {}),
    ("no families", (), {"x-ratelimit-remaining-requests": "0"}, {}),
]


@pytest.mark.parametrize(
    ("families", "headers", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_parse_ratelimit(
    families: tuple[HeaderFamily, ...], headers: dict[str, str], expected: dict[str, Any]
) -> None:
    got = parse(families, headers)
    assert got == pytest.approx(expected)
    assert set(got) == set(expected)
    for key, value in got.items():
        if key.endswith(("_limit", "_remaining")):
            assert isinstance(value, int)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("250us", 0.00025),
        ("0s", 0.0),
        ("2.5", 2.5),  # a bare number is seconds
        ("", None),
        ("1x", None),
        ("s", None),
        ("1s junk", None),
        ("-1s", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    got = duration(text, NOW)
    assert got == (None if seconds is None else pytest.approx(seconds))


def test_reading_reports_resets_counted_from_now(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("workers.ratelimit.time.monotonic", lambda: clock[0])
    reading = Reading()
    assert reading.report() is None
    reading.read(
        field_table((OPENAI,)),
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
    )
    clock[0] = 100.5  # the stream took half a second after the headers arrived
    assert reading.report() == {"requests_remaining": 0, "requests_reset": 1.5}
    clock[0] = 110.0
    assert reading.report() == {"requests_remaining": 0, "requests_reset": 0.0}
