"""Fixtures for the image tests: generated product photos, a local image server on 127.0.0.1, stage configs."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from rae_ray.config import EndpointConfig, ImageConfig, ScaleConfig, StageModelConfig
from rae_ray.sim.process import SimThread
from rae_ray.stages.common import LLMStageConfig

COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60)}


def product_photo(colour: str, size: tuple[int, int] = (120, 120), image_format: str = "PNG",
                  transparent: bool = False) -> bytes:
    """A product shot: a coloured mug-like block on a white (or transparent) background."""
    from PIL import Image

    width, height = size
    mode, background = ("RGBA", (0, 0, 0, 0)) if transparent else ("RGB", "white")
    image = Image.new(mode, size, background)
    body = Image.new(mode, (width * 6 // 10, height * 7 // 10), COLOURS[colour])
    image.paste(body, (width // 5, height * 15 // 100))
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with a few bytes of pixel data (a bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # clients that hang up early (limits, timeouts)
        pass


class ImageServer:
    """A plain HTTP server on 127.0.0.1 in a thread: fixed routes, plus `/redirect?to=URL` and `/slow`."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parts.path == "/slow":
                    time.sleep(float(parse_qs(parts.query).get("s", ["2"])[0]))
                if parts.path == "/stream":  # no Content-Length: the body ends when the connection closes
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    for _ in range(int(parse_qs(parts.query).get("chunks", ["10"])[0])):
                        self.wfile.write(b"\x00" * 16384)
                    return
                status, content_type, body = server.routes.get(parts.path, (404, "text/plain", b"not found"))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._http = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="image-server", daemon=True)

    def add(self, path: str, body: bytes, content_type: str = "image/png", status: int = 200) -> str:
        self.routes[path] = (status, content_type, body)
        return self.base + path

    def url(self, path: str) -> str:
        return self.base + path

    def hits(self, path: str) -> int:
        return sum(1 for p in self.requests if urlsplit(p).path == path)

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture
def image_config() -> Callable[..., ImageConfig]:
    """`image_config(**fields)`: an ImageConfig that allows the local test server (127.0.0.1) only."""

    def make(**fields) -> ImageConfig:
        return ImageConfig(**{"allow_hosts": ["127.0.0.1"], "timeout_s": 5.0, **fields})

    return make


@pytest.fixture(scope="module")
def sim_thread() -> Iterator[SimThread]:
    """A simulated endpoint of this module alone, so its call counters are exact."""
    with SimThread() as sim:
        yield sim


def llm_stage_config(base_url: str, model: str = "sim-judge") -> LLMStageConfig:
    return LLMStageConfig(
        endpoint=EndpointConfig(base_url=base_url, api_key_required=False, max_retries=1, backoff_base_s=0.05,
                                backoff_max_s=0.2),
        model=StageModelConfig(model=model),
        scale=ScaleConfig().as_dicts(),
        max_concurrent_requests=8,
    )
