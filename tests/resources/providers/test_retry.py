"""The one retry policy and the one rate limiter, on a fake clock."""

from __future__ import annotations

from resources.providers.retry import Backoff, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_honours_advice_and_caps_growth():
    b = Backoff(base=1.0, cap=10.0)
    assert b.delay(3, advised=2.5) == 2.5
    assert b.delay(1, advised=99) == 10.0
    assert all(0 <= b.delay(n) <= min(10.0, 2 ** (n - 1)) for n in range(1, 10))


def test_rate_limiter_keeps_the_rate_over_time():
    clock = FakeClock()
    limiter = RateLimiter(rate=60, per=60.0, burst=5, clock=clock, sleep=clock.sleep)
    for _ in range(65):
        limiter.acquire()
    # 5 at once from the full bucket, then one a second.
    assert 59.0 <= clock.now <= 60.5


def test_rate_limiter_request_larger_than_the_bucket_does_not_hang():
    clock = FakeClock()
    limiter = RateLimiter(rate=10, per=1.0, burst=5, clock=clock, sleep=clock.sleep)
    limiter.acquire(20)
    limiter.acquire(1)  # pays the debt first
    assert clock.now >= 1.5
