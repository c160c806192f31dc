"""The limiter's arithmetic with injected time (no Ray): token buckets, budget grants, token correction, cost stop."""

from __future__ import annotations

import random

import pytest

from rae_ray.llm.ratelimit import Budget, TokenBucket, make_bucket
from rae_ray.sim.server import SlidingWindow

KEY = "http://endpoint/v1|judge"


class Clock:
    """Injected monotonic time for `Budget`, whose buckets read `time.monotonic()`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: float = 1000.0):
        self.now = start
        monkeypatch.setattr("rae_ray.llm.ratelimit.time.monotonic", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def admitted_per_window(stamps: list[float], window_s: float = 60.0) -> int:
    """The largest number of events in any half-open window [t, t + window_s)."""
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamps[start] <= stamp - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- TokenBucket ---------------------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, capacity=5.0, now=0.0)
    assert bucket.take(10, now=0.0) == 5  # whole units, no more than the capacity
    assert bucket.take(1, now=0.0) == 0
    assert bucket.take(10, now=1.0) == 2  # 1 s at 2/s
    assert bucket.take(10, now=1.4) == 0  # 0.8 units: not a whole one
    assert bucket.take(10, now=1.5) == 1
    assert bucket.take(10, now=100.0) == 5  # refill stops at the capacity


def test_bucket_wait_for_is_the_time_to_refill():
    bucket = TokenBucket(rate=4.0, capacity=8.0, now=0.0)
    bucket.take(8, now=0.0)
    assert bucket.wait_for(2, now=0.0) == pytest.approx(0.5)
    assert bucket.wait_for(2, now=0.25) == pytest.approx(0.25)
    assert bucket.wait_for(100, now=0.0) == pytest.approx(2.0)  # never more than a full bucket
    assert bucket.wait_for(1, now=10.0) == 0.0


def test_bucket_force_debits_into_debt_and_credits_up_to_capacity():
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0)
    bucket.force(25, now=0.0)
    assert bucket.available(now=0.0) == pytest.approx(-15)
    assert bucket.take(1, now=15.5) == 0  # still paying the debt back
    assert bucket.take(1, now=16.0) == 1
    bucket.force(-100, now=16.0)
    assert bucket.available(now=16.0) == 10.0


def test_bucket_rejects_non_positive_settings():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, capacity=0)


@pytest.mark.parametrize("rpm", [1, 7, 30, 100, 600, 3000, 10_000])
@pytest.mark.parametrize("headroom", [0.9, 0.97])
def test_bucket_admits_at_most_rpm_in_any_60s_window(rpm, headroom):
    """Greedy takers polling at random instants for 5 minutes: never more than rpm in a 60 s window, yet close to it."""
    bucket = make_bucket(rpm, headroom)
    bucket.updated = 0.0
    rng = random.Random(rpm)
    stamps: list[float] = []
    now = 0.0
    while now < 300.0:
        got = int(bucket.take(rng.choice([1, 4, 8, 64]), now=now))
        stamps += [now] * got
        now += rng.expovariate(20.0) if rpm < 1000 else rng.expovariate(200.0)
    assert admitted_per_window(stamps) <= rpm
    # Over the long run the bucket admits headroom * rpm per minute (plus its initial burst).
    assert len(stamps) >= headroom * rpm * 5 * 0.98 - 1


def test_make_bucket_capacity_keeps_the_burst_inside_the_headroom():
    bucket = make_bucket(3000, 0.97)
    assert bucket.rate == pytest.approx(48.5)
    assert bucket.capacity + 60 * bucket.rate <= 3000
    small = make_bucket(5, 0.97)
    assert small.capacity == 1.0  # at least one request, however small the limit


# -- Budget --------------------------------------------------------------------------------------------------


def test_budget_without_limits_grants_everything_asked():
    budget = Budget({KEY: {"rpm": None, "tpm": None}})
    grant = budget.acquire(KEY, 8, 500)
    assert (grant.requests, grant.wait_s, grant.stop) == (8, 0.0, None)
    assert budget.acquire("other|model", 3, 0).requests == 3
    assert budget.state() == {"cost_usd": 0.0, "granted": 11, "stopped": False}


def test_budget_grants_requests_in_chunks_then_says_how_long_to_wait(monkeypatch):
    clock = Clock(monkeypatch)
    budget = Budget({KEY: {"rpm": 600}}, headroom=0.97)  # 9.7/s, burst of 9
    first = budget.acquire(KEY, 8, 0)
    second = budget.acquire(KEY, 8, 0)
    assert (first.requests, second.requests) == (8, 1)
    empty = budget.acquire(KEY, 8, 0)
    assert empty.requests == 0 and 0 < empty.wait_s <= 1 / 9.7 + 1e-9
    clock.advance(empty.wait_s)
    assert budget.acquire(KEY, 8, 0).requests == 1
    clock.advance(1.0)
    assert budget.acquire(KEY, 8, 0).requests == 8


def test_budget_grants_through_the_cluster_stay_under_the_servers_window(monkeypatch):
    """Budget grants (fake time) replayed into the simulated endpoint's own sliding window: no request over rpm.

    Several clients each take chunks and send them over the next moments (a permit is used after it is
    granted, never before), as `RateBudget` does.
    """
    clock = Clock(monkeypatch, start=0.0)
    rpm = 1200
    budget = Budget({KEY: {"rpm": rpm}})
    window = SlidingWindow(rpm)
    rng = random.Random(7)
    sends: list[float] = []
    while clock.now < 180.0:
        grant = budget.acquire(KEY, 8, 0)
        if grant.requests:
            sends += [clock.now + rng.uniform(0, 0.05) for _ in range(grant.requests)]
            clock.advance(rng.uniform(0, 0.002))
        else:
            clock.advance(grant.wait_s)
    refused = 0
    for stamp in sorted(sends):
        if window.wait_time(stamp, 1) > 0:
            refused += 1
        else:
            window.add(stamp, 1)
    assert refused == 0
    assert len(sends) / 180.0 >= 0.95 * rpm / 60


def test_budget_limits_tokens_per_minute_and_corrects_by_what_calls_used(monkeypatch):
    clock = Clock(monkeypatch)
    budget = Budget({KEY: {"tpm": 60_000}}, headroom=0.97)  # 970 tokens/s, capacity 970
    assert budget.acquire(KEY, 8, 400).requests == 2  # 970 // 400
    waiting = budget.acquire(KEY, 8, 400)
    assert waiting.requests == 0 and waiting.wait_s > 0
    # The two calls used 100 tokens each, not 400: the 600 tokens over-reserved come back at once.
    budget.report(KEY, 400, 100, 0.0)
    budget.report(KEY, 400, 100, 0.0)
    assert budget.acquire(KEY, 8, 400).requests == 1
    # A call that used more than estimated puts the bucket in debt: nothing is granted until it is paid back.
    budget.report(KEY, 400, 2400, 0.0)
    assert budget.acquire(KEY, 1, 400).requests == 0  # 370 - 2,000 = -1,630
    clock.advance(2.0)  # +1,940: 310, still short of 400
    assert budget.acquire(KEY, 1, 400).requests == 0
    clock.advance(0.1)
    assert budget.acquire(KEY, 1, 400).requests == 1


def test_budget_applies_both_limits(monkeypatch):
    Clock(monkeypatch)
    budget = Budget({KEY: {"rpm": 6000, "tpm": 6_000_000}})  # 97 requests, 97,000 tokens per second
    assert budget.acquire(KEY, 200, 10).requests == 97  # requests bind
    budget = Budget({KEY: {"rpm": 6000, "tpm": 60_000}})
    assert budget.acquire(KEY, 200, 100).requests == 9  # tokens bind: 970 // 100


def test_budget_limits_each_endpoint_and_model_apart(monkeypatch):
    Clock(monkeypatch)
    budget = Budget({KEY: {"rpm": 60}, "http://endpoint/v1|writer": {"rpm": 600}})
    assert budget.acquire(KEY, 8, 0).requests == 1
    assert budget.acquire(KEY, 8, 0).requests == 0
    assert budget.acquire("http://endpoint/v1|writer", 8, 0).requests == 8


def test_budget_grants_a_call_larger_than_the_token_bucket(monkeypatch):
    clock = Clock(monkeypatch)
    budget = Budget({KEY: {"tpm": 10_000}})  # capacity ~161 tokens; an annotation call estimates ~1,000
    granted = 0
    for _ in range(1000):
        grant = budget.acquire(KEY, 1, 1000)
        granted += grant.requests
        if granted:
            break
        clock.advance(grant.wait_s)
    assert granted == 1


def test_budget_stops_at_the_cost_limit(monkeypatch):
    Clock(monkeypatch)
    budget = Budget({KEY: {"rpm": None}}, max_cost_usd=0.01)
    assert budget.acquire(KEY, 8, 0).requests == 8
    for _ in range(4):
        budget.report(KEY, 0, 0, 0.002)
    assert budget.acquire(KEY, 8, 0).requests == 8  # 0.008 spent: still under
    budget.report(KEY, 0, 0, 0.002)
    stop = budget.acquire(KEY, 8, 0)
    assert stop.requests == 0 and stop.stop is not None
    assert stop.stop.startswith("max_cost_usd 0.01 reached (spent 0.0100")
    assert budget.state()["stopped"] is True
    assert budget.acquire("other|model", 1, 0).stop is not None  # the limit is the run's, every model stops
