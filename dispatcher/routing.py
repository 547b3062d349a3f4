"""Turn a job's model or route into its ordered fallback chain, removing what cannot run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dispatcher.config import Config
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import Job


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}:{self.model}"


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


def _chain(
    job: Job, config: Config, serves: Callable[[str, str], bool] | None = None
) -> list[Candidate]:
    if job.route is not None:
        names = config.routes.get(job.route)
        if names is None:
            raise ProviderError(
                ErrorCategory.INVALID_REQUEST,
                f"unknown route {job.route!r}; known: {sorted(config.routes)}",
            )
        return [_candidate(job.route, name, config) for name in names]
    assert job.model is not None
    provider, sep, model = job.model.partition(":")
    if sep and provider in config.providers:
        return [Candidate(provider, model)]
    # A bare model name: every provider whose config lists it or whose registered workers
    # report it (live model lists), in config order.
    serving = [
        Candidate(name, job.model)
        for name, spec in config.providers.items()
        if job.model in spec.models or (serves is not None and serves(name, job.model))
    ]
    if not serving:
        raise ProviderError(
            ErrorCategory.NOT_FOUND,
            f"no provider serves model {job.model!r}; use 'provider:model' or a route "
            f"(providers: {sorted(config.providers)})",
        )
    return serving


def resolve(
    job: Job,
    config: Config,
    features_of: Callable[[str], frozenset[str]],
    serves: Callable[[str, str], bool] | None = None,
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """The candidates able to honour every parameter and content type, and those removed.

    `serves(provider, model)` says whether a live worker of `provider` reports `model`.
    """
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    needed = job.required_features()
    for candidate in _chain(job, config, serves):
        missing = needed - features_of(candidate.provider)
        if missing:
            reason = f"{candidate.provider} cannot honour {', '.join(sorted(missing))}"
            skipped.append({"candidate": str(candidate), "reason": reason})
        else:
            candidates.append(candidate)
    if not candidates:
        reasons = "; ".join(s["reason"] for s in skipped)
        raise ProviderError(ErrorCategory.UNSUPPORTED, f"no candidate can run this job: {reasons}")
    return candidates, skipped
