"""The broker's catalog as client calls: capabilities, find_providers, models, count_tokens.

A mixin of `AsyncClient` (see catalog/ and docs/catalog.md for what the broker answers):
each call sends one `catalog` query and waits for the reply carrying the same `request` id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from protocol import messages as m
from protocol.errors import ErrorCategory, ProtocolViolation, ProviderError
from protocol.job import new_job_id


class CatalogCalls:
    # Provided by AsyncClient, which answers `catalog_waiters` from its receiver.
    endpoint: str
    catalog_waiters: dict[str, asyncio.Future[m.CatalogReply]]

    async def _send(self, msg: m.Message) -> None:
        raise NotImplementedError

    async def _catalog(self, query: str, args: dict[str, Any], timeout: float) -> Any:
        request = new_job_id()
        waiter: asyncio.Future[m.CatalogReply] = asyncio.get_running_loop().create_future()
        self.catalog_waiters[request] = waiter
        await self._send(m.CatalogQuery(request=request, query=query, args=args))
        try:
            reply = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise ProviderError(
                ErrorCategory.NETWORK, f"no catalog reply from {self.endpoint} ({query})"
            ) from None
        finally:
            self.catalog_waiters.pop(request, None)
        if reply.error is not None:
            raise ProviderError.from_wire(reply.error)
        return reply.result

    async def capabilities(self, provider: str, model: str, timeout: float = 5.0) -> Any:
        """What `provider:model` can do and costs: {capabilities, sources, stale, ...}."""
        return await self._catalog("capabilities", {"provider": provider, "model": model}, timeout)

    async def find_providers(
        self,
        capability: str,
        *,
        min_context: int | None = None,
        model: str | None = None,
        timeout: float = 5.0,
    ) -> Any:
        """Every configured provider:model having `capability` (vision, tools, json_object,
        json_schema, streaming, system_prompt), optionally with a window of min_context."""
        args: dict[str, Any] = {"capability": capability}
        if min_context is not None:
            args["min_context"] = min_context
        if model is not None:
            args["model"] = model
        return await self._catalog("find_providers", args, timeout)

    async def models(
        self,
        *,
        provider: str | None = None,
        capability: str | None = None,
        refresh: bool = False,
        timeout: float = 60.0,
    ) -> Any:
        """{models: [entry...], written, live: {provider: {fetched_at, stale, error}}};
        `refresh` refetches every live source first."""
        args: dict[str, Any] = {"refresh": refresh}
        if provider is not None:
            args["provider"] = provider
        if capability is not None:
            args["capability"] = capability
        return await self._catalog("models", args, timeout)

    async def count_tokens(
        self,
        *,
        model: str | None = None,
        route: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        max_tokens: int | None = None,
        timeout: float = 10.0,
    ) -> Any:
        """Prompt tokens per candidate of `model` ("provider:model") or `route`, each
        {tokens, exact, method, context_window, estimated_cost}; estimates say so."""
        if (model is None) == (route is None):
            raise ProtocolViolation("count_tokens: give exactly one of model or route")
        if messages is None:
            if prompt is None:
                raise ProtocolViolation("count_tokens: give messages=[...] or prompt='...'")
            messages = [{"role": "user", "content": prompt}]
        args: dict[str, Any] = {"target": model or route, "messages": messages}
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        return await self._catalog("count_tokens", args, timeout)
