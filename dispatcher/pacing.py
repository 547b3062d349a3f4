"""Requests- and tokens-per-minute pacing per provider, so a batch does not become a 429 storm.

Token buckets refill continuously; a rate_limited answer with retry-after pauses the provider.
Rate-limit headers the workers report (workers/ratelimit.py) are learnt in `Pacer.learn`:
an exhausted budget pauses the provider until its reset, and a reported limit becomes the
bucket size when the config sets none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_LEARNED_PAUSE = 60.0  # a reset further away (a daily quota, a skewed clock) is capped
DEFAULT_RESET = 1.0  # pause when a budget is exhausted but no reset time was given


@dataclass(slots=True)
class Bucket:
    per_minute: float
    level: float
    stamp: float

    def refill(self, now: float) -> None:
        rate = self.per_minute / 60.0
        self.level = min(self.per_minute, self.level + (now - self.stamp) * rate)
        self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        self.refill(now)
        amount = min(amount, self.per_minute)  # one huge job must still pass eventually
        if self.level >= amount:
            return 0.0
        return (amount - self.level) / (self.per_minute / 60.0)


def _start(limit: float, now: float) -> Bucket:
    # Start with a small burst, not a full minute's worth at once.
    return Bucket(limit, min(limit, max(1.0, limit / 10)), now)


def _number(value: Any) -> float | None:
    """A finite non-negative number from the wire, else None (a worker may send anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


class Pacer:
    def __init__(self, rpm: float | None, tpm: float | None, now: float) -> None:
        self.requests = _start(rpm, now) if rpm else None
        self.tokens = _start(tpm, now) if tpm else None
        self.configured = (bool(rpm), bool(tpm))  # a configured limit is never overridden
        self.paused_until = 0.0

    def wait_for(self, tokens: float, now: float) -> float:
        wait = max(0.0, self.paused_until - now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait_for(1.0, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_for(tokens, now))
        return wait

    def take(self, tokens: float, now: float) -> None:
        if self.requests is not None:
            self.requests.refill(now)
            self.requests.level -= 1.0
        if self.tokens is not None:
            self.tokens.refill(now)
            self.tokens.level -= min(tokens, self.tokens.per_minute)

    def settle(self, estimated: float, used: float) -> None:
        """Replace the estimate `take` charged at dispatch by the tokens actually `used`."""
        if self.tokens is not None:
            bucket = self.tokens
            charged = min(estimated, bucket.per_minute)  # what take() charged
            bucket.level = min(bucket.per_minute, bucket.level - (used - charged))

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)

    def learn(
        self,
        limits: Mapping[str, Any],
        now: float,
        *,
        inflight: int = 0,
        inflight_tokens: float = 0.0,
    ) -> bool:
        """Take in one response's rate-limit headers; True when a learned limit changed.

        `inflight` / `inflight_tokens`: requests (and their token estimates) still running at
        this provider. A remaining budget below them (or at 0) pauses until its reset.
        """
        changed = False
        for kind, in_use in (
            ("requests", float(inflight)),
            ("tokens", inflight_tokens),
            ("input_tokens", 0.0),
            ("output_tokens", 0.0),
        ):
            remaining = _number(limits.get(f"{kind}_remaining"))
            if remaining is not None and remaining < max(1.0, in_use):
                reset = _number(limits.get(f"{kind}_reset"))
                wait = DEFAULT_RESET if reset is None else reset
                self.pause(now + min(wait, MAX_LEARNED_PAUSE))
        for index, kind in enumerate(("requests", "tokens")):
            limit = _number(limits.get(f"{kind}_limit"))
            if limit is None or limit < 1 or self.configured[index]:
                continue
            bucket: Bucket | None = getattr(self, kind)
            if bucket is None:
                setattr(self, kind, _start(limit, now))
                changed = True
            elif bucket.per_minute != limit:
                bucket.refill(now)
                bucket.per_minute = limit
                bucket.level = min(bucket.level, limit)
                changed = True
        return changed

    def learned(self) -> dict[str, float | None]:
        """The per-minute limits now in force (configured or learnt)."""
        return {
            "rpm": None if self.requests is None else self.requests.per_minute,
            "tpm": None if self.tokens is None else self.tokens.per_minute,
        }


def estimate_tokens(prompt_tokens: int, max_tokens: int | None) -> float:
    """The budget charged before the provider tells us: the prompt's count (catalog.tokens:
    exact where possible, else its estimate) plus the output cap."""
    return prompt_tokens + (max_tokens or 256)
