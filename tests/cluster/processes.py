"""Starting and stopping Ray heads of our own for the cluster tests: free ports, and stopping exactly the processes
a head started (never `ray stop`, which stops every Ray on the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_head(process: subprocess.Popen[bytes], temp_dir: str) -> None:
    """SIGTERM to `ray start --block` (it stops what it started), then SIGKILL whatever of ours is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the process group start_new_session gave it
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    # Workers the raylet spawned (and the nodes an autoscaler started) can sit in their own groups; their command
    # lines name our temp dir, which no other Ray uses.
    deadline = time.monotonic() + 10
    while (pids := pids_naming(temp_dir)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)


def pids_naming(text: str) -> list[int]:
    """Processes whose command line contains `text` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids
