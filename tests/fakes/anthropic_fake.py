"""Fake Anthropic Messages API (`POST /v1/messages`): `event:` + `data:` SSE, pings, errors."""

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
    page,
    scripted_listing,
    token_pieces,
)

NATIVE_STOP = {"stop": "end_turn", "length": "max_tokens"}  # Reply speaks OpenAI's names
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
OVERLOADED = {"type": "overloaded_error", "message": "Overloaded"}


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


class AnthropicFake(ChatEndpoint):
    paths = ("/v1/messages",)
    not_found = error_body("not_found_error", "Not found")
    default_model = "claude-test"
    request_id = ("request-id", "req_fake")
    default_models = ("claude-fake-1", "claude-fake-2")

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key

    @staticmethod
    def count_tokens(request: Request) -> Response:
        """`{"input_tokens": N}`; the fake's tokenizer: one token per whitespace-separated word
        of the system prompt and every text block."""
        body = request.json() or {}
        texts = [body.get("system") or ""]
        for turn in body.get("messages") or []:
            blocks = turn.get("content")
            if isinstance(blocks, str):
                texts.append(blocks)
            else:
                texts += [b.get("text", "") for b in blocks or [] if b.get("type") == "text"]
        return json_response(200, {"input_tokens": sum(len(t.split()) for t in texts)})

    def models(self, request: Request, listing: ModelList) -> Response | None:
        """`GET /v1/models?limit=&after_id=`: `{"data", "has_more", "first_id", "last_id"}`;
        also `POST /v1/messages/count_tokens` (not from the Reply queue either)."""
        if request.method == "POST" and request.route == "/v1/messages/count_tokens":
            return self.authorize(request) or self.count_tokens(request)
        if request.method != "GET" or request.route != "/v1/models":
            return None
        denied = self.authorize(request)
        if denied is not None:
            return denied
        scripted = scripted_listing(listing)
        if scripted is not None:
            return scripted
        after = request.query("after_id")
        offset = listing.ids.index(after) + 1 if after in listing.ids else 0
        limit = int(request.query("limit") or 20)  # the API's default page is 20
        if listing.page_size is not None:
            limit = min(limit, listing.page_size)
        ids, more = page(listing.ids, offset, limit)
        data = [
            {
                "id": model,
                "type": "model",
                "display_name": model.replace("-", " ").title(),
                "created_at": "2025-02-19T00:00:00Z",
                "max_input_tokens": 200000,
                "max_tokens": 64000,
            }
            for model in ids
        ]
        first, last = (ids[0], ids[-1]) if ids else (None, None)
        return json_response(
            200, {"data": data, "has_more": more, "first_id": first, "last_id": last}
        )

    def authorize(self, request: Request) -> Response | None:
        """The version header and the key, as the API checks them on every endpoint."""
        if "anthropic-version" not in request.headers:
            return json_response(
                400, error_body("invalid_request_error", "anthropic-version: header is required")
            )
        # The SDK may authenticate with x-api-key or with a bearer token: accept both.
        given = request.headers.get("x-api-key") or request.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if self.api_key and given != self.api_key:
            return json_response(401, error_body("authentication_error", "invalid x-api-key"))
        return None

    def render_stream(self, reply: Reply, body: dict[str, Any], model: str) -> list[Piece]:
        return self.stream(reply, model)

    def render_whole(self, reply: Reply, body: dict[str, Any], model: str) -> Any:
        return self.message(reply, model)

    def stream(self, reply: Reply, model: str) -> list[Piece]:
        start = self.message(reply, model, streaming=True)
        pieces: list[Piece] = [
            event("message_start", {"type": "message_start", "message": start}),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            PING,
        ]
        pieces += token_pieces(
            reply,
            lambda text: event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            ),
            PING,
            lambda: event("error", {"type": "error", "error": reply.error or OVERLOADED}),
        )
        if reply.error_after is not None or not isinstance(pieces[-1], bytes):
            return pieces
        pieces += [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop(reply), "stop_sequence": None},
                    "usage": {"output_tokens": reply.completion},
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
        return pieces

    def stop(self, reply: Reply) -> str:
        return NATIVE_STOP.get(reply.finish_reason, reply.finish_reason)

    def message(self, reply: Reply, model: str, streaming: bool = False) -> dict[str, Any]:
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [] if streaming else [{"type": "text", "text": "".join(reply.tokens)}],
            "model": model,
            "stop_reason": None if streaming else self.stop(reply),
            "stop_sequence": None,
            "usage": {
                "input_tokens": reply.prompt_tokens,
                "output_tokens": 1 if streaming else reply.completion,
            },
        }


def anthropic_server(api_key: str | None = None) -> FakeServer:
    return FakeServer(AnthropicFake(api_key))
