"""Live model facts from the providers themselves, cached with a TTL, stale data kept.

Sources: OpenRouter `GET /api/v1/models` (context_length, pricing, supported_parameters,
input modalities), Anthropic `GET /v1/models`, Ollama `GET /api/tags` + `POST /api/show`
(capabilities, context length), OpenAI `GET /v1/models` (existence only). llama-server's
`/props` is private to its worker, which reports it at registration instead.

A snapshot is kept per provider in memory and on disk (`$LLMRELAY_CACHE_DIR/catalog/`, else
`~/.cache/llmrelay/catalog/`). Within the TTL the cached snapshot is used; after it, or on an
explicit refresh, it is fetched again; when that fails the last good snapshot stays in use,
marked stale with the error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.capabilities import CatalogError, check_fields

if TYPE_CHECKING:  # httpx is imported when a fetch runs: the broker starts without it
    import httpx

DEFAULT_TTL = 3600.0
FETCH_TIMEOUT = 10.0
MAX_PAGES = 50

OLLAMA_DEFAULT = "http://127.0.0.1:11434"
# kind -> (default base URL, env var of the key): the one definition, read by the workers
# (workers/providers/*) and by discovery. Keys only ever travel in headers.
ENDPOINTS: dict[str, tuple[str, str | None]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "ollama": (OLLAMA_DEFAULT, None),
}


def ollama_host(value: str | None) -> str:
    """OLLAMA_HOST may be `host`, `host:port` or a URL; the port defaults to 11434."""
    if not value:
        return OLLAMA_DEFAULT
    if "://" not in value:
        value = "http://" + value
    scheme, _, rest = value.partition("://")
    host = rest.split("/")[0]
    if ":" not in host.rsplit("]", 1)[-1]:
        host += ":11434"
    return f"{scheme}://{host.replace('0.0.0.0', '127.0.0.1')}"


ANTHROPIC_VERSION = "2023-06-01"
LISTING_NEEDS_KEY = ("openai", "anthropic")  # OpenRouter's and Ollama's lists are open

Models = dict[str, dict[str, Any]]  # model id -> capability fields it refines


@dataclass(frozen=True, slots=True)
class Source:
    """Where one configured provider's live facts come from."""

    provider: str
    kind: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, provider: str, kind: str, options: Mapping[str, Any]) -> Source | None:
        if kind not in ENDPOINTS:
            return None
        default_url, key_env = ENDPOINTS[kind]
        if kind == "ollama":  # the worker's rule: $OLLAMA_HOST, else the local default
            default_url = ollama_host(os.environ.get("OLLAMA_HOST"))
        base = str(options.get("base_url") or default_url).rstrip("/")
        key = options.get("api_key")
        env = options.get("api_key_env") or key_env
        if not key and env:
            key = os.environ.get(str(env))
        if not key and kind in LISTING_NEEDS_KEY:
            return None  # nothing to ask without a key: the shipped data stands
        return cls(provider, kind, base, str(key) if key else None)

    def headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if self.kind == "anthropic":
            return {"x-api-key": self.api_key, "anthropic-version": ANTHROPIC_VERSION}
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass(slots=True)
class Snapshot:
    provider: str
    models: Models
    fetched_at: float  # epoch seconds of the last good fetch (0: never)
    stale: bool = False
    error: str | None = None  # why the last fetch failed, when stale

    def to_wire(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "fetched_at": self.fetched_at,
            "stale": self.stale,
            "error": self.error,
            "models": len(self.models),
        }


class DiscoveryFailed(RuntimeError):
    pass


def _per_million(value: Any) -> float | None:
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return round(price * 1_000_000, 9) if price >= 0 else None


def _openrouter_entry(raw: Mapping[str, Any]) -> dict[str, Any]:
    arch = raw.get("architecture") or {}
    pricing = raw.get("pricing") or {}
    top = raw.get("top_provider") or {}
    supported = set(raw.get("supported_parameters") or [])
    values: dict[str, Any] = {
        "vision": "image" in (arch.get("input_modalities") or []),
        "tools": "tools" in supported,
        "json_object": "response_format" in supported,
        "json_schema": "structured_outputs" in supported,
        "context_window": raw.get("context_length") or top.get("context_length"),
        "max_output_tokens": top.get("max_completion_tokens"),
        "input_price": _per_million(pricing.get("prompt")),
        "output_price": _per_million(pricing.get("completion")),
        "cached_input_price": _per_million(pricing.get("input_cache_read")),
        "cache_write_price": _per_million(pricing.get("input_cache_write")),
    }
    return {k: v for k, v in values.items() if v is not None}


def _anthropic_entry(raw: Mapping[str, Any]) -> dict[str, Any]:
    values = {
        "context_window": raw.get("max_input_tokens"),
        "max_output_tokens": raw.get("max_tokens"),
    }
    return {k: v for k, v in values.items() if isinstance(v, int) and v > 0}


