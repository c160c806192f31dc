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
import base64
import binascii
import collections
import hashlib
import json
import math
import random
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from aiohttp import web

from rae_ray.llm import prompts, schemas
from rae_ray.sim.judge import describe_image, estimate_tokens, judge, make_guideline
from rae_ray.sim.config import ERROR_KINDS, SimConfig
from rae_ray.sim.refusals import ApiError, check_modes

SYSTEM_FINGERPRINT = "rae-ray-sim"
LISTENING_LINE = "rae-ray sim listening on {base_url} (SIMULATED endpoint: offline heuristic judge, not a real LLM)"
SIMULATED_HEADER = "x-rae-simulated"
IMAGE_TOKENS = 255
WINDOW_S = 60.0
_PRODUCT_BLOCK = '<data name="product">'
_TASKS = (schemas.GUIDELINE_SCHEMA_NAME, schemas.JUDGEMENT_SCHEMA_NAME, schemas.CAPTION_SCHEMA_NAME)
NO_SCHEMA = "(none)"


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


@dataclass
class _Prompt:
    """What the server reads from one chat request."""

    model: str
    schema_name: str | None
    wants_json: bool
    blocks: dict[str, Any]
    image_urls: list[str]
    prompt_tokens: int
    prefix_key: bytes
    prefix_tokens: int
    max_tokens: int | None


def _read_prompt(body: Any) -> _Prompt:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty array of message objects.", param="messages")
    if body.get("stream"):
        raise ApiError(400, "The simulated endpoint does not support streaming.", param="stream")
    response_format = body.get("response_format") or {}
    if not isinstance(response_format, dict):
        raise ApiError(400, "'response_format' must be an object.", param="response_format")
    format_type = response_format.get("type", "text")
    schema_name = None
    if format_type == "json_schema":
        schema_name = str((response_format.get("json_schema") or {}).get("name") or "")
    system_text, user_prefix, texts, image_urls = [], None, [], []
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(400, "message content must be a string or an array of parts.", param="messages")
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise ApiError(400, "content parts must be objects.", param="messages")
        text = prompts.message_text(message)
        texts.append(text)
        if message.get("role") in ("system", "developer"):
            system_text.append(text)
        elif user_prefix is None:
            if isinstance(content, list):
                first = next((p for p in content if p.get("type") == "text"), None)
                user_prefix = str(first.get("text", "")) if first else ""
            else:
                user_prefix = text.split(_PRODUCT_BLOCK, 1)[0]
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part.get("image_url")
                    image_urls.append(str(url.get("url", "") if isinstance(url, dict) else url or ""))
    blocks: dict[str, Any] = {}
    for text in texts:
        try:
            blocks.update(prompts.parse_data_blocks(text))
        except json.JSONDecodeError as error:
            raise ApiError(400, f"A <data> block does not hold valid JSON: {error}", param="messages") from error
    prompt_chars = sum(len(t) for t in texts)
    system = "\n".join(system_text)
    prefix = user_prefix or ""
    prefix_key = hashlib.blake2b("\x00".join((model, system, prefix)).encode(), digest_size=16).digest()
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return _Prompt(
        model=model,
        schema_name=schema_name,
        wants_json=format_type in ("json_schema", "json_object"),
        blocks=blocks,
        image_urls=image_urls,
        prompt_tokens=estimate_tokens(prompt_chars) + IMAGE_TOKENS * len(image_urls),
        prefix_key=prefix_key,
        prefix_tokens=estimate_tokens(len(system) + len(prefix)),
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) and max_tokens > 0 else None,
    )


def _task(prompt: _Prompt) -> str:
    """The schema name of the answer: from response_format, else told by the data blocks."""
    if prompt.schema_name in _TASKS:
        return prompt.schema_name
    blocks = prompt.blocks
    if "product" in blocks and "query" in blocks:
        return schemas.JUDGEMENT_SCHEMA_NAME
    if "query" in blocks:
        return schemas.GUIDELINE_SCHEMA_NAME
    if prompt.image_urls:
        return schemas.CAPTION_SCHEMA_NAME
    raise ApiError(
        400,
        f"The simulated endpoint answers only {', '.join(_TASKS)} requests (response_format json_schema name "
        f"{prompt.schema_name!r}, and no query/product data blocks or image to tell the task).",
        param="response_format",
    )


