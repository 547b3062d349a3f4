"""Every configuration we show users parses, and each provider's backend accepts its options."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from dispatcher.config import load_config, parse_config
from workers.registry import backend_class

ROOT = Path(__file__).resolve().parent.parent


def readme_toml(name: str = "README.md") -> str:
    text = (ROOT / name).read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    assert blocks, f"{name} shows no TOML example"
    return "\n".join(blocks)


@pytest.mark.parametrize(
    "source",
    [
        "README.md",
        "docs/catalog.md",
        *sorted(p.name for p in (ROOT / "examples").glob("*.toml")),
    ],
)
def test_shown_configs_are_valid(source: str) -> None:
    if source.endswith(".md"):
        config = parse_config(tomllib.loads(readme_toml(source)))
    else:
        config = load_config(ROOT / "examples" / source)
    assert config.providers and config.routes
    for spec in config.providers.values():
        backend_class(spec.kind)(spec)  # option checks done at construction must pass