class Fetcher:
    """One provider's live model list through a short-lived HTTP client."""

    def __init__(self, source: Source, client: httpx.Client) -> None:
        self.source = source
        self.client = client

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        resp = self.client.get(
            f"{self.source.base_url}{path}", params=params, headers=self.source.headers()
        )
        if not resp.is_success:
            raise DiscoveryFailed(f"GET {path}: HTTP {resp.status_code}")
        return resp.json()

    def fetch(self) -> Models:
        kind = self.source.kind
        if kind == "openrouter":
            return self._paged("/models", _openrouter_entry, offset_paging=True)
        if kind == "anthropic":
            return self._paged("/v1/models", _anthropic_entry, offset_paging=False)
        if kind == "openai":
            return self._paged("/models", lambda raw: {}, offset_paging=False)
        if kind == "ollama":
            return self._ollama()
        raise DiscoveryFailed(f"no live source for kind {kind!r}")

    def _paged(
        self,
        path: str,
        entry: Callable[[Mapping[str, Any]], dict[str, Any]],
        *,
        offset_paging: bool,
    ) -> Models:
        models: Models = {}
        params: dict[str, str] = {"limit": "1000"}
        for _ in range(MAX_PAGES):
            body = self.get(path, params)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise DiscoveryFailed(f"GET {path}: no `data` list in the answer")
            for raw in data:
                if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    models[raw["id"]] = entry(raw)
            links = body.get("links") or {}
            if offset_paging and isinstance(links, dict) and links.get("next") and data:
                params = {"limit": "1000", "offset": str(len(models))}
            elif not offset_paging and body.get("has_more") and body.get("last_id"):
                params = {"limit": "1000", "after_id": str(body["last_id"])}
            else:
                return models
        raise DiscoveryFailed(f"GET {path}: more than {MAX_PAGES} pages")

    def _ollama(self) -> Models:
        body = self.get("/api/tags")
        entries = body.get("models") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise DiscoveryFailed("GET /api/tags: no `models` list in the answer")
        models: Models = {}
        for raw in entries:
            name = raw.get("name") if isinstance(raw, dict) else None
            if isinstance(name, str):
                models[name] = self._ollama_show(name)
        return models

    def _ollama_show(self, name: str) -> dict[str, Any]:
        resp = self.client.post(f"{self.source.base_url}/api/show", json={"model": name})
        if not resp.is_success:
            return {}  # an older server or a model being pulled: the list entry still counts
        body = resp.json()
        if not isinstance(body, dict):
            return {}
        values: dict[str, Any] = {}
        caps = body.get("capabilities")
        if isinstance(caps, list):
            values["vision"] = "vision" in caps
            values["tools"] = "tools" in caps
        info = body.get("model_info") or {}
        if isinstance(info, dict):
            for key, value in info.items():
                if key.endswith(".context_length") and isinstance(value, int) and value > 0:
                    values["context_window"] = value
        return values


def fetch_models(source: Source, timeout: float = FETCH_TIMEOUT) -> Models:
    """Fetch and validate; raise DiscoveryFailed with a one-line reason."""
    import httpx

    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            raw = Fetcher(source, client).fetch()
        return {
            model: check_fields(values, f"{source.provider} live {model}")
            for model, values in raw.items()
        }
    except httpx.HTTPError as exc:
        raise DiscoveryFailed(f"{type(exc).__name__}: {exc}") from None
    except (ValueError, CatalogError) as exc:
        raise DiscoveryFailed(f"bad answer: {exc}") from None


def cache_dir() -> Path:
    root = os.environ.get("LLMRELAY_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "llmrelay"
    return base / "catalog"


class DiscoveryCache:
    """Snapshots per provider: fresh within `ttl`, refetched after, stale on failure."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        directory: Path | None = None,
        fetch: Callable[[Source], Models] = fetch_models,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.directory = directory if directory is not None else cache_dir()
        self.fetch = fetch
        self.clock = clock
        self.snapshots: dict[str, Snapshot] = {}

    def _file(self, provider: str) -> Path:
        return self.directory / f"{provider}.json"

    def _load(self, provider: str) -> Snapshot | None:
        try:
            data = json.loads(self._file(provider).read_text())
            models = {str(k): dict(v) for k, v in data["models"].items()}
            return Snapshot(provider, models, float(data["fetched_at"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no cache yet, or a damaged one: fetch afresh

    def _save(self, snap: Snapshot) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._file(snap.provider).with_suffix(".tmp")
            tmp.write_text(json.dumps({"fetched_at": snap.fetched_at, "models": snap.models}))
            tmp.replace(self._file(snap.provider))
        except OSError:
            pass  # a read-only home still gets live data, just not across runs

    def get(self, source: Source, *, refresh: bool = False) -> Snapshot:
        now = self.clock()
        snap = self.snapshots.get(source.provider) or self._load(source.provider)
        if snap is not None and not refresh and not snap.stale and now - snap.fetched_at < self.ttl:
            self.snapshots[source.provider] = snap
            return snap
        try:
            models = self.fetch(source)
        except DiscoveryFailed as exc:
            kept = snap or Snapshot(source.provider, {}, 0.0)
            kept.stale, kept.error = True, str(exc)
            self.snapshots[source.provider] = kept
            return kept
        fresh = Snapshot(source.provider, models, now)
        self.snapshots[source.provider] = fresh
        self._save(fresh)
        return fresh
