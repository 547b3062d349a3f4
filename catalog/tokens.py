"""Token counts for a prompt: exact where the provider's tokenizer is at hand, else an
estimate that says it is one.

Exact sources: llama-server's /tokenize after its chat template and Anthropic's POST
/v1/messages/count_tokens (when a key is set), both asked of the provider's worker
(`Backend.count_prompt`, through the broker's count_tokens query), and tiktoken for OpenAI
models here, when the package and its encoding files are installed (it is optional; without
the files it would download them, which is never done at run time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

CHARS_PER_TOKEN = 4
PER_MESSAGE = 4  # role markers and separators most chat templates add per message
IMAGE_TOKENS = 768  # a rough mid-size image; only ever part of an estimate


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    exact: bool
    method: str  # tokenize | count_tokens | tiktoken | estimate

    def to_wire(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "exact": self.exact, "method": self.method}

    def __str__(self) -> str:
        return f"{self.tokens}" if self.exact else f"~{self.tokens} (estimate)"


def _texts(messages: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    texts: list[str] = []
    images = 0
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    images += 1
    return texts, images


def estimate(messages: Sequence[dict[str, Any]]) -> TokenCount:
    texts, images = _texts(messages)
    chars = sum(len(t) for t in texts)
    tokens = -(-chars // CHARS_PER_TOKEN) + PER_MESSAGE * len(messages) + IMAGE_TOKENS * images
    return TokenCount(tokens, False, "estimate")


class _NoDownload(OSError):
    pass


@cache
def _encoding(model: str) -> Any:
    """tiktoken's encoding for `model` from its local cache, or None; looked up once per
    model (a failed import is not cached by Python, and the broker asks on every submit).

    On a cache miss tiktoken would download the file, inside the broker's loop on every job
    (each try stalling it for a DNS timeout offline); its fetch is refused here instead.
    """
    try:
        import tiktoken
        import tiktoken.load
    except ImportError:
        return None
    fetch = tiktoken.load.read_file
    if not getattr(fetch, "llmrelay_offline", False):

        def offline(blobpath: str) -> bytes:
            if blobpath.startswith(("http://", "https://")):
                raise _NoDownload(f"not downloading {blobpath} at run time")
            return fetch(blobpath)

        offline.llmrelay_offline = True  # type: ignore[attr-defined]
        tiktoken.load.read_file = offline
    try:
        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception:  # no cached encoding file: not exact, say so
        return None


def tiktoken_count(model: str, messages: Sequence[dict[str, Any]]) -> TokenCount | None:
    """OpenAI's count for `model` (text parts; 3 tokens per message + 3 to prime the reply,
    as OpenAI's cookbook counts chat prompts), or None without tiktoken or its files."""
    encoding = _encoding(model)
    if encoding is None:
        return None
    texts, images = _texts(messages)
    if images:
        return None  # image tokens depend on size and detail: only an estimate is honest
    tokens = sum(len(encoding.encode(t, disallowed_special=())) for t in texts)
    return TokenCount(tokens + 3 * len(messages) + 3, True, "tiktoken")


def local_count(kind: str, model: str, messages: Sequence[dict[str, Any]]) -> TokenCount:
    """The best count without asking a server: tiktoken for OpenAI, else an estimate."""
    if kind == "openai":
        exact = tiktoken_count(model, messages)
        if exact is not None:
            return exact
    return estimate(messages)
