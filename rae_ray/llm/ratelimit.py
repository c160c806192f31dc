"""Cluster-wide limits on what the job asks of an endpoint: requests and tokens per minute, and money.

One Ray actor (`BudgetActor`, one per run) holds a token bucket per (endpoint, model) for requests and one
for tokens, and the running cost. Every LLM client (one per stage actor, on any node) draws from it in
chunks through `RateBudget`, so the whole cluster stays under the endpoint's limits whatever the number of
actors, and nobody calls the actor once per request.

Why the numbers hold: a bucket of capacity B refilled at r per second admits at most B + 60 r requests in
any 60 s window. With r = `headroom` * rpm / 60 and B <= (1 - headroom) * rpm, that is at most rpm, so a
server enforcing a sliding-window rpm never has a reason to answer 429, while the job still runs at
`headroom` (97% by default) of the allowed rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass


class TokenBucket:
    """Capacity `capacity`, refilled continuously at `rate` per second; starts full. Time is injectable."""

    def __init__(self, rate: float, capacity: float, now: float | None = None):
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, amount: float, now: float | None = None) -> float:
        """Take up to `amount` (whole units, at least one if one is there); returns what was taken."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        granted = min(float(math.floor(self.level)), amount)
        if granted <= 0:
            return 0.0
        self.level -= granted
        return granted

    def available(self, now: float | None = None) -> float:
        self._refill(time.monotonic() if now is None else now)
        return self.level

    def force(self, amount: float, now: float | None = None) -> None:
        """Debit (or credit, if negative) without checking: tokens actually used differ from the estimate."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        self.level = min(self.capacity, self.level - amount)

    def wait_for(self, amount: float, now: float | None = None) -> float:
        """Seconds until `amount` units will be there."""
        now = time.monotonic() if now is None else now
        self._refill(now)
        return max(0.0, (min(amount, self.capacity) - self.level) / self.rate)


def make_bucket(per_minute: int, headroom: float) -> TokenBucket:
    rate = headroom * per_minute / 60.0
    capacity = max(1.0, min(rate, (1.0 - headroom) * per_minute))
    return TokenBucket(rate, capacity)


@dataclass
class Grant:
    requests: int
    wait_s: float
    stop: str | None = None


class Budget:
    """The state behind `BudgetActor` (plain class: unit-testable without Ray)."""

    def __init__(self, limits: dict[str, dict], max_cost_usd: float | None = None, headroom: float = 0.97):
        self.requests = {k: make_bucket(v["rpm"], headroom) for k, v in limits.items() if v.get("rpm")}
        self.tokens = {k: make_bucket(v["tpm"], headroom) for k, v in limits.items() if v.get("tpm")}
        self.max_cost_usd = max_cost_usd
        self.cost_usd = 0.0
        self.granted = 0
        self.stopped = False

    def acquire(self, key: str, requests: int, tokens_per_request: int) -> Grant:
        """Up to `requests` requests (each expected to use `tokens_per_request` tokens) allowed now."""
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            self.stopped = True
            return Grant(0, 0.0, stop=f"max_cost_usd {self.max_cost_usd:g} reached (spent {self.cost_usd:.4f})")
        want = requests
        token_bucket = self.tokens.get(key)
        if token_bucket is not None and tokens_per_request > 0:
            # A call larger than the bucket waits for a full bucket, then goes into debt: the bucket's level
            # goes negative and later calls wait until it is paid back, so the long-run rate still holds.
            need = min(tokens_per_request, token_bucket.capacity)
            level = token_bucket.available()
            want = min(requests, int(level // tokens_per_request)) if level >= tokens_per_request else int(level >= need)
            if want <= 0:
                return Grant(0, max(token_bucket.wait_for(need), 0.01))
        request_bucket = self.requests.get(key)
        if request_bucket is not None:
            got = int(request_bucket.take(want))
            if got <= 0:
                return Grant(0, max(request_bucket.wait_for(1), 0.01))
            want = got
        if token_bucket is not None and tokens_per_request > 0:
            token_bucket.force(want * tokens_per_request)
        self.granted += want
        return Grant(want, 0.0)

    def report(self, key: str, tokens_estimated: int, tokens_used: int, cost_usd: float) -> None:
        """After a call: correct the token bucket by what the call really used, add its cost."""
        bucket = self.tokens.get(key)
        if bucket is not None:
            bucket.force(tokens_used - tokens_estimated)
        self.cost_usd += cost_usd

    def state(self) -> dict:
        return {"cost_usd": self.cost_usd, "granted": self.granted, "stopped": self.stopped}


# The Ray namespace of the run's named budget actor, where every stage actor looks it up.
BUDGET_NAMESPACE = "rae-ray"


def budget_actor_class():
    """The Ray actor class (built lazily so that importing this module does not import Ray)."""
    import ray

    # Restarted if its process or node dies (its counters start again from zero): a lost budget must not fail
    # every LLM call of the run.
    return ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1, max_task_retries=-1)(Budget)


class RateBudget:
    """Client side: requests granted in chunks by the run's budget actor (looked up by name)."""

    def __init__(self, actor_name: str, namespace: str, key: str, chunk: int = 8, reports: bool = True):
        self.actor_name = actor_name
        self.reports = reports  # False: no token or cost limit reads them, `report` sends nothing
        self.namespace = namespace
        self.key = key
        self.chunk = max(1, chunk)
        self._actor = None
        self._available = 0
        self._lock = asyncio.Lock()
        self.stopped: str | None = None

    def _handle(self):
        if self._actor is None:
            import ray

            self._actor = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._actor

    async def acquire(self, tokens_estimate: int) -> str | None:
        """Wait until one request may be sent; returns a reason to stop instead (cost limit reached)."""
        async with self._lock:
            if self._available <= 0:
                granted, stop = await self._grant(self.chunk, tokens_estimate)
                if stop is not None:
                    return stop
                self._available += granted
            self._available -= 1
            return None

    async def acquire_batch(self, tokens_estimate: int) -> str | None:
        """Wait until a provider batch (all its requests, `tokens_estimate` their tokens summed) may be submitted;
        returns a reason to stop instead. Asked of the actor for this batch alone, never taken from the chunk kept
        for online calls, so every batch meets the cost guard; one bigger than the token bucket goes into debt."""
        async with self._lock:
            _, stop = await self._grant(1, tokens_estimate)
            return stop

    async def _grant(self, requests: int, tokens_per_request: int) -> tuple[int, str | None]:
        """Ask the actor until it grants some of `requests`: (how many, None), or (0, why to stop)."""
        while True:
            if self.stopped:
                return 0, self.stopped
            grant = await self._handle().acquire.remote(self.key, requests, tokens_per_request)
            if grant.stop:
                self.stopped = grant.stop
                return 0, grant.stop
            if grant.requests:
                return grant.requests, None
            await asyncio.sleep(grant.wait_s)

    def report(self, tokens_estimated: int, tokens_used: int, cost_usd: float) -> None:
        if not self.reports:
            return
        self._handle().report.remote(self.key, tokens_estimated, tokens_used, cost_usd)
