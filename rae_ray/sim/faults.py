"""Faults the simulated endpoint injects on purpose: errors drawn at the configured rates, malformed replies,
connections dropped mid-response, the Retry-After headers of a 429, and busy Batch API routes."""

from __future__ import annotations

import json
import math
import random
import socket
import struct
from typing import Any

from aiohttp import web

from rae_ray.sim.config import ERROR_KINDS, SimConfig
from rae_ray.sim.protocol import ApiError


class FaultInjector:
    """Draws which fault (if any) a request gets, at the configured rates; seeded, so runs repeat."""

    def __init__(self, config: SimConfig) -> None:
        self.rng = random.Random(config.seed)
        thresholds, total = [], 0.0
        for kind in ERROR_KINDS:
            total += config.error_rate(kind)
            thresholds.append((total, kind))
        self._thresholds = thresholds if total > 0 else []

    def draw(self) -> str | None:
        """The fault kind of the next request, or None."""
        if not self._thresholds:
            return None
        draw = self.rng.random()
        for threshold, kind in self._thresholds:
            if draw < threshold:
                return kind
        return None

    def malformed(self, reply: dict[str, Any]) -> str:
        return malformed(reply, self.rng)


def malformed(reply: dict[str, Any], rng: random.Random) -> str:
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


def retry_headers(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait_s))), "retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))}


async def reset_midway(request: web.Request, body: bytes, hard: bool = False) -> web.StreamResponse:
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


class BusyRoutes:
    """The first `failures` calls of each route refused, 429 with Retry-After and 503 in turn (`batch_api_failures`)."""

    def __init__(self, failures: int, retry_after_s: float) -> None:
        self.failures, self.retry_after_s = failures, retry_after_s
        self.calls: dict[str, int] = {}
        self.refused = 0

    def check(self, route: str) -> None:
        calls = self.calls[route] = self.calls.get(route, 0) + 1
        if calls > self.failures:
            return
        self.refused += 1
        if calls % 2:
            raise ApiError(429, f"Too many requests (injected, simulated). Please try again in {self.retry_after_s:.0f}s.",
                           type_="requests", code="rate_limit_exceeded", headers=retry_headers(self.retry_after_s))
        raise ApiError(503, "The server is overloaded (injected, simulated).", type_="server_error", code="overloaded")
