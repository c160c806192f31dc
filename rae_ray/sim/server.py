"""The simulated OpenAI-compatible endpoint: an aiohttp app around the offline judge.

Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /stats`, `POST /stats/reset`, `GET /health`, and
`GET /debug/requests` (the last `record_requests` completion bodies, for tests of what a client really sends).
A completion goes through, in order: API key check, body parsing, the endpoint's modes (what a model without
vision, a small context, a reasoning model or a server without json_schema refuses: `refusals`), rate limits
(429 at once, never queued),
the in-flight queue, error injection, latency, then the judge. Every response carries `x-rae-simulated: true`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rae_ray.sim.batches import register_batch_routes
from rae_ray.sim.config import ERROR_KINDS, SimConfig
from rae_ray.sim.faults import FaultInjector, reset_midway, retry_headers
from rae_ray.sim.noise import with_noise
from rae_ray.sim.protocol import (
    NO_SCHEMA, SYSTEM_FINGERPRINT, ApiError, Prompt, answer, completion_body, read_prompt, render, task_of,
)
from rae_ray.sim.refusals import check_modes

LISTENING_LINE = "rae-ray sim listening on {base_url} (SIMULATED endpoint: offline heuristic judge, not a real LLM)"
SIMULATED_HEADER = "x-rae-simulated"
WINDOW_S = 60.0


# ---------------------------------------------------------------------------------------------- limits, stats


class SlidingWindow:
    """Weighted events of the last `window_s` seconds against a limit (requests or tokens per minute)."""

    def __init__(self, limit: int, window_s: float = WINDOW_S) -> None:
        self.limit, self.window_s = limit, window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()
        self.used = 0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self.used -= self._events.popleft()[1]

    def wait_time(self, now: float, weight: int) -> float:
        """Seconds until `weight` more fits in the window (0 if it fits now, the full window if it never will)."""
        self._expire(now)
        if self.used + weight <= self.limit:
            return 0.0
        if weight > self.limit:
            return self.window_s
        excess = self.used + weight - self.limit
        for stamp, event_weight in self._events:
            excess -= event_weight
            if excess <= 0:
                return stamp + self.window_s - now
        return self.window_s

    def add(self, now: float, weight: int) -> None:
        if weight:
            self._events.append((now, weight))
            self.used += weight

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - self.used)


class PrefixCache:
    """Bounded LRU of prompt-prefix hashes: a repeated prefix is reported as cached tokens."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seen: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def seen_before(self, key: bytes) -> bool:
        if self.size == 0:
            return False
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False


@dataclass
class SimStats:
    requests_total: int = 0
    by_schema: collections.Counter = field(default_factory=collections.Counter)
    by_status: collections.Counter = field(default_factory=collections.Counter)
    by_model: collections.Counter = field(default_factory=collections.Counter)
    rate_limited: collections.Counter = field(default_factory=collections.Counter)
    injected_errors: collections.Counter = field(default_factory=collections.Counter)
    client_disconnects: int = 0
    in_flight: int = 0
    queued: int = 0
    max_in_flight_seen: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    request_bytes_max: int = 0
    started: float = field(default_factory=time.time)

    def reset(self) -> None:
        """Zero every counter but the live ones (requests in flight or queued right now)."""
        live = {"in_flight": self.in_flight, "queued": self.queued, "max_in_flight_seen": self.in_flight}
        for name, value in vars(type(self)()).items():
            setattr(self, name, live.get(name, value))

    def as_dict(self) -> dict[str, Any]:
        return {
            "simulated": True,
            "requests_total": self.requests_total,
            "by_schema": dict(self.by_schema),
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "responses_429": self.by_status.get(429, 0),
            "rate_limited": sum(self.rate_limited.values()),
            "rate_limited_by": dict(self.rate_limited),
            "injected_errors": {kind: self.injected_errors.get(kind, 0) for kind in ERROR_KINDS},
            "client_disconnects": self.client_disconnects,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "max_in_flight_seen": self.max_in_flight_seen,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens, "cached": self.cached_tokens},
            "request_bytes_max": self.request_bytes_max,
            "by_model": dict(self.by_model),
            "since": self.started,
        }


# ---------------------------------------------------------------------------------------------- requests


# ---------------------------------------------------------------------------------------------- the app


