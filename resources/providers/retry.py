"""The one retry policy and the one rate limiter every HTTP provider uses."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped; an advised wait (Retry-After) wins."""

    base: float = 0.5
    cap: float = 60.0
    max_attempts: int = 8

    def delay(self, attempt: int, advised: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if advised is not None and advised >= 0:
            return min(advised, self.cap)
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class RetryRounds:
    """How often a change that failed with a transient error is sent again at the end of the
    apply (a target's retry_rounds), and after what pause; Backoff retries one request."""

    rounds: int = 0
    pause_seconds: float = 0.0


class RateLimiter:
    """Token bucket: at most ``rate`` acquisitions per ``per`` seconds, bursts up to ``burst``."""

    def __init__(
        self,
        rate: float,
        per: float = 60.0,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.fill_per_second = rate / per
        self.capacity = burst if burst is not None else max(1.0, min(rate, rate / per))
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, tokens: float = 1.0) -> float:
        """Block until ``tokens`` are available; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(
                    self.capacity, self._tokens + (now - self._last) * self.fill_per_second
                )
                self._last = now
                # A request larger than the bucket waits for a full bucket and goes into
                # debt, so it can never wait forever.
                if self._tokens >= min(tokens, self.capacity):
                    self._tokens -= tokens
                    return waited
                need = (min(tokens, self.capacity) - self._tokens) / self.fill_per_second
            self._sleep(need)
            waited += need
