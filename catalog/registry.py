"""The catalog of configured providers: their models and what each can do and cost.

Layers, each refining the one before: shipped data (catalog/data/catalog.toml), live
discovery (catalog.discovery), what a worker reported at registration (llama-server's
/props: context window, vision), and the provider's `catalog` table in the config file.
It knows every configured provider, whether or not a worker of it is connected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from catalog.capabilities import FLAGS, Capabilities, CatalogError, check_fields, shipped
from catalog.discovery import DiscoveryCache, Snapshot, Source

MAX_CACHED = 100_000  # bound on remembered (provider, model) lookups


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What the catalog needs of one configured provider."""

    name: str
    kind: str
    models: Sequence[str] = ()
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # model -> capability fields, from the config (`[providers.X.catalog."model"]`);
    # the key "*" applies to every model of the provider
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Entry:
    provider: str
    kind: str
    model: str
    caps: Capabilities
    sources: tuple[str, ...]  # shipped, live, worker, config: what shaped `caps`
    stale: bool = False  # live data is from an earlier fetch; the latest one failed

    def to_wire(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "kind": self.kind,
            "model": self.model,
            "capabilities": self.caps.to_wire(),
            "sources": list(self.sources),
            "stale": self.stale,
        }


def check_overrides(provider: str, raw: Any) -> dict[str, dict[str, Any]]:
    """A provider's config `catalog` table, validated (names the bad key and provider)."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"providers.{provider}.catalog: must be a table of model tables")
    out: dict[str, dict[str, Any]] = {}
    for model, values in raw.items():
        where = f'providers.{provider}.catalog."{model}"'
        if not isinstance(values, Mapping):
            raise CatalogError(f"{where}: must be a table")
        out[str(model)] = check_fields(values, where)
    return out


class Catalog:
    def __init__(self, providers: Iterable[ProviderInfo], cache: DiscoveryCache | None = None):
        self.providers = {p.name: p for p in providers}
        self.cache = cache
        self.live: dict[str, Snapshot] = {}
        self.worker_models: dict[str, set[str]] = {}
        self.worker_facts: dict[str, dict[str, Any]] = {}
        # (provider, model) -> Entry, for what has not changed since (live data or a
        # worker's facts replace it); the broker looks up every candidate of every submit
        self._entries: dict[tuple[str, str], Entry] = {}
        for p in self.providers.values():
            check_overrides(p.name, p.overrides)

    # --- refining -------------------------------------------------------------------------

    def sources(self) -> list[Source]:
        found = (Source.of(p.name, p.kind, p.options) for p in self.providers.values())
        return [s for s in found if s is not None]

    def discover(self, *, refresh: bool = False, only: str | None = None) -> list[Snapshot]:
        """Fetch (or take from the cache) every live source; never raises for a provider."""
        if self.cache is None:
            return []
        snaps = []
        for source in self.sources():
            if only is None or source.provider == only:
                snap = self.cache.get(source, refresh=refresh)
                self.live[source.provider] = snap
                self._entries = {}
                snaps.append(snap)
        return snaps

    def from_worker(self, provider: str, models: Iterable[str], info: Mapping[str, Any]) -> None:
        """What a registering worker said: its models, and for llama.cpp its /props facts."""
        self.worker_models[provider] = set(models)
        facts: dict[str, Any] = {}
        window = info.get("context_window")
        if isinstance(window, int) and window > 0:
            facts["context_window"] = window
        modalities = info.get("modalities")
        if isinstance(modalities, Mapping) and "vision" in modalities:
            facts["vision"] = bool(modalities["vision"])
        if info.get("tools_enabled") is not None:
            facts["tools"] = bool(info["tools_enabled"])
        self.worker_facts[provider] = facts
        self._entries = {}

    # --- queries --------------------------------------------------------------------------

    def _provider(self, provider: str) -> ProviderInfo:
        try:
            return self.providers[provider]
        except KeyError:
            raise CatalogError(
                f"unknown provider {provider!r}; configured: {sorted(self.providers)}"
            ) from None

    def capabilities(self, provider: str, model: str) -> Entry:
        # Discovery (another thread) replaces the dict when it changes the data: an entry
        # computed meanwhile lands in the discarded one.
        entries = self._entries
        known = entries.get((provider, model))
        if known is not None:
            return known
        entry = self._capabilities(provider, model)
        if len(entries) < MAX_CACHED:
            entries[(provider, model)] = entry
        return entry

    def _capabilities(self, provider: str, model: str) -> Entry:
        info = self._provider(provider)
        data = shipped()
        caps = data.lookup(info.kind, model)
        sources = ["shipped"]
        snap = self.live.get(provider)
        stale = False
        if snap is not None and model in snap.models:
            caps = caps.merged(snap.models[model], f"{provider} live {model}")
            sources.append("live")
            stale = snap.stale
        facts = self.worker_facts.get(provider)
        if facts:
            caps = caps.merged(facts, f"{provider} worker")
            sources.append("worker")
        for key in ("*", model):
            if key in info.overrides:
                caps = caps.merged(info.overrides[key], f"[providers.{provider}.catalog]")
                if "config" not in sources:
                    sources.append("config")
        return Entry(provider, info.kind, model, caps, tuple(sources), stale)

    def model_names(self, provider: str) -> list[str]:
        info = self._provider(provider)
        names = dict.fromkeys(info.models)
        names.update(dict.fromkeys(m for m in info.overrides if m != "*"))
        snap = self.live.get(provider)
        if snap is not None:
            names.update(dict.fromkeys(snap.models))
        names.update(dict.fromkeys(sorted(self.worker_models.get(provider, ()))))
        return list(names)

    def models(self, provider: str | None = None, capability: str | None = None) -> list[Entry]:
        if capability is not None and capability not in FLAGS:
            raise CatalogError(f"unknown capability {capability!r}; known: {list(FLAGS)}")
        names = [provider] if provider is not None else list(self.providers)
        entries = [self.capabilities(p, m) for p in names for m in self.model_names(p)]
        return [e for e in entries if capability is None or e.caps.has(capability)]

    def find_providers(
        self, capability: str, *, min_context: int | None = None, model: str | None = None
    ) -> list[Entry]:
        """Every provider:model having `capability` (and at least `min_context` tokens)."""
        found = []
        for entry in self.models(capability=capability):
            if model is not None and entry.model != model:
                continue
            window = entry.caps.context_window
            if min_context is not None and (window is None or window < min_context):
                continue
            found.append(entry)
        return found

    def status(self) -> dict[str, Any]:
        return {
            "written": shipped().written,
            "live": {name: snap.to_wire() for name, snap in self.live.items()},
        }