class SimServer:
    """Handlers and state of one simulated endpoint."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.faults = FaultInjector(config)
        self.latency_rng = random.Random(config.seed + 1)
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.requests_window = SlidingWindow(config.rpm) if config.rpm else None
        self.tokens_window = SlidingWindow(config.tpm) if config.tpm else None
        self.prefixes = PrefixCache(config.prefix_cache_size)
        self.recorded: collections.deque[dict[str, Any]] | None = (
            collections.deque(maxlen=config.record_requests) if config.record_requests else None)
        self._auth = (f"Bearer {config.api_key.get_secret_value()}" if config.api_key else None)
        self._completions_authorized = 0

    # -- helpers

    def check_auth(self, request: web.Request, completion: bool = False) -> None:
        presented = request.headers.get("Authorization", "")
        revoked = False
        if completion and self.config.revoke_key_after is not None:
            self._completions_authorized += 1
            revoked = self._completions_authorized > self.config.revoke_key_after
        if self._auth is not None and (presented != self._auth or revoked):
            # Like OpenAI's 401, the message echoes the presented key, masked: clients must not pass it on.
            key = presented.removeprefix("Bearer ").strip()
            if not key:
                raise ApiError(401, "You didn't provide an API key (simulated endpoint).", code="invalid_api_key")
            masked = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "*" * len(key)
            raise ApiError(401, f"Incorrect API key provided: {masked}. You can find your API key in the "
                           "simulated endpoint's settings.", code="invalid_api_key")

    def _rate_limit(self, prompt: Prompt) -> dict[str, str]:
        now = time.monotonic()
        headers: dict[str, str] = {}
        for kind, window, weight in (("requests", self.requests_window, 1),
                                      ("tokens", self.tokens_window, prompt.prompt_tokens)):
            if window is None:
                continue
            wait = window.wait_time(now, weight)
            if wait > 0:
                self.stats.rate_limited[kind] += 1
                raise ApiError(
                    429,
                    f"Rate limit reached for {prompt.model} (simulated) on {kind} per min: limit {window.limit}, "
                    f"used {window.used}, requested {weight}. Please try again in {wait:.3f}s.",
                    type_=kind, code="rate_limit_exceeded", headers=retry_headers(wait),
                )
        for kind, window, weight in (("requests", self.requests_window, 1),
                                      ("tokens", self.tokens_window, prompt.prompt_tokens)):
            if window is not None:
                window.add(now, weight)
                headers[f"x-ratelimit-limit-{kind}"] = str(window.limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(window.remaining(now))
        return headers

    def _latency_s(self) -> float:
        mean, jitter = self.config.latency_ms, self.config.latency_jitter_ms
        if mean <= 0 and jitter <= 0:
            return 0.0
        if self.config.latency_distribution == "lognormal" and mean > 0:
            sigma2 = math.log1p((jitter / mean) ** 2)
            return self.latency_rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2)) / 1000
        return max(0.0, mean + self.latency_rng.uniform(-jitter, jitter)) / 1000

    # -- handlers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests_total += 1
        try:
            response = await self._chat_completions(request)
        except ApiError as error:
            response = error.response()
        except asyncio.CancelledError:
            stats.client_disconnects += 1
            raise
        if not request.get(_RESET_KEY):
            stats.by_status[response.status] += 1
        return response

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        self.check_auth(request, completion=True)
        raw = await request.read()
        stats.request_bytes_max = max(stats.request_bytes_max, len(raw))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"The request body is not valid JSON: {error}") from error
        if self.recorded is not None:
            self.recorded.append({"bytes": len(raw), "body": body})
        prompt = read_prompt(body)
        stats.by_schema[prompt.schema_name or NO_SCHEMA] += 1
        stats.by_model[prompt.model] += 1
        check_modes(self.config, body, prompt.prompt_tokens, len(prompt.image_urls))
        task = task_of(prompt)
        headers = self._rate_limit(prompt)
        stats.queued += 1
        async with self.slots:
            stats.queued -= 1
            stats.in_flight += 1
            stats.max_in_flight_seen = max(stats.max_in_flight_seen, stats.in_flight)
            try:
                return await self._serve(request, prompt, task, headers)
            finally:
                stats.in_flight -= 1

    async def _serve(self, request: web.Request, prompt: Prompt, task: str,
                     headers: dict[str, str]) -> web.StreamResponse:
        stats = self.stats
        injected = self.faults.draw()
        delay = self._latency_s()
        if injected == "timeout":
            stats.injected_errors["timeout"] += 1
            await asyncio.sleep(self.config.timeout_hold_s)
            raise ApiError(504, "The simulated endpoint timed out (injected).", type_="timeout", code="timeout")
        if delay:
            await asyncio.sleep(delay)
        if injected == "5xx":
            stats.injected_errors["5xx"] += 1
            status = 500 if self.faults.rng.random() < 0.5 else 503
            message = "The server had an error while processing your request (injected, simulated)."
            raise ApiError(status, message, type_="server_error", code="server_error" if status == 500 else "overloaded")
        if injected == "429":
            stats.injected_errors["429"] += 1
            wait = float(self.config.retry_after_s)
            raise ApiError(429, f"Rate limit reached (injected, simulated). Please try again in {wait:.0f}s.",
                           type_="requests", code="rate_limit_exceeded", headers=retry_headers(wait))
        reply = with_noise(task, answer(task, prompt.blocks, prompt.image_urls), prompt.blocks, prompt.model,
                           prompt.seed, self.config.judge_noise)
        cached = prompt.prefix_tokens if self.prefixes.seen_before(prompt.prefix_key) else 0
        if injected == "malformed":
            stats.injected_errors["malformed"] += 1
            content = self.faults.malformed(reply)
        else:
            content = render(reply, prompt.wants_json)
        body, completion_tokens = completion_body(prompt, content, cached)
        stats.prompt_tokens += prompt.prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.cached_tokens += cached
        if self.tokens_window is not None:
            self.tokens_window.add(time.monotonic(), completion_tokens)
        if injected == "reset":
            stats.injected_errors["reset"] += 1
            request[_RESET_KEY] = True
            return await reset_midway(request, json.dumps(body).encode(), hard=self.faults.rng.random() < 0.5)
        return web.json_response(body, headers=headers, dumps=json.dumps)

    async def models(self, request: web.Request) -> web.Response:
        self.check_auth(request)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT}
                for name in self.config.models]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        self.check_auth(request)
        name = request.match_info["model"]
        return web.json_response({"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response(self.stats.as_dict())

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def debug_requests(self, request: web.Request) -> web.Response:
        """The recorded completion bodies, oldest first (headers, hence keys, are never recorded)."""
        recorded = list(self.recorded) if self.recorded is not None else []
        return web.json_response({"simulated": True, "recording": self.recorded is not None, "requests": recorded})


@web.middleware
async def _api_errors(request: web.Request, handler) -> web.StreamResponse:
    """An `ApiError` raised by any handler (e.g. a refused key on /v1/models) is answered in OpenAI's shape."""
    try:
        return await handler(request)
    except ApiError as error:
        return error.response()


