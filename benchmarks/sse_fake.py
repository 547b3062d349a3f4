"""A fast fake OpenAI chat endpoint for benchmarks: uvicorn, raw ASGI, SSE streaming.

The test fakes (tests/fakes/) favour byte-level control over speed; a benchmark needs the
opposite, a server cheap enough that it is not what is measured. It answers every chat request
with the same 20-token answer; a model whose name starts with "fail" always gets a 500.

    python -m benchmarks.sse_fake --port 8000 [--cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

TOKENS = [f"tok{i} " for i in range(20)]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def stream_body(model: str, usage: bool) -> list[bytes]:
    pieces = [chunk(model, {"role": "assistant", "content": ""})]
    pieces += [chunk(model, {"content": t}) for t in TOKENS]
    pieces.append(chunk(model, {}, "stop"))
    if usage:
        totals = {"prompt_tokens": 7, "completion_tokens": len(TOKENS), "total_tokens": 27}
        last = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": totals,
        }
        pieces.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    pieces.append(b"data: [DONE]\n\n")
    return pieces


def whole(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "".join(TOKENS)},
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(TOKENS), "total_tokens": 27},
        }
    ).encode()


async def respond(send: Send, status: int, body: bytes, kind: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path.endswith("/models"):
        await respond(
            send,
            200,
            json.dumps(
                {
                    "object": "list",
                    "data": [{"id": "bench", "object": "model", "created": 1, "owned_by": "bench"}],
                }
            ).encode(),
        )
        return
    if not path.endswith("/chat/completions"):
        await respond(send, 404, b'{"error": {"message": "not found"}}')
        return
    body = json.loads(raw or b"{}")
    model = str(body.get("model", "bench"))
    if model.startswith("fail"):
        error = {"error": {"message": "scripted failure", "type": "server_error", "code": None}}
        await respond(send, 500, json.dumps(error).encode())
        return
    if not body.get("stream"):
        await respond(send, 200, whole(model))
        return
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
        }
    )
    for piece in stream_body(model, usage):
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    # Idle keep-alive connections stay open for 5 minutes (uvicorn's default is 5 s), as long
    # as the benchmark's httpx client keeps them (benchmarks/latency.py): the benchmarks
    # interleave paths, so a client sits idle for longer than 5 s between its runs, and a pool
    # rebuilt under load then stayed slow for a whole run (290 against 690 jobs/s).
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_keep_alive=300,
    )


if __name__ == "__main__":
    main()
