"""Reconnect delays: exponential with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``delay(n) = uniform(0, min(cap, initial * factor**n))``; ``reset()`` after a stable link.

    Full jitter spreads a fleet's reconnects after a broker restart instead of having every
    client knock at the same instants.
    """

    def __init__(
        self,
        initial: float = 0.01,
        factor: float = 2.0,
        cap: float = 20.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self._rng = rng
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        # Compare before multiplying out: factor**attempt overflows a float past ~1000 attempts.
        limit = self.initial
        for _ in range(attempt):
            limit *= self.factor
            if limit >= self.cap:
                return self.cap
        return min(limit, self.cap)

    def next_delay(self) -> float:
        delay = self._rng() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
