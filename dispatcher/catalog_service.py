"""The broker's catalog: built from the config, refined by workers and live discovery, and
the answers to the client's catalog queries (capabilities, find_providers, models,
count_tokens).

Live discovery makes HTTP requests, so it runs on a background thread; the broker's loop
only reads the snapshots it leaves behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from catalog.capabilities import CatalogError, shipped
from catalog.cost import estimate_cost, job_cost
from catalog.discovery import DEFAULT_TTL, DiscoveryCache
from catalog.registry import Catalog, ProviderInfo
from catalog.tokens import local_count
from dispatcher.config import Config
from dispatcher.routing import Candidate
from protocol import messages as m
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import new_job_id, validate_messages

QUERIES = m.CATALOG_QUERIES
# Kinds whose workers count exactly (llama-server /tokenize, Anthropic count_tokens);
# OpenAI models are counted in the broker with tiktoken when it is installed.
WORKER_COUNTED = ("llamacpp", "anthropic")
STALE_RETRY = 60.0  # seconds before a source whose last fetch failed is tried again
COUNT_WAIT = 10.0  # seconds a count_tokens query waits for the workers' exact counts
CountOn = Callable[[str, str, list[dict[str, Any]], str], bool]


@dataclass(slots=True)
class _Counting:
    msg: m.CatalogQuery
    send: Callable[[m.Message], Any]
    result: dict[str, Any]  # the reply being completed
    waiting: dict[str, int]  # request sent to a worker -> index in result["counts"]
    deadline: float


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
        self.counting: dict[str, _Counting] = {}  # count_tokens queries waiting for workers
        self.ttl = ttl
        self.next_discovery: float | None = None  # broker clock of the next TTL run
        self.log = structlog.get_logger("llmrelay.catalog").bind(component="broker")

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
                for snap in self.catalog.discover(refresh=refresh):
                    if snap.stale:
                        self.log.warning("catalog_stale", provider=snap.provider, error=snap.error)
                    else:
                        self.log.info(
                            "catalog_fetched", provider=snap.provider, models=len(snap.models)
                        )
            except Exception:  # discovery must never take the broker down
                self.log.exception("catalog_discovery_failed")
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

    def ask(
        self,
        msg: m.CatalogQuery,
        send: Callable[[m.Message], Any],
        now: float,
        count_on: CountOn | None = None,
    ) -> None:
        """Answer now; a refresh once the background fetch has finished (flush); a token
        count once the workers that can count exactly have answered (counted) or
        COUNT_WAIT has passed (flush).

        `count_on(provider, model, messages, request)` sends an exact-count request to a
        worker of `provider` and says whether one was there to ask."""
        if msg.query == "models" and msg.args.get("refresh") and self.catalog.cache is not None:
            self.start(refresh=True, force=True)
            self.pending.append((msg, send))
            return
        if msg.query == "count_tokens" and count_on is not None:
            try:
                result = self.answer(msg.query, msg.args)
            except ProviderError as exc:
                send(m.CatalogReply(request=msg.request, error=exc.to_wire()))
                return
            waiting = {}
            for index, entry in enumerate(result["counts"]):
                provider, _, model = entry["candidate"].partition(":")
                kind = self.config.providers[provider].kind
                request = new_job_id()
                if kind in WORKER_COUNTED and count_on(
                    provider, model, msg.args["messages"], request
                ):
                    waiting[request] = index
            if waiting:
                self.counting[msg.request] = _Counting(msg, send, result, waiting, now + COUNT_WAIT)
                return
            send(m.CatalogReply(request=msg.request, result=result))
            return
        send(self.reply(msg))

    def counted(self, reply: m.TokenCount) -> None:
        """A worker's exact count for a pending count_tokens query."""
        for key, pending in list(self.counting.items()):
            index = pending.waiting.pop(reply.request, None)
            if index is None:
                continue
            entry = pending.result["counts"][index]
            if reply.tokens is not None:
                entry.update(tokens=reply.tokens, exact=True, method=reply.method or "exact")
                provider, _, model = entry["candidate"].partition(":")
                caps = self.catalog.capabilities(provider, model).caps
                max_tokens = pending.msg.args.get("max_tokens")
                limit = max_tokens if isinstance(max_tokens, int) else None
                entry["estimated_cost"] = estimate_cost(caps, reply.tokens, limit).usd
            else:
                entry["note"] = f"no exact count: {reply.error}"
            if not pending.waiting:
                del self.counting[key]
                pending.send(m.CatalogReply(request=pending.msg.request, result=pending.result))
            return

    def reply(self, msg: m.CatalogQuery) -> m.CatalogReply:
        try:
            result = self.answer(msg.query, msg.args)
        except ProviderError as exc:
            return m.CatalogReply(request=msg.request, error=exc.to_wire())
        return m.CatalogReply(request=msg.request, result=result)

    def flush(self, now: float) -> None:
        """Send the refresh answers whose fetch has finished, and the token counts whose
        workers did not answer in time (their entries stay estimates, with a note)."""
        for key, overdue in list(self.counting.items()):
            if now >= overdue.deadline:
                del self.counting[key]
                for index in overdue.waiting.values():
                    note = f"no exact count: the worker did not answer in {COUNT_WAIT:g}s"
                    overdue.result["counts"][index]["note"] = note
                overdue.send(m.CatalogReply(request=overdue.msg.request, result=overdue.result))
        with self.lock:
            busy = self.running
        if self.next_discovery is None:
            self.next_discovery = now + self.ttl
        elif now >= self.next_discovery and not busy:
            # Past the TTL: refetch (the cache decides per provider; a failed source was
            # marked stale and is retried within a minute).
            stale = any(s.stale for s in self.catalog.live.values())
            self.next_discovery = now + (min(self.ttl, STALE_RETRY) if stale else self.ttl)
            self.start()
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
