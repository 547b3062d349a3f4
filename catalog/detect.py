"""Which configured provider serves a bare model name (no `provider:` prefix).

In order: the providers whose config lists the name, then those whose live model list has
it, then name patterns (`gpt-*`, `o1*`, `o3*`, `o4*`, `chatgpt-*` -> openai; `claude-*` ->
anthropic; `ollama/NAME` -> ollama; `vendor/model` -> openrouter). Only configured providers
are ever chosen. When several match, all of them are candidates in config order, and the
detection says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^(gpt-|chatgpt-|o1|o3|o4)"), "openai"),
    (re.compile(r"^claude-"), "anthropic"),
    (re.compile(r"^ollama/.+"), "ollama"),
    (re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.:-]+$"), "openrouter"),
)


@dataclass(frozen=True, slots=True)
class Configured:
    name: str
    kind: str
    models: Sequence[str]


@dataclass(frozen=True, slots=True)
class Detection:
    candidates: list[tuple[str, str]]  # (provider, model) in config order
    how: str  # config | live | pattern
    note: str  # one line for the result: what matched and, if ambiguous, the order used


def detect(
    model: str,
    providers: Sequence[Configured],
    serves: Callable[[str, str], bool] | None = None,
) -> Detection | None:
    listed = [p.name for p in providers if model in p.models]
    if listed:
        return _found(model, listed, model, "config", "listed in the config")
    if serves is not None:
        live = [p.name for p in providers if serves(p.name, model)]
        if live:
            return _found(model, live, model, "live", "in the provider's live model list")
    for pattern, kind in PATTERNS:
        if pattern.match(model):
            of_kind = [p.name for p in providers if p.kind == kind]
            if not of_kind:
                continue
            name = model.removeprefix("ollama/") if kind == "ollama" else model
            return _found(model, of_kind, name, "pattern", f"looks like a {kind} model name")
    return None


def _found(model: str, names: list[str], served_as: str, how: str, why: str) -> Detection:
    note = f"{model!r} {why}: {names[0]}"
    if len(names) > 1:
        note += f" (also {', '.join(names[1:])}; tried in config order)"
    return Detection([(name, served_as) for name in names], how, note)
