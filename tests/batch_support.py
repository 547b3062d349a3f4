"""Helpers for the batch tests: input files in each format, reading OUT/ERR, counting mock calls."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness import BrokerProcess


def openai_line(custom_id: str, text: str, model: str = "mock:echo", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def anthropic_request(custom_id: str, text: str, model: str = "mock:echo") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": 64,
            "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        },
    }


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def openai_file(path: Path, count: int, model: str = "mock:echo") -> Path:
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps(openai_line(f"req-{i}", f"prompt {i} says hi", model)) + "\n")
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path} ends in a torn line"
    return [json.loads(line) for line in raw.splitlines()]


def ids_in(*paths: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in paths:
        for line in read_lines(path):
            counts[line["custom_id"]] += 1
    return counts


def calls_per_id(log: Path) -> Counter[str]:
    """How often the mock really started each custom_id (its `call_log`)."""
    if not log.exists():
        return Counter()
    return Counter(json.loads(line)["custom_id"] for line in log.read_text().splitlines())


def mock_broker(factory: Any, tmp: Path, **broker: Any) -> BrokerProcess:
    """Two mock workers logging their calls, a failing provider, and a default route."""
    log = tmp / "calls.log"
    providers = {
        "mock": {
            "kind": "mock",
            "models": ["echo"],
            "capacity": 64,
            "replicas": 2,
            "options": {"call_log": str(log)},
        },
        "broken": {
            "kind": "mock",
            "models": ["echo"],
            "capacity": 8,
            "options": {"fail": [{"category": "invalid_request", "message": "scripted"}]},
        },
    }
    process: BrokerProcess = factory(providers, {"default": ["mock:echo"]}, **broker)
    process.wait_workers(3)
    return process
