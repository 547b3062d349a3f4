"""Fake OpenRouter: OpenAI chunks plus `: OPENROUTER PROCESSING`, usage with cost, error chunks."""

from __future__ import annotations

from typing import Any

from tests.fakes.openai_fake import OpenAIFake, sse
from tests.fakes.server import FakeServer, ModelList, Piece, Reply, Request, Response, page

PROCESSING = b": OPENROUTER PROCESSING\n\n"
RATE_LIMITED = {
    "code": 429,
    "message": "Rate limit exceeded",
    "metadata": {"error_type": "rate_limit_exceeded"},
}


class OpenRouterFake(OpenAIFake):
    paths = ("/api/v1/chat/completions",)
    models_paths = ("/api/v1/models",)
    default_models = ("vendor/fake-model-1", "vendor/fake-model-2:free")
    keepalive = PROCESSING

    def authorize(self, request: Request) -> Response | None:
        if request.method == "GET":
            return None  # the model list is public
        return super().authorize(request)

    def model_page(self, request: Request, listing: ModelList) -> dict[str, Any]:
        """`{"data": [Model], "total_count": N, "links": {"next": url | null}}`, paged."""
        offset = int(request.query("offset") or 0)
        limit = int(request.query("limit") or 500)
        if listing.page_size is not None:
            limit = min(limit, listing.page_size)
        ids, more = page(listing.ids, offset, limit)
        following = f"/api/v1/models?offset={offset + len(ids)}&limit={limit}" if more else None
        data = [
            {
                "id": model,
                "canonical_slug": model,
                "name": model.title(),
                "created": 1_700_000_000,
                "description": "A fake model.",
                "context_length": 8192,
                "architecture": {
                    "input_modalities": ["text"],
                    "output_modalities": ["text"],
                    "tokenizer": "Other",
                    "instruct_type": None,
                },
                "pricing": {"prompt": "0.000001", "completion": "0.000002"},
                "top_provider": {
                    "context_length": 8192,
                    "max_completion_tokens": 1024,
                    "is_moderated": False,
                },
                "per_request_limits": None,
                "supported_parameters": ["max_tokens", "temperature", "tools"],
            }
            for model in ids
        ]
        return {"data": data, "total_count": len(listing.ids), "links": {"next": following}}

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
