"""Driver memory as the log grows: the job on logs of 20,000 and 200,000 unique pairs (simulated endpoint, no
added latency), each in a fresh driver process; the driver's peak RSS must grow by at most 1.15x.

The driver holds no rows of the log: Ray Data streams them through tasks and actors; only aggregated tables
(per-query metrics, counts) come to the driver. Exits non-zero unless the target holds; prints figures last.

Also measured, for docs/scaling.md: the driver's RSS through the run (sampled every 0.25 s, with the step it was
in: the job's own step functions are wrapped to name it; and its part in shared memory, i.e. objects read from
Ray's object store), the peak RSS of each LLM-stage actor (the Ray worker processes of the guideline and annotate pools: both
run as KeyedStage), and the annotation rate per actor with no endpoint latency (the actors' own ceiling: client CPU, not the endpoint).

    .venv/bin/python benchmarks/driver_memory.py [--sizes 20000,200000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
MARKER = "driver-memory figures: "
GROWTH_TARGET = 1.15
# The job's steps, by the functions `rae_ray.job` calls (each sample of RSS is booked to the step running then).
STEPS = ("read_log", "build_pairs", "attach_images", "write_guidelines", "write_labels", "write_errors", "evaluate",
         "usage_totals", "write_report")


def synthetic_log(pairs_wanted: int, out: Path) -> int:
    """The chorus log with its queries repeated as variants ("laptop #2", ...) until it has enough unique pairs."""
    import polars as pl

    from rae_ray.io import sample_dir

    log = pl.read_parquet(sample_dir() / "search_log.parquet")
    per_copy = log.select("query", "product_id").unique().height
    copies = -(-pairs_wanted // per_copy)
    frames = [log.with_columns((pl.col("query") + f" #{i}") if i else pl.col("query")) for i in range(copies)]
    big = pl.concat(frames)
    # Trim whole queries so that the unique pairs come close to the target.
    pairs = big.select("query", "product_id").unique()
    counts = pairs.group_by("query").len().sort("query")
    keep = counts.filter(pl.col("len").cum_sum() <= pairs_wanted)["query"]
    big = big.filter(pl.col("query").is_in(keep))
    big.write_parquet(out)
    return big.select("query", "product_id").unique().height


def child(pairs_wanted: int) -> None:
    """One run in this process; prints JSON with the driver's peak RSS."""
    from rae_ray.config import config_from_dict
    from rae_ray.job import run
    from rae_ray.sim.process import SimProcess

    sampler = Sampler().start()
    sampler.follow_steps()
    with tempfile.TemporaryDirectory() as tmp, SimProcess() as sim:
        unique = synthetic_log(pairs_wanted, Path(tmp) / "log.parquet")
        config = config_from_dict({
            "input": {"log": str(Path(tmp) / "log.parquet"), "catalog": "sample:products.parquet"},
            "llm": {"endpoints": {"default": {"base_url": sim.base_url, "api_key_required": False}},
                    "guidelines": {"model": "sim-judge"}, "annotate": {"model": "sim-judge"}},
            "compute": {"num_cpus": 2, "annotate": {"max_actors": 2, "batch_size": 128, "max_concurrent_requests": 64}},
            "metrics": {"bootstrap": 200},
            "output": {"uri": str(Path(tmp) / "out")},
        })
        started = time.monotonic()
        result = run(config)
        seconds = time.monotonic() - started
    sampler.stop()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    annotate_s = result.manifest["seconds"].get("annotate") or float("nan")
    actors = config.compute.annotate.max_actors
    print(MARKER + json.dumps({
        "unique_pairs": unique, "labelled": result.manifest["labelled"],
        "driver_peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(seconds, 1),
        "annotate_seconds": round(annotate_s, 1), "annotate_actors": actors,
        "pairs_per_s_per_actor": round(result.manifest["llm_calls"]["annotate"] / annotate_s / actors, 1),
        "stage_actor_peak_rss_mib": sampler.actor_peaks(), "driver_rss_by_step_mib": sampler.by_step(),
        "driver_shared_rss_by_step_mib": sampler.by_step(shared=True),
    }), flush=True)


class Sampler:
    """Samples this process's RSS (tagged with the step of the job running then) and the LLM-stage actors' RSS."""

    def __init__(self, every_s: float = 0.25):
        import threading

        self.every_s = every_s
        self.samples: list[tuple[str, float, float]] = []
        self.actors: dict[int, float] = {}
        self.step = "start"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def follow_steps(self) -> None:
        """Wrap the job's step functions so that each sample names the step it was taken in."""
        import functools

        import rae_ray.job

        for name in STEPS:
            function = getattr(rae_ray.job, name)

            @functools.wraps(function)
            def step(*args, _function=function, _name=name, **kwargs):
                self.step = _name
                try:
                    return _function(*args, **kwargs)
                finally:
                    self.step = f"after {_name}"

            setattr(rae_ray.job, name, step)

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((self.step, rss_mib("self"), rss_mib("self", "RssShmem:")))
            for pid in stage_actor_pids():
                self.actors[pid] = max(self.actors.get(pid, 0.0), rss_mib(str(pid)))

    def by_step(self, shared: bool = False) -> dict[str, float]:
        peaks: dict[str, float] = {}
        for step, rss, shmem in self.samples:
            peaks[step] = max(peaks.get(step, 0.0), round(shmem if shared else rss, 1))
        return peaks

    def actor_peaks(self) -> list[float]:
        return sorted(round(v, 1) for v in self.actors.values())


def rss_mib(pid: str, field: str = "VmRSS:") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def stage_actor_pids() -> list[int]:
    """Ray names an actor's worker process after its class: the LLM stages' pools run MapWorker(...KeyedStage...)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::MapWorker(MapBatches(KeyedStage))"):
                pids.append(int(proc.name))
    return pids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="20000,200000")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0
    figures = []
    for size in (int(s) for s in args.sizes.split(",")):
        done = subprocess.run([sys.executable, __file__, "--child", str(size)], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            print(f"FAIL  run with {size} pairs exited {done.returncode}")
            return 1
        # Ray and the job print to stdout too, also after the figures (at shutdown): find the marked line.
        lines = [line.removeprefix(MARKER) for line in done.stdout.splitlines() if line.startswith(MARKER)]
        if not lines:
            print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            print(f"FAIL  run with {size} pairs printed no figures")
            return 1
        figures.append(json.loads(lines[-1]))
    small, large = figures[0], figures[-1]
    growth = large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]
    ok = growth <= GROWTH_TARGET
    for figure in figures:
        print(f"{figure['unique_pairs']:>7} unique pairs: driver peak RSS {figure['driver_peak_rss_mib']} MiB, "
              f"{figure['seconds']} s, {figure['labelled']} labelled")
        print(f"        driver RSS peak by step (MiB): {figure['driver_rss_by_step_mib']}")
        print(f"        of which shared memory (objects read from Ray's object store): "
              f"{figure['driver_shared_rss_by_step_mib']}")
        print(f"        annotation: {figure['annotate_actors']} actors, {figure['annotate_seconds']} s, "
              f"{figure['pairs_per_s_per_actor']} pairs/s per actor (no endpoint latency); "
              f"peak RSS of the guideline and annotate actors (MiB) {figure['stage_actor_peak_rss_mib']}")
    print(f"growth {large['unique_pairs'] / small['unique_pairs']:.1f}x pairs -> {growth:.2f}x driver memory "
          f"(target <= {GROWTH_TARGET}x): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