def _image_bytes(url: str) -> bytes:
    if not url.startswith("data:") or "," not in url:
        raise ApiError(400, "The simulated endpoint reads images only from data: URLs (base64).", param="messages")
    header, data = url.split(",", 1)
    if ";base64" not in header:
        raise ApiError(400, "Image data URLs must be base64-encoded.", param="messages")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(400, f"Invalid base64 image data: {error}", param="messages") from error


@lru_cache(maxsize=256)
def _cached_caption(url: str) -> dict[str, Any]:
    try:
        return describe_image(_image_bytes(url))
    except ApiError:
        raise
    except Exception as error:  # Pillow raises several types for undecodable images
        raise ApiError(400, f"The image could not be decoded: {error}", param="messages") from error


def _caption(url: str) -> dict[str, Any]:
    caption = _cached_caption(url)
    return {**caption, "colours": list(caption["colours"])}


@lru_cache(maxsize=1024)
def _guideline(query: str, scale_json: str) -> str:
    return json.dumps(make_guideline(query, json.loads(scale_json) or None), ensure_ascii=False)


def answer(task: str, blocks: Mapping[str, Any], image_urls: Sequence[str]) -> dict[str, Any]:
    """The judge's answer (a dict of the task's schema) to one request's data blocks and images."""
    try:
        if task == schemas.CAPTION_SCHEMA_NAME:
            if not image_urls:
                raise ApiError(400, "An image_caption request needs an image_url content part.", param="messages")
            return _caption(image_urls[0])
        query = blocks.get("query")
        if not isinstance(query, str):
            raise ApiError(400, 'The request has no <data name="query"> block holding a string.', param="messages")
        scale = blocks.get("scale") or None
        if task == schemas.GUIDELINE_SCHEMA_NAME:
            return json.loads(_guideline(query, json.dumps(scale, sort_keys=True)))
        product = blocks.get("product")
        if not isinstance(product, dict):
            raise ApiError(400, 'The request has no <data name="product"> block holding an object.', param="messages")
        guideline = blocks.get("guideline") if isinstance(blocks.get("guideline"), dict) else None
        caption = blocks.get("image_description") if isinstance(blocks.get("image_description"), dict) else None
        colours = _caption(image_urls[0])["colours"] if image_urls else None
        return judge(query, guideline, scale, product, image_description=caption, image_colours=colours)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ApiError(400, f"The data blocks do not fit a {task} request: {error!r}", param="messages") from error


def _render(reply: dict[str, Any], wants_json: bool) -> str:
    text = json.dumps(reply, ensure_ascii=False)
    # Without a JSON response format, answer the way chat models do: JSON inside a fenced block.
    return text if wants_json else f"Simulated answer:\n```json\n{text}\n```"


