"""The connected workers, indexed by routing id and by provider.

Everything the core asks about workers goes through here: who serves provider P (O(1) to find
them), what they can honour, which one has the most free capacity, who went silent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from dispatcher.jobs import WorkerState


class WorkerBook:
    def __init__(self, static_features: Mapping[str, frozenset[str]]) -> None:
        # What a provider's backend kind honours before any worker of it registers.
        self.static_features = dict(static_features)
        self.by_identity: dict[bytes, WorkerState] = {}
        self.by_provider: dict[str, dict[bytes, WorkerState]] = {}
        self.live_features: dict[str, frozenset[str]] = {}  # union over registered workers

    def __len__(self) -> int:
        return len(self.by_identity)

    def __iter__(self) -> Iterator[WorkerState]:
        return iter(list(self.by_identity.values()))

    def get(self, identity: bytes) -> WorkerState | None:
        return self.by_identity.get(identity)

    def add(self, worker: WorkerState) -> None:
        self.remove(worker.identity)
        self.by_identity[worker.identity] = worker
        self.by_provider.setdefault(worker.provider, {})[worker.identity] = worker
        self._refresh_features(worker.provider)

    def remove(self, identity: bytes) -> WorkerState | None:
        worker = self.by_identity.pop(identity, None)
        if worker is not None:
            peers = self.by_provider[worker.provider]
            del peers[identity]
            if not peers:
                del self.by_provider[worker.provider]
            self._refresh_features(worker.provider)
        return worker

    def _refresh_features(self, provider: str) -> None:
        peers = self.by_provider.get(provider)
        if peers:
            self.live_features[provider] = frozenset().union(*(w.features for w in peers.values()))
        else:
            self.live_features.pop(provider, None)

    def of(self, provider: str) -> list[WorkerState]:
        peers = self.by_provider.get(provider)
        return list(peers.values()) if peers else []

    def count(self, provider: str) -> int:
        return len(self.by_provider.get(provider, ()))

    def features_of(self, provider: str) -> frozenset[str]:
        """What registered workers of `provider` honour, else what its kind honours."""
        live = self.live_features.get(provider)
        if live is not None:
            return live
        return self.static_features.get(provider, frozenset())

    def serves(self, provider: str, model: str) -> bool:
        """Whether a registered worker of `provider` reports `model` (its live model list)."""
        peers = self.by_provider.get(provider)
        if not peers:
            return False
        return any(model in w.model_set for w in peers.values())

    def has_workers(self, provider: str) -> bool:
        return provider in self.by_provider

    def most_free(self, provider: str) -> WorkerState | None:
        """The worker of `provider` with the most free slots (it may have none free)."""
        peers = self.by_provider.get(provider)
        if not peers:
            return None
        return max(peers.values(), key=lambda w: w.free)

    def inflight(self, provider: str) -> tuple[int, float]:
        """Jobs running at `provider` and the sum of their token estimates."""
        count, tokens = 0, 0.0
        for worker in self.by_provider.get(provider, {}).values():
            count += len(worker.jobs)
            tokens += sum(j.est_tokens for j in worker.jobs.values())
        return count, tokens

    def silent_since(self, cutoff: float) -> list[WorkerState]:
        """Workers not heard from since `cutoff` (liveness)."""
        return [w for w in self.by_identity.values() if w.last_seen < cutoff]

    def with_pids(self, pids: set[int]) -> list[WorkerState]:
        return [w for w in self.by_identity.values() if w.pid in pids]

    def running(self) -> int:
        return sum(len(w.jobs) for w in self.by_identity.values())
