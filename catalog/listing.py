"""`llmrelay models` as a readable table (the --json form is the broker's answer as is)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

FLAG_LETTERS = (
    ("vision", "V"),
    ("tools", "T"),
    ("json_object", "J"),
    ("json_schema", "S"),
    ("streaming", "s"),
)


def _price(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render_models(listing: Mapping[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [("PROVIDER", "MODEL", "CONTEXT", "IN $/M", "OUT $/M", "CACHED $/M", "CAPS", "FROM")]
    for e in listing.get("models") or []:
        caps = e["capabilities"]
        flags = "".join(letter if caps.get(name) else "." for name, letter in FLAG_LETTERS)
        sources = "+".join(e.get("sources") or [])
        rows.append(
            (
                e["provider"],
                e["model"],
                str(caps.get("context_window") or "-"),
                _price(caps.get("input_price")),
                _price(caps.get("output_price")),
                _price(caps.get("cached_input_price")),
                flags,
                sources + (" (stale)" if e.get("stale") else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    if len(rows) == 1:
        lines.append("(no models match)")
    lines.append("")
    lines.append(
        "CAPS: V vision, T tools, J JSON object, S JSON schema, s streaming; "
        f"shipped data written {listing.get('written', '?')}"
    )
    for name, live in sorted((listing.get("live") or {}).items()):
        if live.get("fetched_at"):
            state = f"fetched {_age(now - live['fetched_at'])} ago, {live.get('models', 0)} models"
        else:
            state = "never fetched"
        if live.get("stale"):
            state += f"; STALE, last fetch failed: {live.get('error')}"
        lines.append(f"live {name}: {state}")
    return "\n".join(lines)
