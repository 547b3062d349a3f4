"""Requests- and tokens-per-minute pacing per provider, so a batch does not become a 429 storm.

Token buckets refill continuously; a rate_limited answer with retry-after pauses the provider.
Rate-limit headers the workers report (workers/ratelimit.py), decoded once where they enter
the broker (protocol.result_schema.RateLimits), are learnt in `Pacer.learn`:
an exhausted budget pauses the provider until its reset, and a reported limit becomes the
bucket size when the config sets none.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.result_schema import RateLimits

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
        limits: RateLimits,
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
        for budget, in_use in (
            (limits.requests, float(inflight)),
            (limits.tokens, inflight_tokens),
            (limits.input_tokens, 0.0),
            (limits.output_tokens, 0.0),
        ):
            if budget.remaining is not None and budget.remaining < max(1.0, in_use):
                wait = DEFAULT_RESET if budget.reset is None else budget.reset
                self.pause(now + min(wait, MAX_LEARNED_PAUSE))
        for index, (kind, limit) in enumerate(
            (("requests", limits.requests.limit), ("tokens", limits.tokens.limit))
        ):
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
