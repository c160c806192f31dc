"""Start the simulated endpoint for demos, tests and benchmarks: as a child process, or in a background thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from rae_ray.sim.config import API_KEY_ENV, SimConfig
from rae_ray.sim.server import LISTENING_LINE, run_server

_LISTENING_PREFIX = LISTENING_LINE.split("{", 1)[0]


class SimStartError(RuntimeError):
    """The simulated endpoint did not come up."""


class _StatsClient:
    base_url: str

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _call(self, method: str, path: str, timeout: float = 10.0) -> dict[str, Any]:
        request = urllib.request.Request(self.root_url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """The endpoint's counters (`GET /stats`)."""
        return self._call("GET", "/stats")

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counters (`POST /stats/reset`)."""
        return self._call("POST", "/stats/reset")


class SimProcess(_StatsClient):
    """`python -m rae_ray.sim` in a child process, on a free port, as a context manager.

    `SimProcess(latency_ms=5, rpm=600)` takes `SimConfig` fields (a different `port` or `host` too). The API key,
    if any, reaches the child through its environment, never its command line.
    """

    def __init__(self, start_timeout_s: float = 30.0, **config: Any) -> None:
        self.config = SimConfig(**config)
        self.start_timeout_s = start_timeout_s
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout = self._stderr = None

    def start(self) -> SimProcess:
        if self._process is not None:
            raise RuntimeError("this SimProcess is already started")
        env = dict(os.environ)
        env.pop(API_KEY_ENV, None)
        # The child imports this same copy of the package, whatever its working directory.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if self.config.api_key is not None:
            env[API_KEY_ENV] = self.config.api_key.get_secret_value()
        self._stdout = tempfile.TemporaryFile()
        self._stderr = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "rae_ray.sim", *self.config.to_argv()]
        self._process = subprocess.Popen(command, stdout=self._stdout, stderr=self._stderr, env=env,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            line = self._first_line()
            if line.startswith(_LISTENING_PREFIX):
                self.base_url = line[len(_LISTENING_PREFIX):].split(" ", 1)[0]
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.02)
        code = self._process.poll()
        self.stop()
        state = f"exited with code {code}" if code is not None else f"did not start in {self.start_timeout_s:.0f} s"
        raise SimStartError(f"the simulated endpoint {state}: {' '.join(command)}\n--- stderr ---\n{self._read_stderr()}")

    def _first_line(self) -> str:
        assert self._stdout is not None
        self._stdout.seek(0)
        data = self._stdout.readline()
        return data.decode(errors="replace").strip() if data.endswith(b"\n") else ""

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-8000:]

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Terminate the child (SIGTERM, then SIGKILL after `timeout_s`); returns its exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()
        self._stdout = self._stderr = None


class SimThread(_StatsClient):
    """The same endpoint served by an event loop in a daemon thread of this process (no child process)."""

    def __init__(self, start_timeout_s: float = 30.0, **config: Any) -> None:
        self.config = SimConfig(**config)
        self.start_timeout_s = start_timeout_s
        self.base_url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> SimThread:
        self._thread = threading.Thread(target=self._run, name="rae-ray-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s) or self._error is not None:
            self.stop()
            raise SimStartError(f"the in-process simulated endpoint did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with run_server(self.config) as base_url:
                self.base_url = base_url
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as error:  # reported by start()
            self._error = error
            self._ready.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self) -> SimThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