def _malformed(reply: dict[str, Any], rng: random.Random) -> str:
    """A reply that must not become a result: cut off, another shape, a required field missing, or off the scale."""
    text = json.dumps(reply, ensure_ascii=False)
    draw = rng.random()
    if draw < 0.35:
        return text[: max(1, len(text) // 2)]  # cut off: not JSON
    if draw < 0.6:
        return json.dumps({"answer": "[simulated malformed reply]", "grade": "unknown"})  # JSON, wrong schema
    if draw < 0.8 or "grade" not in reply:
        first = next(iter(reply))
        return json.dumps({k: v for k, v in reply.items() if k != first}, ensure_ascii=False)  # a field missing
    return json.dumps({**reply, "grade": 7}, ensure_ascii=False)  # the right shape, a grade no scale has


# ---------------------------------------------------------------------------------------------- the app


class SimServer:
    """Handlers and state of one simulated endpoint."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.error_rng = random.Random(config.seed)
        self.latency_rng = random.Random(config.seed + 1)
        self.slots = asyncio.Semaphore(config.max_in_flight)
        self.requests_window = SlidingWindow(config.rpm) if config.rpm else None
        self.tokens_window = SlidingWindow(config.tpm) if config.tpm else None
        self.prefixes = PrefixCache(config.prefix_cache_size)
        self.recorded: collections.deque[dict[str, Any]] | None = (
            collections.deque(maxlen=config.record_requests) if config.record_requests else None)
        self._auth = (f"Bearer {config.api_key.get_secret_value()}" if config.api_key else None)
        self._completions_authorized = 0
        thresholds, total = [], 0.0
        for kind in ERROR_KINDS:
            total += config.error_rate(kind)
            thresholds.append((total, kind))
        self._error_thresholds = thresholds if total > 0 else []

    # -- helpers

    def _check_auth(self, request: web.Request, completion: bool = False) -> None:
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

    def _rate_limit(self, prompt: _Prompt) -> dict[str, str]:
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
                    type_=kind, code="rate_limit_exceeded", headers=_retry_headers(wait),
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

    def _injected_error(self) -> str | None:
        if not self._error_thresholds:
            return None
        draw = self.error_rng.random()
        for threshold, kind in self._error_thresholds:
            if draw < threshold:
                return kind
        return None

    def _completion(self, prompt: _Prompt, content: str, cached: int) -> tuple[dict[str, Any], int]:
        completion_tokens = estimate_tokens(len(content))
        finish = "stop"
        if prompt.max_tokens is not None and completion_tokens > prompt.max_tokens:
            content, completion_tokens, finish = content[: prompt.max_tokens * 4], prompt.max_tokens, "length"
        body = {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prompt.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }],
            "usage": {
                "prompt_tokens": prompt.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        return body, completion_tokens

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
        self._check_auth(request, completion=True)
        raw = await request.read()
        stats.request_bytes_max = max(stats.request_bytes_max, len(raw))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"The request body is not valid JSON: {error}") from error
        if self.recorded is not None:
            self.recorded.append({"bytes": len(raw), "body": body})
        prompt = _read_prompt(body)
        stats.by_schema[prompt.schema_name or NO_SCHEMA] += 1
        stats.by_model[prompt.model] += 1
        check_modes(self.config, body, prompt.prompt_tokens, len(prompt.image_urls))
        task = _task(prompt)
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

    async def _serve(self, request: web.Request, prompt: _Prompt, task: str,
                     headers: dict[str, str]) -> web.StreamResponse:
        stats = self.stats
        injected = self._injected_error()
        delay = self._latency_s()
        if injected == "timeout":
            stats.injected_errors["timeout"] += 1
            await asyncio.sleep(self.config.timeout_hold_s)
            raise ApiError(504, "The simulated endpoint timed out (injected).", type_="timeout", code="timeout")
        if delay:
            await asyncio.sleep(delay)
        if injected == "5xx":
            stats.injected_errors["5xx"] += 1
            status = 500 if self.error_rng.random() < 0.5 else 503
            message = "The server had an error while processing your request (injected, simulated)."
            raise ApiError(status, message, type_="server_error", code="server_error" if status == 500 else "overloaded")
        if injected == "429":
            stats.injected_errors["429"] += 1
            wait = float(self.config.retry_after_s)
            raise ApiError(429, f"Rate limit reached (injected, simulated). Please try again in {wait:.0f}s.",
                           type_="requests", code="rate_limit_exceeded", headers=_retry_headers(wait))
        reply = answer(task, prompt.blocks, prompt.image_urls)
        cached = prompt.prefix_tokens if self.prefixes.seen_before(prompt.prefix_key) else 0
        if injected == "malformed":
            stats.injected_errors["malformed"] += 1
            content = _malformed(reply, self.error_rng)
        else:
            content = _render(reply, prompt.wants_json)
        body, completion_tokens = self._completion(prompt, content, cached)
        stats.prompt_tokens += prompt.prompt_tokens
        stats.completion_tokens += completion_tokens
        stats.cached_tokens += cached
        if self.tokens_window is not None:
            self.tokens_window.add(time.monotonic(), completion_tokens)
        if injected == "reset":
            stats.injected_errors["reset"] += 1
            request[_RESET_KEY] = True
            return await _reset_midway(request, json.dumps(body).encode(), hard=self.error_rng.random() < 0.5)
        return web.json_response(body, headers=headers, dumps=json.dumps)

    async def models(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": SYSTEM_FINGERPRINT}
                for name in self.config.models]
        return web.json_response({"object": "list", "data": data})

    async def model(self, request: web.Request) -> web.Response:
        self._check_auth(request)
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


def _retry_headers(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s))), "retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))}


async def _reset_midway(request: web.Request, body: bytes, hard: bool = False) -> web.StreamResponse:
    """Send the headers and half the body, then drop the connection (the client sees a broken response).

    `hard`: a TCP reset (RST, "connection reset by peer") instead of an orderly close (a truncated body).
    """
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if hard and sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.close()
    response.force_close()
    return response


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
    from rae_ray.sim.batches import register_batch_routes  # Files and Batch APIs (batch mode); imports this module

    register_batch_routes(app, server)
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
