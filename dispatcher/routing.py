"""Turn a job's model or route into its ordered fallback chain, removing what cannot run it,
and order that chain at each dispatch by the route's strategy.

At submit (`resolve`): a bare model name is detected (catalog.detect); each candidate is
checked against its provider's parameter schema (catalog.schemas) and capabilities
(catalog.registry: vision, tools, JSON mode, the context window with an exact count where
one is available). A candidate that fails is removed and the result says why; when none is
left the job is rejected naming each candidate and its reason.

At dispatch (`order`): the strategy of the route (`first_healthy` by default) orders the
candidates from their current state (see `CandidateView`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from catalog.detect import Configured, detect
from catalog.registry import Catalog, Entry
from catalog.schemas import check_params, schema_for
from catalog.tokens import TokenCount, local_count
from dispatcher.config import Config
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import FEATURE_VISION, Job

FIRST_AVAILABLE = "first_available"  # config order; skip only providers with no worker
FIRST_HEALTHY = "first_healthy"  # skip unhealthy providers and open circuits
BEST_EFFORT = "best_effort"  # healthy, then degraded, then the rest; by latency within each
STRATEGIES = (FIRST_AVAILABLE, FIRST_HEALTHY, BEST_EFFORT)
DEFAULT_STRATEGY = FIRST_HEALTHY


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


@dataclass(slots=True)
class Resolved:
    candidates: list[Candidate]
    skipped: list[dict[str, str]]  # candidate -> reason it was removed
    dropped: list[dict[str, Any]] = field(default_factory=list)  # candidate -> params dropped
    detected: str | None = None  # how a bare model name was resolved, when it was
    strategy: str = DEFAULT_STRATEGY
    prompt_tokens: TokenCount | None = None

    def notes(self) -> dict[str, Any]:
        """What the job's result reports about these decisions."""
        out: dict[str, Any] = {"strategy": self.strategy}
        if self.dropped:
            out["dropped"] = self.dropped
        if self.detected:
            out["detected"] = self.detected
        return out


def _candidate(route: str, name: str, config: Config) -> Candidate:
    """One route entry; config files are checked at load, but a Config built in code is not."""
    provider, sep, model = name.partition(":")
    if not sep or not model or provider not in config.providers:
        raise ProviderError(
            ErrorCategory.INVALID_REQUEST,
            f"route {route!r} has a bad candidate {name!r}: not 'provider:model' naming one of "
            f"the configured providers {sorted(config.providers)}",
        )
    return Candidate(provider, model)


def configured(config: Config) -> list[Configured]:
    return [Configured(n, s.kind, s.models) for n, s in config.providers.items()]


def _chain(
    job: Job, config: Config, serves: Callable[[str, str], bool] | None
) -> tuple[list[Candidate], str | None]:
    if job.route is not None:
        names = config.routes.get(job.route)
        if names is None:
            raise ProviderError(
                ErrorCategory.INVALID_REQUEST,
                f"unknown route {job.route!r}; known: {sorted(config.routes)}",
            )
        return [_candidate(job.route, name, config) for name in names], None
    assert job.model is not None
    provider, sep, model = job.model.partition(":")
    if sep and provider in config.providers:
        return [Candidate(provider, model)], None
    found = detect(job.model, configured(config), serves)
    if found is None:
        raise ProviderError(
            ErrorCategory.NOT_FOUND,
            f"no provider serves model {job.model!r}; use 'provider:model' or a route "
            f"(providers: {sorted(config.providers)})",
        )
    return [Candidate(p, m) for p, m in found.candidates], found.note


def _json_mode(job: Job) -> str | None:
    fmt = job.params.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    return kind if kind in ("json_object", "json_schema") else None


def _needs_vision(job: Job) -> bool:
    return FEATURE_VISION in job.required_features()


def _unfit(job: Job, entry: Entry, count: TokenCount) -> str | None:
    """Why this provider:model cannot run `job` by its capabilities, or None."""
    caps = entry.caps
    if _needs_vision(job) and not caps.vision:
        return f"{entry.provider}:{entry.model} does not take images (no vision)"
    if "tools" in job.params and not caps.tools:
        return f"{entry.provider}:{entry.model} does not support tools"
    mode = _json_mode(job)
    if mode is not None and not getattr(caps, mode):
        return f"{entry.provider}:{entry.model} has no JSON mode {mode}"
    window = caps.context_window
    wanted = count.tokens + int(job.params.get("max_tokens") or 0)
    if count.exact and window is not None and wanted > window:
        return (
            f"prompt of {count.tokens} tokens ({count.method}) + max_tokens "
            f"{job.params.get('max_tokens', 0)} exceeds {entry.provider}:{entry.model}'s "
            f"context window of {window}"
        )
    return None


