# ruff: noqa: E501  (tables read best one case per line)
"""Every config mistake gives one line naming its file and dotted key, before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispatcher.config import ConfigError, load_config, parse_config, resolved
from tests.harness import ROOT

BASE = """
[providers.mock]
kind = "mock"
models = ["echo"]

[providers.openai]
kind = "openai"
models = ["gpt-x"]

[providers.openai.options]
api_key_env = "OPENAI_API_KEY"

[routes.default]
candidates = ["mock:echo"]
"""

# (id, TOML appended to or replacing BASE, the key named, words in the message)
ROWS: list[tuple[str, str, str, str]] = [
    ("route-key-typo", '[routes.fast]\ncandidate = ["mock:echo"]', "routes.fast.candidate", "did you mean 'candidates'?"),
    ("option-typo-api-key-env", '[providers.o2]\nkind = "openai"\n[providers.o2.options]\napi_kye_env = "K"', "providers.o2.options.api_kye_env", "did you mean 'api_key_env'?"),
    ("option-typo-read-timeout", '[providers.o2]\nkind = "openai"\n[providers.o2.options]\nread_timout = 5', "providers.o2.options.read_timout", "did you mean 'read_timeout'?"),
    ("models-as-string", '[providers.m2]\nkind = "mock"\nmodels = "echo"', "providers.m2.models", "must be a list of strings; got a string"),
    ("capacity-word", '[providers.m2]\nkind = "mock"\ncapacity = "four"', "providers.m2.capacity", "must be an integer; got a string"),
    ("capacity-zero", '[providers.m2]\nkind = "mock"\ncapacity = 0', "providers.m2.capacity", "must be >= 1"),
    ("rpm-word", '[providers.m2]\nkind = "mock"\nrpm = "fast"', "providers.m2.rpm", "must be a number; got a string"),
    ("heartbeat-string", '[broker]\nheartbeat_interval = "1"', "broker.heartbeat_interval", "must be a number; got a string"),
    ("heartbeat-zero", "[broker]\nheartbeat_interval = 0", "broker.heartbeat_interval", "must be > 0"),
    ("broker-key-typo", "[broker]\nheartbeat_intervl = 1.0", "broker.heartbeat_intervl", "did you mean 'heartbeat_interval'?"),
    ("bool-not-number", '[providers.m2]\nkind = "mock"\nspawn = 1', "providers.m2.spawn", "must be a boolean"),
    ("unknown-kind", '[providers.m2]\nkind = "opnai"', "providers.m2.kind", "did you mean 'openai'?"),
    ("name-is-no-kind", "[providers.gpu1]\ncapacity = 2", "providers.gpu1.kind", "missing"),
    ("candidate-no-colon", '[routes.bad]\ncandidates = ["mock"]', "routes.bad.candidates", "is not \"provider:model\""),
    ("candidate-unknown-provider", '[routes.bad]\ncandidates = ["mokc:echo"]', "routes.bad.candidates", "did you mean 'mock'?"),
    ("route-empty", "[routes.bad]\ncandidates = []", "routes.bad.candidates", "at least one"),
    ("section-typo", '[route.x]\ncandidates = ["mock:echo"]', "route", "did you mean 'routes'?"),
    ("option-wrong-type", '[providers.o2]\nkind = "openai"\n[providers.o2.options]\ninclude_usage = "yes"', "providers.o2.options.include_usage", "must be a boolean"),
    ("llama-option-range", '[providers.l]\nkind = "llamacpp"\n[providers.l.options]\nmodel_path = "m.gguf"\nhealth_failures = 0', "providers.l.options.health_failures", "must be >= 1"),
    ("mock-option-typo", '[providers.m2]\nkind = "mock"\n[providers.m2.options]\ntoken_dealy = 0.1', "providers.m2.options.token_dealy", "did you mean 'token_delay'?"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "key", "words"), [pytest.param(*r[1:], id=r[0]) for r in ROWS])
def test_config_mistake_names_file_and_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(BASE + "\n" + toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = str(caught.value)
    assert line.startswith(f"{path}: {key}: "), line
    assert words in line and "\n" not in line


def test_the_broker_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(BASE + '\n[providers.m2]\nkind = "mock"\ncapacity = "four"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "broker", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"config error: {path}: providers.m2.capacity: must be an integer; got a string ('four')"
    )
    assert "broker_started" not in proc.stderr and proc.stdout == ""


def test_config_check_prints_the_resolved_config_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    secret = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWX0123456789"
    path.write_text(BASE.replace('api_key_env = "OPENAI_API_KEY"', f'api_key = "{secret}"'))
    proc = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["providers"]["openai"]["options"]["api_key"] == "***"
    assert shown["broker"]["heartbeat_interval"] == 1.0  # defaults filled in
    assert shown["providers"]["mock"]["capacity"] == 8
    assert shown["routes"]["default"]["candidates"] == ["mock:echo"]
    assert secret not in proc.stdout + proc.stderr


def test_resolved_config_round_trips_through_the_parser() -> None:
    config = parse_config({"providers": {"mock": {"models": ["echo"]}}})
    again = parse_config(resolved(config))
    assert again.providers == config.providers and again.routes == config.routes
