"""Fake Ollama `/api/chat`: NDJSON lines, a final `"done": true` object, `{"error": ...}` lines."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.server import (
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

CREATED = "2023-08-04T19:22:45.499127Z"


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class OllamaFake:
    default_models = ("llama-fake:latest", "qwen-fake:7b")

    def models(self, request: Request, listing: ModelList) -> Response | None:
        """`GET /api/tags`: `{"models": [{"name", "model", "modified_at", "size", ...}]}`."""
        if request.method != "GET" or request.route != "/api/tags":
            return None
        scripted = scripted_listing(listing)
        if scripted is not None:
            return scripted
        models = [
            {
                "name": model,
                "model": model,
                "modified_at": CREATED,
                "size": 4_683_087_332,
                "digest": "sha256:" + "0" * 64,
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "7.6B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for model in listing.ids
        ]
        return json_response(200, {"models": models})

    def __call__(self, request: Request, reply: Reply) -> Response:
        if request.method != "POST" or request.path != "/api/chat":
            return json_response(404, "404 page not found")
        if reply.status != 200:
            return json_response(reply.status, reply.body, reply.headers)
        body = request.json() or {}
        model = reply.model or body.get("model", "llama-test")
        if body.get("stream", True):  # Ollama streams unless told not to
            pieces = reply.raw if reply.raw is not None else self.stream(reply, model)
            return Response(
                200, {"Content-Type": "application/x-ndjson", **reply.headers}, pieces=pieces
            )
        return json_response(200, self.final(reply, model, "".join(reply.tokens)), reply.headers)

    def stream(self, reply: Reply, model: str) -> list[Piece]:
        pieces: list[Piece] = list(
            token_pieces(
                reply,
                lambda text: line(
                    {
                        "model": model,
                        "created_at": CREATED,
                        "message": {"role": "assistant", "content": text},
                        "done": False,
                    }
                ),
                None,
                lambda: line(
                    {"error": reply.error or "an error was encountered while running the model"}
                ),
            )
        )
        if reply.error_after is not None or (pieces and not isinstance(pieces[-1], bytes)):
            return pieces
        return [*pieces, line(self.final(reply, model, ""))]

    def final(self, reply: Reply, model: str, text: str) -> dict[str, Any]:
        return {
            "model": model,
            "created_at": CREATED,
            "message": {"role": "assistant", "content": text},
            "done_reason": reply.finish_reason,
            "done": True,
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_count": reply.prompt_tokens,
            "prompt_eval_duration": 342546000,
            "eval_count": reply.completion,
            "eval_duration": 4535599000,
        }


def ollama_server() -> FakeServer:
    return FakeServer(OllamaFake())
