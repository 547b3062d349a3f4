"""Fake Ollama `/api/chat`: NDJSON lines, a final `"done": true` object, `{"error": ...}` lines."""

from __future__ import annotations

import json
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

CREATED = "2023-08-04T19:22:45.499127Z"


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


class OllamaFake(ChatEndpoint):
    paths = ("/api/chat",)
    not_found = "404 page not found"
    default_model = "llama-test"
    stream_type = "application/x-ndjson"
    streams_by_default = True
    default_models = ("llama-fake:latest", "qwen-fake:7b")

    def models(self, request: Request, listing: ModelList) -> Response | None:
        """`GET /api/tags`: `{"models": [{"name", "model", "modified_at", "size", ...}]}`;
        `POST /api/show` {"model"}: capabilities and model_info (context length)."""
        if request.method == "POST" and request.route == "/api/show":
            return self.show((request.json() or {}).get("model"), listing)
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

    def show(self, model: Any, listing: ModelList) -> Response:
        if listing.status != 200 or model not in listing.ids:
            return json_response(404, {"error": f"model '{model}' not found"})
        vision = "llava" in str(model) or "vision" in str(model)
        return json_response(
            200,
            {
                "modelfile": "",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": "llama"},
                "model_info": {"general.architecture": "llama", "llama.context_length": 8192},
                "capabilities": ["completion", "tools", *(["vision"] if vision else [])],
            },
        )

    def render_stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        return self.stream(reply, model)

    def render_whole(self, reply: Reply, body: dict[str, Any], model: str) -> Any:
        return self.final(reply, model, "".join(reply.tokens))

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