def resolve(
    job: Job,
    config: Config,
    catalog: Catalog,
    serves: Callable[[str, str], bool] | None = None,
    features_of: Callable[[str], frozenset[str]] | None = None,
) -> Resolved:
    """The candidates able to honour every parameter, content type and the prompt's length.

    `serves(provider, model)` says whether a live worker of `provider` reports `model`;
    `features_of(provider)` what its connected workers say they honour (a worker may know
    less than its kind's schema, e.g. a build without some option).
    """
    chain, detected = _chain(job, config, serves)
    strategy = config.strategies.get(job.route, DEFAULT_STRATEGY) if job.route else DEFAULT_STRATEGY
    out = Resolved([], [], detected=detected, strategy=strategy)
    for cand in chain:
        spec = config.providers[cand.provider]
        tools_enabled = bool(spec.options.get("enable_tools"))
        try:
            checked = check_params(
                schema_for(spec.kind, tools_enabled=tools_enabled),
                cand.provider,
                job.params,
                drop_unsupported=job.drop_unsupported,
            )
        except ProviderError as exc:
            out.skipped.append({"candidate": str(cand), "reason": exc.message})
            continue
        reported = features_of(cand.provider) if features_of is not None else None
        missing = sorted(set(checked.params) - reported) if reported else []
        if missing:
            why = f"{cand.provider}'s workers report they cannot honour {', '.join(missing)}"
            out.skipped.append({"candidate": str(cand), "reason": why})
            continue
        count = local_count(spec.kind, cand.model, job.messages)
        out.prompt_tokens = out.prompt_tokens or count
        unfit = _unfit(job, catalog.capabilities(cand.provider, cand.model), count)
        if unfit is not None:
            out.skipped.append({"candidate": str(cand), "reason": unfit})
            continue
        if checked.dropped:
            out.dropped.append({"candidate": str(cand), "params": checked.dropped})
        out.candidates.append(cand)
    if not out.candidates:
        reasons = "; ".join(f"{s['candidate']}: {s['reason']}" for s in out.skipped)
        raise ProviderError(ErrorCategory.UNSUPPORTED, f"no candidate can run this job: {reasons}")
    return out


# --- strategies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CandidateView:
    """What a strategy sees of one candidate at dispatch time."""

    has_worker: bool
    state: str = "healthy"  # healthy | degraded | unhealthy (dispatcher.health)
    circuit_allows: bool = True  # closed, or cooled down enough for a probe
    latency: float | None = None  # observed latency (EWMA), None before the first success


RANK = {"healthy": 0, "degraded": 1}


def order(
    strategy: str, candidates: Sequence[Candidate], view: Callable[[Candidate], CandidateView]
) -> list[Candidate]:
    """The candidates `strategy` would try now, most preferred first."""
    views = [(c, view(c)) for c in candidates]
    served = [(c, v) for c, v in views if v.has_worker]
    if strategy == FIRST_AVAILABLE:
        return [c for c, _ in served]
    if strategy == FIRST_HEALTHY:
        # "unhealthy" is an open circuit; once its cool-down is over it admits one probe
        # (circuit_allows), which is how it becomes healthy again.
        return [c for c, v in served if v.circuit_allows]
    if strategy == BEST_EFFORT:
        ranked = sorted(
            served,
            key=lambda cv: (
                RANK.get(cv[1].state, 2),
                cv[1].latency if cv[1].latency is not None else math.inf,
            ),
        )
        return [c for c, _ in ranked]
    raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")


@dataclass(frozen=True, slots=True)
class Unavailable:
    """One candidate that cannot take the job now, and when it can."""

    candidate: str
    state: str  # e.g. "circuit open", "held after rate_limited", "paced (tpm)", "no worker"
    recovers_in: float | None  # seconds; None: unknown (e.g. no worker registered)

    def to_wire(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "state": self.state, "recovers_in": self.recovers_in}


def explain_unavailable(items: Sequence[Unavailable]) -> tuple[str, float | None]:
    """A one-line message naming each candidate, its state and recovery, and retry_after:
    the time to the earliest known recovery."""
    known = [i.recovers_in for i in items if i.recovers_in is not None]
    parts = []
    for i in items:
        when = (
            f"recovers in {i.recovers_in:.1f}s"
            if i.recovers_in is not None
            else "no recovery known"
        )
        parts.append(f"{i.candidate}: {i.state}, {when}")
    message = "no candidate available: " + "; ".join(parts)
    return message, (min(known) if known else None)
