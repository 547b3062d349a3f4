"""A scriptable backend for tests, the demo and dry runs: no network, deterministic output.

Script keys (in the provider's `options`, overridden per job by `job.metadata["mock"]`):
  tokens: list[str]           exact tokens to emit
  token_count: int            emit "t0 ", "t1 ", ... instead (default: echo the last user message)
  first_token_delay: float    seconds before the first token
  token_delay: float          seconds between tokens
  fail: list of rules         {"attempt": N, "after": k, "mode": M, "category": C, "retry_after": s}
      mode "error" (default): raise ProviderError(C) after k tokens of attempt N
      mode "crash": SIGKILL this worker process after k tokens
      mode "hang": freeze the whole process (no heartbeats) after k tokens
      mode "stall": this job stops producing but the process stays alive
  "attempt" may be omitted to fail every attempt; "worker_pid" limits a rule to one process.
  call_log: str               append one JSON line per call ({job, attempt, custom_id}) to this
                              file, so tests can count how often each job really ran
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from protocol.errors import ProviderError
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.backend import Backend, Finish, StreamEvent, TextDelta


def _last_user_text(job: Job) -> str:
    for msg in reversed(job.messages):
        if msg["role"] != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        return " ".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
    return ""


def script_tokens(script: dict[str, Any], job: Job) -> list[str]:
    """The tokens the mock will emit for this job (tests use this to know what to expect)."""
    if "tokens" in script:
        return [str(t) for t in script["tokens"]]
    if "token_count" in script:
        return [f"t{i} " for i in range(int(script["token_count"]))]
    words = _last_user_text(job).split()
    return [w + " " for w in words] or ["(empty) "]


def _log_call(path: str, job: Job, attempt: int) -> None:
    entry = {"job": job.id, "attempt": attempt, "custom_id": job.metadata.get("custom_id")}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write per line: several worker processes share the file
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


class MockBackend(Backend):
    kind = "mock"
    option_keys: ClassVar[Mapping[str, Key]] = options.MOCK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_produced = 0
        self.jobs_started = 0
        self.jobs_cancelled = 0

    def info(self) -> dict[str, Any]:
        return {"context_window": 1 << 20, "test_backend": True}

    def stats(self) -> dict[str, Any]:
        return {
            "tokens_produced": self.tokens_produced,
            "jobs_started": self.jobs_started,
            "jobs_cancelled": self.jobs_cancelled,
        }

    def _rule(self, script: dict[str, Any], attempt: int) -> dict[str, Any] | None:
        for rule in script.get("fail") or []:
            if rule.get("attempt", attempt) != attempt:
                continue
            if rule.get("worker_pid", os.getpid()) != os.getpid():
                continue
            return dict(rule)
        return None

    async def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        script = {**self.spec.options, **(job.metadata.get("mock") or {})}
        tokens = script_tokens(script, job)
        limit = job.params.get("max_tokens")
        finish = "stop"
        if limit is not None and limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        rule = self._rule(script, attempt)
        token_delay = float(script.get("token_delay", 0.0))
        self.jobs_started += 1
        if script.get("call_log"):
            _log_call(str(script["call_log"]), job, attempt)
        produced = 0
        try:
            await asyncio.sleep(float(script.get("first_token_delay", 0.0)))
            for index, token in enumerate(tokens):
                if rule is not None and index == int(rule.get("after", 0)):
                    await self._fail(rule)
                if index:
                    # Even with no delay each token takes its own loop turn, like a provider's
                    # separate reads: the worker then sends it as its own frame, which is what
                    # a scripted token_count means (and what the ceiling benchmark counts).
                    await asyncio.sleep(token_delay)
                produced += 1
                self.tokens_produced += 1
                yield TextDelta(token)
            if rule is not None and int(rule.get("after", 0)) >= len(tokens):
                await self._fail(rule)
        except asyncio.CancelledError:
            self.jobs_cancelled += 1
            raise
        prompt = len(_last_user_text(job).split())
        yield Finish(
            reason=finish,
            model=model,
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": produced,
                "total_tokens": prompt + produced,
            },
        )

    async def _fail(self, rule: dict[str, Any]) -> None:
        mode = rule.get("mode", "error")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            time.sleep(3600)  # blocks the event loop on purpose: no heartbeats either
        if mode == "stall":
            await asyncio.Event().wait()
        raise ProviderError(
            rule.get("category", "server_error"),
            rule.get("message", "injected failure"),
            provider=self.spec.name,
            status_code=rule.get("status_code"),
            retry_after=rule.get("retry_after"),
        )