async def _mark_simulated(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[SIMULATED_HEADER] = "true"


SERVER_KEY = web.AppKey("rae_sim_server", SimServer)
_RESET_KEY = web.RequestKey("rae_sim_reset", bool)


def create_app(config: SimConfig) -> web.Application:
    server = SimServer(config)
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_api_errors])
    app[SERVER_KEY] = server
    app.on_response_prepare.append(_mark_simulated)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    app.router.add_get("/v1/models", server.models)
    app.router.add_get("/v1/models/{model}", server.model)
    app.router.add_get("/stats", server.get_stats)
    app.router.add_post("/stats/reset", server.reset_stats)
    app.router.add_get("/health", server.health)
    app.router.add_get("/debug/requests", server.debug_requests)
    register_batch_routes(app, server)  # the Files and Batch APIs (batch mode)
    return app



@asynccontextmanager
async def run_server(config: SimConfig) -> AsyncIterator[str]:
    """Serve `config` on its host and port; yields the base URL (".../v1") with the port actually bound."""
    app = create_app(config)
    kwargs: dict[str, Any] = {"handler_cancellation": True, "shutdown_timeout": 2.0}
    if not config.access_log:
        kwargs["access_log"] = None
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        if ":" in host:
            host = f"[{host}]"
        yield f"http://{host}:{port}/v1"
    finally:
        await runner.cleanup()
