"""Fake OpenRouter: OpenAI chunks plus `: OPENROUTER PROCESSING`, usage with cost, error chunks."""

from __future__ import annotations

from typing import Any

from tests.fakes.openai_fake import OpenAIFake, sse
from tests.fakes.server import FakeServer, Piece, Reply

PROCESSING = b": OPENROUTER PROCESSING\n\n"
RATE_LIMITED = {
    "code": 429,
    "message": "Rate limit exceeded",
    "metadata": {"error_type": "rate_limit_exceeded"},
}


class OpenRouterFake(OpenAIFake):
    paths = ("/api/v1/chat/completions",)
    keepalive = PROCESSING

    def base(self, model: str) -> dict[str, Any]:
        return {**super().base(model), "id": "gen-fake", "provider": "OpenAI"}

    def chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "finish_reason": finish,
            "native_finish_reason": finish,
        }
        return sse({**self.base(model), "choices": [choice]})

    def usage(self, reply: Reply) -> dict[str, Any]:
        cost = 0.00005 if reply.cost is None else reply.cost
        return {**super().usage(reply), "cost": cost, "is_byok": False}

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return True  # always sent, stream_options or not

    def error_chunk(self, reply: Reply, model: str) -> bytes:
        choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
        return sse({**self.base(model), "error": reply.error or RATE_LIMITED, "choices": [choice]})

    def stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        return [PROCESSING, *super().stream(reply, body, model)]


def openrouter_server(api_key: str | None = None) -> FakeServer:
    return FakeServer(OpenRouterFake(api_key))
