"""Fake OpenAI Chat Completions (`POST /v1/chat/completions`), wire format as in the reference."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes.server import (
    ChatEndpoint,
    FakeServer,
    ModelList,
    Piece,
    Reply,
    Request,
    Response,
    json_response,
    scripted_listing,
    token_pieces,
)

NOT_FOUND = {"error": {"message": "Not found", "type": "invalid_request_error"}}
BAD_KEY = {
    "error": {
        "message": "Incorrect API key provided: sk-...MCQA. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}
MID_STREAM_ERROR = {
    "message": "The server had an error while processing your request.",
    "type": "server_error",
    "param": None,
    "code": None,
}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class OpenAIFake(ChatEndpoint):
    """Renders chat completions; subclasses change paths and quirks (see openrouter_fake)."""

    paths: tuple[str, ...] = ("/v1/chat/completions", "/chat/completions")
    not_found = NOT_FOUND
    default_model = "gpt-test"
    request_id = ("x-request-id", "req_fake")
    models_paths: tuple[str, ...] = ("/v1/models", "/models")
    default_models: tuple[str, ...] = ("gpt-fake-1", "gpt-fake-2")
    keepalive: bytes | None = None

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key  # when set, requests must carry it

    def render_stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        return list(self.stream(reply, body, model))

    def render_whole(self, reply: Reply, body: dict[str, Any], model: str) -> Any:
        return self.completion(reply, model)

    def models(self, request: Request, listing: ModelList) -> Response | None:
        """`GET /v1/models`: `{"object": "list", "data": [Model]}` (no paging)."""
        if request.method != "GET" or request.route not in self.models_paths:
            return None
        denied = self.authorize(request)
        if denied is not None:
            return denied
        scripted = scripted_listing(listing)
        if scripted is not None:
            return scripted
        return json_response(200, self.model_page(request, listing))

    def model_page(self, request: Request, listing: ModelList) -> dict[str, Any]:
        data = [
            {
                "id": model,
                "object": "model",
                "created": 1_686_935_002,
                "owned_by": "system",
                "shutdown_date": None,
            }
            for model in listing.ids
        ]
        return {"object": "list", "data": data}

    def authorize(self, request: Request) -> Response | None:
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return json_response(401, BAD_KEY)
        return None

    def base(self, model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
        }

    def chunk(self, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**self.base(model), "choices": [choice]})

    def usage(self, reply: Reply) -> dict[str, Any]:
        p, c = reply.prompt_tokens, reply.completion
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def error_chunk(self, reply: Reply, model: str) -> bytes:
        return sse({"error": reply.error or MID_STREAM_ERROR})

    def stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        pieces: list[Piece] = [
            self.chunk(model, {"role": "assistant", "content": "", "refusal": None})
        ]
        pieces += token_pieces(
            reply,
            lambda text: self.chunk(model, {"content": text}),
            self.keepalive,
            lambda: self.error_chunk(reply, model),
        )
        if reply.error_after is not None or not isinstance(pieces[-1], bytes):
            return pieces  # ended by an error, a drop or a stall
        pieces.append(self.chunk(model, {}, reply.finish_reason))
        if self.wants_usage(body):
            pieces.append(sse({**self.base(model), "choices": [], "usage": self.usage(reply)}))
        pieces.append(b"data: [DONE]\n\n")
        return pieces

    def wants_usage(self, body: dict[str, Any]) -> bool:
        return bool((body.get("stream_options") or {}).get("include_usage"))

    def completion(self, reply: Reply, model: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(reply.tokens),
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": self.usage(reply),
        }


def openai_server(api_key: str | None = None) -> FakeServer:
    return FakeServer(OpenAIFake(api_key))
