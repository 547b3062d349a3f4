"""Requests- and tokens-per-minute pacing per provider, so a batch does not become a 429 storm.

Token buckets refill continuously; a rate_limited answer with retry-after pauses the provider.
"""

from __future__ import annotations

from dataclasses import dataclass


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


class Pacer:
    def __init__(self, rpm: float | None, tpm: float | None, now: float) -> None:
        # Start with a small burst, not a full minute's worth at once.
        self.requests = Bucket(rpm, min(rpm, max(1.0, rpm / 10)), now) if rpm else None
        self.tokens = Bucket(tpm, min(tpm, max(1.0, tpm / 10)), now) if tpm else None
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

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)


def estimate_tokens(prompt_chars: int, max_tokens: int | None) -> float:
    """Rough budget before the provider tells us: ~4 characters per token plus the output cap."""
    return prompt_chars / 4.0 + (max_tokens or 256)
