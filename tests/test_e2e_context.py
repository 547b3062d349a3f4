"""The context-window pre-check on the real llama-server: a prompt too long for the first
candidate's window, counted exactly (its chat template and tokenizer), goes to the larger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.llama, pytest.mark.timeout(240)]


def test_too_long_for_the_small_window_goes_to_the_larger(
    broker_factory: Any, llama_binary: Any, long_model: Path
) -> None:
    def llama(ctx_size: int) -> dict[str, Any]:
        options = {"model_path": str(long_model), "ctx_size": ctx_size}
        return {"kind": "llamacpp", "models": ["tiny"], "capacity": 1, "options": options}

    broker = broker_factory(
        {"small": llama(256), "large": llama(4096)},
        {"chain": ["small:tiny", "large:tiny"]},
    )
    broker.wait_workers(2, timeout=180)
    with broker.client() as client:
        windows = {
            name: client.capabilities(name, "tiny")["capabilities"]["context_window"]
            for name in ("small", "large")
        }
        assert windows == {"small": 256, "large": 4096}  # from each server's /props
        prompt = "the quick brown fox jumps over the lazy dog " * 40  # 1,800 bytes
        (count,) = client.count_tokens(model="small:tiny", prompt=prompt)["counts"]
        assert count["exact"] and count["method"] == "tokenize"  # asked of its llama-server
        short = client.complete(route="chain", prompt="Hello", max_tokens=8, timeout=120)
        assert [(a["provider"], a["outcome"]) for a in short.attempts] == [("small", "ok")]
        result = client.complete(route="chain", prompt=prompt, max_tokens=16, timeout=120)
    assert result.provider == "large" and result.usage["completion_tokens"] > 0
    assert (result.cost, result.cost_source) == (0.0, "priced")  # local: priced at zero
    assert [(a["provider"], a["outcome"]) for a in result.attempts] == [
        ("small", "context_length"),
        ("large", "ok"),
    ]
    refused = result.attempts[0]["message"]
    assert "(exact, llama-server /tokenize)" in refused and "window of 256" in refused
    counted = int(refused.split("prompt of ")[1].split(" tokens")[0])
    # one count, however it is asked for: the pre-check's, count_tokens', and the prompt
    # tokens the large server reports for the same prompt and model
    assert counted == count["tokens"] == result.usage["prompt_tokens"]
