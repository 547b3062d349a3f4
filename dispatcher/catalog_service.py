"""The broker's catalog: built from the config, refined by workers and live discovery, and
the answers to the client's catalog queries (capabilities, find_providers, models,
count_tokens).

Live discovery makes HTTP requests, so it runs on a background thread; the broker's loop
only reads the snapshots it leaves behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from catalog.capabilities import CatalogError, shipped
from catalog.cost import estimate_cost, job_cost
from catalog.discovery import DEFAULT_TTL, DiscoveryCache
from catalog.registry import Catalog, ProviderInfo
from catalog.tokens import local_count
from dispatcher.config import Config
from dispatcher.routing import Candidate
from protocol import messages as m
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import validate_messages

QUERIES = m.CATALOG_QUERIES


def build_catalog(config: Config, cache: DiscoveryCache | None = None) -> Catalog:
    return Catalog(
        (
            ProviderInfo(name, spec.kind, list(spec.models), spec.options, spec.catalog)
            for name, spec in config.providers.items()
        ),
        cache,
    )


class CatalogService:
    def __init__(
        self,
        config: Config,
        *,
        ttl: float = DEFAULT_TTL,
        discover: bool = True,
    ) -> None:
        self.config = config
        self.catalog = build_catalog(config, DiscoveryCache(ttl) if discover else None)
        self.lock = threading.Lock()
        self.running = False  # a discovery thread is at work (guarded by `lock`)
        self.again = False  # run it once more when it ends (a refresh asked meanwhile)
        self.pending: list[tuple[m.CatalogQuery, Callable[[m.Message], Any]]] = []

    def start(self, *, refresh: bool = False, force: bool = False) -> None:
        """Discover in the background. A run already going is left to finish; a forced
        refresh then runs once more after it, so its answer reflects a fetch made after
        the ask."""
        if self.catalog.cache is None:
            return
        with self.lock:
            if self.running:
                self.again = self.again or force
                return
            self.running = True
        threading.Thread(
            target=self._discover, args=(refresh,), name="catalog-discovery", daemon=True
        ).start()

    def _discover(self, refresh: bool) -> None:
        while True:
            try:
                self.catalog.discover(refresh=refresh)
            finally:
                with self.lock:
                    again, self.again = self.again, False
                    self.running = again
            if not again:
                return
            refresh = True

    def cost(self, candidate: Candidate, usage: Any) -> dict[str, Any]:
        """`cost` (USD or None) and `cost_source` (reported | priced | unknown) of a job."""
        caps = self.catalog.capabilities(candidate.provider, candidate.model).caps
        cost = job_cost(caps, usage if isinstance(usage, Mapping) else {})
        return {"cost": cost.usd, "cost_source": cost.source}

    def ask(self, msg: m.CatalogQuery, send: Callable[[m.Message], Any]) -> None:
        """Answer now, or, for a refresh, once the background fetch has finished (flush)."""
        if msg.query == "models" and msg.args.get("refresh") and self.catalog.cache is not None:
            self.start(refresh=True, force=True)
            self.pending.append((msg, send))
            return
        send(self.reply(msg))

    def reply(self, msg: m.CatalogQuery) -> m.CatalogReply:
        try:
            result = self.answer(msg.query, msg.args)
        except ProviderError as exc:
            return m.CatalogReply(request=msg.request, error=exc.to_wire())
        return m.CatalogReply(request=msg.request, result=result)

    def flush(self) -> None:
        """Send the refresh answers whose fetch has finished (called from the broker's tick)."""
        with self.lock:
            busy = self.running
        if self.pending and not busy:
            pending, self.pending = self.pending, []
            for msg, send in pending:
                send(self.reply(msg))

    def answer(self, query: str, args: Mapping[str, Any]) -> Any:
        """The reply to one catalog query; bad arguments raise ProviderError(invalid_request)."""
        try:
            return self._answer(query, args)
        except CatalogError as exc:
            raise ProviderError(ErrorCategory.INVALID_REQUEST, str(exc)) from None

    def _answer(self, query: str, args: Mapping[str, Any]) -> Any:
        cat = self.catalog
        if query == "capabilities":
            return cat.capabilities(_str(args, "provider"), _str(args, "model")).to_wire()
        if query == "find_providers":
            min_context = args.get("min_context")
            if min_context is not None and (not isinstance(min_context, int) or min_context < 1):
                raise CatalogError("min_context must be a positive integer")
            model = args.get("model")
            found = cat.find_providers(
                _str(args, "capability"),
                min_context=min_context,
                model=str(model) if model is not None else None,
            )
            return [e.to_wire() for e in found]
        if query == "models":
            provider = args.get("provider")
            capability = args.get("capability")
            entries = cat.models(
                str(provider) if provider is not None else None,
                str(capability) if capability is not None else None,
            )
            return {"models": [e.to_wire() for e in entries], **cat.status()}
        if query == "count_tokens":
            return self._count(args)
        raise CatalogError(f"unknown catalog query {query!r}; known: {list(QUERIES)}")

    def _count(self, args: Mapping[str, Any]) -> dict[str, Any]:
        messages = validate_messages(args.get("messages"))
        target = _str(args, "target")
        candidates = self.config.routes.get(target) or [target]
        out = []
        for name in candidates:
            provider, sep, model = name.partition(":")
            if not sep or provider not in self.config.providers:
                raise CatalogError(
                    f"count_tokens: {name!r} is neither a route nor 'provider:model' "
                    f"(providers: {sorted(self.config.providers)})"
                )
            kind = self.config.providers[provider].kind
            count = local_count(kind, model, messages)
            caps = self.catalog.capabilities(provider, model).caps
            max_tokens = args.get("max_tokens")
            cost = estimate_cost(
                caps, count.tokens, max_tokens if isinstance(max_tokens, int) else None
            )
            out.append(
                {
                    "candidate": name,
                    **count.to_wire(),
                    "context_window": caps.context_window,
                    "estimated_cost": cost.usd,
                }
            )
        return {"counts": out, "written": shipped().written}


def _str(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{key} is required (a non-empty string)")
    return value
