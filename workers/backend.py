"""The contract every backend implements; the runtime (workers/runtime.py) does the rest."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from catalog.schemas import SCHEMAS, Schema, check_params
from protocol.errors import ErrorCategory, ProviderError
from protocol.job import PARAMS, Job
from protocol.schema import Key
from workers import options
from workers.spec import ProviderSpec


@dataclass(slots=True)
class TextDelta:
    """Generated text, in order. May hold part of a token or several tokens."""

    text: str


@dataclass(slots=True)
class Finish:
    """The last event of a successful generation."""

    reason: str | None = None  # stop, length, tool_calls, content_filter...
    usage: dict[str, Any] = field(default_factory=dict)  # prompt_tokens, completion_tokens, cost
    model: str | None = None  # the model the provider says it used
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. tool_calls
    # What the response's rate-limit headers said (workers/ratelimit.py keys, e.g.
    # requests_remaining, tokens_reset). HttpBackend fills it; a provider module never does.
    ratelimit: dict[str, float] = field(default_factory=dict)


StreamEvent = TextDelta | Finish

ALL_FEATURES = frozenset(PARAMS) | {"vision"}

# Bounds on a live model list (protocol.messages.Ready accepts 4096 ids of <= 256 chars).
MAX_MODELS = 4096
MAX_MODEL_ID = 256


class Backend(ABC):
    """One provider's own part: turn a job into its request and its stream into events.

    Failures are raised as protocol.errors.ProviderError with a category; anything else
    escaping `generate` is reported by the runtime as a server_error.
    """

    kind: ClassVar[str]
    # The provider's parameter table (catalog.schemas): what it accepts, under which name.
    # Requests are built from it; an instance may widen it (llama.cpp with enable_tools).
    schema: Schema = SCHEMAS["mock"]
    # Canonical parameters and content features this provider honours (see protocol.job),
    # reported at registration; an instance may narrow or widen it in start() from what
    # the server reports (e.g. llama.cpp vision).
    features: frozenset[str] = ALL_FEATURES
    # The `[providers.X.options]` keys this class reads itself; `option_schema()` adds the
    # inherited ones. The config rejects any other key, so every option read must be listed.
    option_keys: ClassVar[Mapping[str, Key]] = options.BACKEND

    @classmethod
    def option_schema(cls) -> dict[str, Key]:
        merged: dict[str, Key] = {}
        for klass in reversed(cls.__mro__):
            merged.update(getattr(klass, "option_keys", None) or {})
        return merged

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec

    def checked_params(self, job: Job) -> dict[str, Any]:
        """The job's parameters as this provider takes them (canonical names), checked
        against its schema: a bad or unsupported one raises ProviderError(unsupported),
        unless the job allows dropping unsupported ones (the broker reports those)."""
        return check_params(
            self.schema, self.spec.name, job.params, drop_unsupported=job.drop_unsupported
        ).params

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pooled clients, start local servers. Called once before any job."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything `start` acquired."""

    def info(self) -> dict[str, Any]:
        """Static facts sent at registration (context window, modalities...)."""
        return {}

    def failure(self) -> str | None:
        """Why this backend can serve nothing any more (the worker then exits), else None."""
        return None

    def stats(self) -> dict[str, Any]:
        """Extra periodic figures for the heartbeat (e.g. a child server's RSS)."""
        return {}

    # How `count_prompt` counts (catalog token_counting), or None when it cannot.
    exact_counting: ClassVar[str | None] = None

    async def count_prompt(self, messages: list[dict[str, Any]], model: str) -> int:
        """The prompt's exact token count by the provider's own tokenizer. Raises
        ProviderError when it cannot (no tokenizer, no key, the provider failed)."""
        raise ProviderError(
            ErrorCategory.UNSUPPORTED, f"{self.kind} has no exact token count", provider=None
        )

    async def list_models(self) -> list[str] | None:
        """The model ids the provider says it serves now, or None if unknown.

        Called once after `start`; the worker registers with the config's models plus these.
        Must not raise for a provider failure: return None (the config list then stands).
        """
        return None

    @abstractmethod
    def generate(self, job: Job, model: str, attempt: int) -> AsyncIterator[StreamEvent]:
        """Yield TextDelta events then exactly one Finish, or raise ProviderError."""
