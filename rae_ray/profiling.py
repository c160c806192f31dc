"""CPU profiles of the stage actors, for finding where the job's CPU per pair goes (off unless asked).

With RAE_RAY_PROFILE_DIR set in the environment the job starts in (a local Ray's workers inherit it), every
LLM-stage actor profiles its event loop with cProfile and writes `<dir>/<stage>-<pid>.prof` every few batches
(read with `python -m pstats`); the time its batches spend publishing to the label store (a worker thread) is
added up apart, in `<dir>/<stage>-<pid>.json`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "RAE_RAY_PROFILE_DIR"


class ActorProfile:
    """One actor's profile; `None` from `start` when profiling is off."""

    def __init__(self, folder: str, name: str, every: int = 8):
        import cProfile

        self.path = Path(folder) / f"{name}-{os.getpid()}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.profile = cProfile.Profile()
        self.every, self.batches, self.rows = every, 0, 0
        self.thread_cpu_s = 0.0
        self.started_cpu = time.process_time()
        self.enabled = False

    @classmethod
    def start(cls, name: str) -> ActorProfile | None:
        folder = os.environ.get(ENV)
        return cls(folder, name) if folder else None

    def enter(self) -> None:
        """At the start of a batch, in the event loop's thread (cProfile sees only the thread it is enabled in)."""
        if not self.enabled:
            self.profile.enable()
            self.enabled = True

    def add_thread_cpu(self, seconds: float) -> None:
        self.thread_cpu_s += seconds

    def batch_done(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        if self.batches % self.every == 0:
            self.profile.dump_stats(str(self.path) + ".prof")
            self.path.with_suffix(".json").write_text(json.dumps({
                "batches": self.batches, "rows": self.rows, "process_cpu_s": time.process_time() - self.started_cpu,
                "publish_thread_cpu_s": self.thread_cpu_s, "cpu_s_by_thread": thread_cpu()}))


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by name (Python's, else the OS's), from /proc."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            text = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        name = names.get(int(tid)) or "os:" + text[text.index("(") + 1:text.rindex(")")]
        out[name] = round(out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks, 2)
    return out
