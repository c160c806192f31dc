"""moto's S3 server in a child process, on a free loopback port: the S3 endpoint of the tests and benchmarks.

A child process, not moto's in-process `ThreadedMotoServer`: deltalake's Rust calls (`DeltaTable.is_deltatable`
among them) hold the GIL while they wait for S3, so a server thread in the same process could never answer them
and the call hung until its 180 s retry timeout.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MotoServer:
    """`python -m moto.server` as a context manager; `endpoint` is its http://127.0.0.1:PORT once started."""

    def __init__(self, start_timeout_s: float = 60.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.endpoint = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def start(self) -> MotoServer:
        port = free_port()
        self._process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        code = self._process.poll()
        self.stop()
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-2000:]
        state = f"exited with code {code}" if code is not None else f"did not answer in {self.start_timeout_s:.0f} s"
        raise RuntimeError(f"moto's S3 server {state}:\n{tail}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
