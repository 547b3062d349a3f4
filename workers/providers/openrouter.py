"""OpenRouter: the OpenAI chat format plus its quirks.

Its own parts: `: OPENROUTER PROCESSING` comments (the shared SSE decoder skips them), usage
always sent with a `cost`, mid-stream errors as a chunk with `error` + `finish_reason:
"error"` whose `code` may be a number (the HTTP status) or a string, 402 for credits, 400
`model_not_found`, and `provider.require_parameters` so that a parameter the routed model
cannot honour is refused instead of ignored (OpenRouter's default is to drop it silently).
Options: as OpenAI, plus referer, title, provider (dict merged into the routing preferences).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from catalog.discovery import ENDPOINTS
from catalog.schemas import SCHEMAS, schema_features
from protocol.errors import ErrorCategory as C
from protocol.job import Job
from protocol.schema import Key
from workers import options
from workers.classify import ErrorTable
from workers.http_mapping import ErrorInfo
from workers.providers.openai import OpenAIBackend
from workers.ratelimit import GENERIC, OPENAI

ERRORS = ErrorTable(
    codes={
        # error.metadata.error_type
        "context_length_exceeded": C.CONTEXT_LENGTH,
        "max_tokens_exceeded": C.CONTEXT_LENGTH,
        "token_limit_exceeded": C.CONTEXT_LENGTH,
        "authentication": C.AUTH,
        "permission_denied": C.PERMISSION,
        "payment_required": C.QUOTA_EXHAUSTED,
        "rate_limit_exceeded": C.RATE_LIMITED,
        "provider_overloaded": C.OVERLOADED,
        "provider_unavailable": C.SERVER_ERROR,
        "not_found": C.NOT_FOUND,
        "content_policy_violation": C.CONTENT_FILTER,
        "refusal": C.CONTENT_FILTER,
        "moderation": C.CONTENT_FILTER,  # a 403 whose metadata names flagged input
        "timeout": C.NETWORK,
        "server": C.SERVER_ERROR,
        # error.availability.code
        "model_not_found": C.NOT_FOUND,
        "wrong_endpoint": C.NOT_FOUND,
        "no_endpoints": C.NOT_FOUND,
        "model_deprecated": C.NOT_FOUND,
        "model_unavailable_upstream": C.NOT_FOUND,
        "free_variant_ended": C.NOT_FOUND,
        "constraint_filtered": C.NOT_FOUND,
        "privacy_restricted": C.NOT_FOUND,
        "region_restricted": C.PERMISSION,
        "capacity_exhausted": C.OVERLOADED,
        "temporarily_unavailable": C.OVERLOADED,
        # string codes seen in mid-stream chunks
        "server_error": C.SERVER_ERROR,
    },
    phrases=(
        # 402 bodies, also seen inside 200 streams where no status tells them apart:
        # "Insufficient credits. Add more using https://openrouter.ai/credits" and
        # "This request requires more credits, or fewer max_tokens. ... can only afford N."
        ("insufficient credits", C.QUOTA_EXHAUSTED),
        ("requires more credits", C.QUOTA_EXHAUSTED),
    ),
)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class OpenRouterBackend(OpenAIBackend):
    kind = "openrouter"
    default_base_url, api_key_env = ENDPOINTS["openrouter"]
    errors = ERRORS
    ratelimit_headers = (OPENAI, GENERIC)  # GENERIC: on OpenRouter's own 429s only
    schema = SCHEMAS["openrouter"]
    features = schema_features(SCHEMAS["openrouter"])
    include_usage = False  # usage is always in the final chunk
    # GET /models: {"data": [{"id": ...}], "total_count": N, "links": {"next": url | null}}
    models_params: ClassVar[Mapping[str, str]] = {"limit": "1000"}

    def next_models_page(self, body: Any, seen: int) -> Mapping[str, str] | None:
        links = body.get("links")
        if isinstance(links, dict) and links.get("next"):
            return {"limit": "1000", "offset": str(seen)}
        return None

    option_keys: ClassVar[Mapping[str, Key]] = options.OPENROUTER

    def extra_headers(self) -> dict[str, str]:
        opts = self.spec.options
        headers = super().extra_headers()
        if opts.get("referer"):
            headers["HTTP-Referer"] = str(opts["referer"])
        if opts.get("title"):
            headers["X-Title"] = str(opts["title"])
        return headers

    def build_body(self, job: Job, model: str) -> dict[str, Any]:
        body = super().build_body(job, model)
        provider = {"require_parameters": True, **(self.spec.options.get("provider") or {})}
        body["provider"] = provider
        return body

    def error_info(self, body: Any) -> ErrorInfo | None:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return super().error_info(body)
        code = error.get("code")
        meta = _obj(error.get("metadata"))
        avail = _obj(error.get("availability"))
        status = code if isinstance(code, int) else error.get("http_status")
        codes = (
            avail.get("code"),
            meta.get("error_type"),
            "moderation" if "flagged_input" in meta or "reasons" in meta else None,
            error.get("error_type"),
            code,
        )
        message = error.get("message")
        if not isinstance(message, str):
            message = json.dumps(error)[:500]
        return ErrorInfo(message, codes, status if isinstance(status, int) else None)
