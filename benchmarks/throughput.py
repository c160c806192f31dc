"""Throughput benchmark: does the whole job sit on the endpoint's ceiling, and stay under its rate limit?

Starts the simulated endpoint (1,000 ms latency, at most 64 requests in flight), then, in one run:
(a) a bare `AsyncOpenAI` loop, 64 requests at a time: the endpoint's ceiling in LLM calls/s;
(b) the whole job (`rae_ray.job.run`) on a log generated from the bundled chorus sample (query variants and
    a synthetic ranker version that lists other catalog products; >= 10,000 unique pairs), guidelines included:
    all its LLM calls over the job's wall time from `run()` to the last labels file written, pairs/s, and
    CPU-seconds per 1,000 pairs, also as a ratio of the bare loop's CPU per call (a);
(c) the same job against an endpoint limited to 3,000 requests/minute (sliding 60 s window, 429 + Retry-After),
    with `rpm: 3000` in the job's config.
Targets: (b)/(a) >= 0.9; the job's CPU per pair <= 2x the bare loop's CPU per call; (c) finishes at >= 90% of
the allowed rate with <= 1% of calls answered 429.
Exits 1 unless they hold; figures are printed last (one JSON object, then a table).

How the figures are taken:
- calls: the endpoint's own counter (`/stats` requests_total, completions only), reset before each phase;
- job wall time: from the call of `run()` to the mtime of the newest `OUT/labels/*.parquet` (labels written);
  Ray is started before the clock (a private local Ray, see `start_private_ray`; as on a cluster the job is
  submitted to), its start-up time printed apart with the ratio it would give if counted;
- CPU of the bare loop: this process's `getrusage(RUSAGE_SELF)` over its calls (the requests are built before;
  the simulated endpoint is another process, not counted);
- CPU of the job: the driver's own `getrusage(RUSAGE_SELF)` (less the benchmark's sampling threads), plus every descendant process of the driver read from
  /proc/<pid>/stat (utime + stime) every 0.25 s, split into Ray workers (process title `ray::...`: the stage
  actors, tasks, Ray Data's own actors), Ray's daemons (raylet, gcs, dashboard and runtime-env agents, log
  monitor) and the simulated endpoint (not ours, shown apart). An idle local Ray uses ~2 CPU-s a minute.
  A process's last < 0.25 s before it exits is not seen.
- machine load: `os.getloadavg()` before and after each phase (the machine has 2 cores shared with others).

    python benchmarks/throughput.py [--variants 3] [--extra-products 9] [--bare-calls 960] [--skip-rpm] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
from openai import AsyncOpenAI

from rae_ray.config import config_from_dict
from rae_ray.io import sample_dir
from rae_ray.llm.prompts import annotation_messages
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement, response_format
from rae_ray.job import run
from rae_ray.sim.judge import DEFAULT_SCALE, make_guideline
from rae_ray.sim.process import SimProcess
from rae_ray.stages.annotate import product_for_prompt

LATENCY_MS = 1000.0
MAX_IN_FLIGHT = 64
RPM = 3000
MODEL = "sim-judge"
RATIO_TARGET = 0.9
CPU_RATIO_TARGET = 2.0  # the job's CPU per pair over the bare client's CPU per call
RATE_TARGET = 0.9
MAX_429_SHARE = 0.01
# Query variants: each is a new query (its own guideline) over the same products as the original.
VARIANTS = ("{q}", "{q} deal", "buy {q}", "{q} online", "best {q}", "cheap {q}")
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- the log


def make_log(folder: Path, variants: int, extra_products: int, seed: int = 0) -> dict[str, Any]:
    """A bigger search log from the chorus sample: `variants` versions of every query, each ranked by the three
    real rankers and by `synthetic-v3`, which keeps the bm25 ranker's first product and fills its list with
    `extra_products` random catalog products (different for every query variant)."""
    chorus = sample_dir()
    log = pl.read_parquet(chorus / "search_log.parquet")
    catalog = pl.read_parquet(chorus / "products.parquet")
    if not 1 <= variants <= len(VARIANTS):
        raise SystemExit(f"--variants must be between 1 and {len(VARIANTS)}")
    rng = random.Random(seed)
    product_ids = catalog["product_id"].to_list()
    frames = []
    for template in VARIANTS[:variants]:
        frames.append(log.with_columns(pl.col("query").map_elements(lambda q, t=template: t.format(q=q),
                                                                    return_dtype=pl.String)))
    real = pl.concat(frames)
    synthetic = []
    first_bm25 = real.filter((pl.col("ranker") == "bm25-v1") & (pl.col("rank") == 1))
    counts = dict(real.group_by("query").agg(pl.col("query_count").first()).iter_rows())
    for query in sorted(counts):
        firsts = first_bm25.filter(pl.col("query") == query)["product_id"].to_list()
        chosen = firsts[:1] + rng.sample(product_ids, extra_products)
        for rank, product in enumerate(dict.fromkeys(chosen), start=1):
            synthetic.append({"query": query, "query_count": counts[query], "ranker": "synthetic-v3", "rank": rank,
                              "product_id": product})
    full = pl.concat([real, pl.DataFrame(synthetic, schema=real.schema)])
    path = folder / "search_log.parquet"
    full.write_parquet(path)
    top = full.filter(pl.col("rank") <= 10)
    return {"log": str(path), "catalog": str(chorus / "products.parquet"), "rows": full.height,
            "queries": full["query"].n_unique(),
            "pairs": top.select("query", "product_id").unique().height}


# ---------------------------------------------------------------------------------------------- samplers


class StatsSampler(threading.Thread):
    """Polls the endpoint's /stats: (time, requests, in flight, queued, 429s) every `interval_s`."""

    def __init__(self, sim: SimProcess, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.sim, self.interval_s = sim, interval_s
        self.samples: list[tuple[float, int, int, int, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                s = self.sim.stats()
                self.samples.append((time.time(), s["requests_total"], s["in_flight"], s["queued"], s["responses_429"]))
            except OSError:
                pass
            self._halt.wait(self.interval_s)
        self.own_cpu_s = time.thread_time()  # the benchmark's own cost, taken off the driver's figure

    def stop(self) -> list[tuple[float, int, int, int, int]]:
        self._halt.set()
        self.join()
        return self.samples


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS


_RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
# Worker processes start as these scripts, then take a `ray::<task or actor>` title.
_WORKER_SCRIPTS = ("default_worker.py", "setup_worker.py")


def _proc_kind(pid: int, sim_pid: int | None) -> tuple[str, str]:
    """(kind, title) of a descendant now: the sim, a Ray worker (`ray::...` title, or still starting) or a daemon."""
    if pid == sim_pid:
        return "sim", "sim"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return "ray_system", "?"
    if argv and argv[0].startswith("ray::"):
        title = argv[0].split(" ")[0][:60]
        return ("ray_system" if title in _RAY_AGENTS else "ray_workers"), title
    named = next((os.path.basename(a) for a in argv if a.endswith(".py") or "raylet" in a or "gcs_server" in a),
                 os.path.basename(argv[0]) if argv else "?")
    return ("ray_workers" if named in _WORKER_SCRIPTS else "ray_system"), named


class CpuSampler(threading.Thread):
    """CPU seconds of every descendant of this process, sampled from /proc; each sample's increase is booked to
    what the process is at that moment (its kind and `ray::` title), so a worker's start-up, its tasks and its
    actor show apart."""

    def __init__(self, sim_pid: int | None, interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.sim_pid, self.interval_s = sim_pid, interval_s
        self.last: dict[int, float] = {}
        self.by_kind: dict[str, float] = {"ray_workers": 0.0, "ray_system": 0.0, "sim": 0.0}
        self.by_name: dict[str, float] = {}
        self.driver_threads: dict[str, float] = {}  # the driver's CPU by thread (Python name, else the OS's)
        self._thread_last: dict[int, float] = {}
        self._halt = threading.Event()
        self._root = os.getpid()
        self._sample(initial=True)

    def _sample_threads(self, initial: bool) -> None:
        names = {t.native_id: t.name for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as handle:
                    text = handle.read()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICKS
            used = cpu - self._thread_last.get(int(tid), cpu if initial else 0.0)
            self._thread_last[int(tid)] = cpu
            if used > 0:
                name = names.get(int(tid)) or "os:" + text[text.index("(") + 1:text.rindex(")")]
                name = name.rstrip("0123456789_-() ") or name  # ThreadPoolExecutor-3_0 -> ThreadPoolExecutor
                self.driver_threads[name] = self.driver_threads.get(name, 0.0) + used

    def _sample(self, initial: bool = False) -> None:
        self._sample_threads(initial)
        parents: dict[int, int] = {}
        cpu: dict[int, float] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _proc_stat(int(name))
                if stat is not None:
                    parents[int(name)], cpu[int(name)] = stat
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        stack, seen = [self._root], set()
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        for pid in seen:
            before = self.last.get(pid, cpu[pid] if initial else 0.0)
            self.last[pid] = cpu[pid]
            used = cpu[pid] - before
            if used > 0:
                kind, title = _proc_kind(pid, self.sim_pid)
                self.by_kind[kind] += used
                self.by_name[f"{kind}:{title}"] = self.by_name.get(f"{kind}:{title}", 0.0) + used

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self._sample()
        self.own_cpu_s = time.thread_time()

    def stop(self) -> dict[str, float]:
        self._halt.set()
        self.join()
        self._sample()
        return dict(self.by_kind)


def _driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------- (a) bare loop


def sample_requests(n: int, seed: int = 1) -> list[list[dict]]:
    """Annotation requests shaped like the job's (instructions, guideline, product) from the chorus sample."""
    chorus = sample_dir()
    log = pl.read_parquet(chorus / "search_log.parquet").filter(pl.col("rank") <= 10)
    catalog = pl.read_parquet(chorus / "products.parquet")
    pairs = log.join(catalog, on="product_id").select("query", "title", "brand", "description", "attributes")
    rows = pairs.sample(n=min(n, pairs.height), seed=seed).to_dicts()
    scale = [dict(g) for g in DEFAULT_SCALE]
    guidelines: dict[str, dict] = {}
    requests = []
    for row in rows:
        guideline = guidelines.setdefault(row["query"], make_guideline(row["query"], scale))
        requests.append(annotation_messages(row["query"], guideline, scale, product_for_prompt(row)))
    return requests


async def bare_loop(base_url: str, n_calls: int, concurrency: int) -> dict[str, Any]:
    """`concurrency` workers sending `n_calls` judgements back to back with a plain AsyncOpenAI client."""
    requests = sample_requests(n_calls)
    client = AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0, timeout=60)
    fmt = response_format(RelevanceJudgement, JUDGEMENT_SCHEMA_NAME)
    queue = list(range(n_calls))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        while queue:
            i = queue.pop()
            try:
                reply = await client.chat.completions.create(model=MODEL, messages=requests[i % len(requests)],
                                                             response_format=fmt, temperature=0,
                                                             max_completion_tokens=800)
                RelevanceJudgement.model_validate_json(reply.choices[0].message.content)
            except Exception:  # counted, the figure needs every call
                errors += 1

    started, cpu_before = time.monotonic(), _driver_cpu()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds, cpu = time.monotonic() - started, _driver_cpu() - cpu_before
    await client.close()
    return {"calls": n_calls, "errors": errors, "seconds": round(seconds, 3), "calls_per_s": n_calls / seconds,
            "cpu_s": round(cpu, 2), "cpu_s_per_1000_calls": 1000 * cpu / n_calls}


# ---------------------------------------------------------------------------------------------- (b), (c) the job


def job_config(sim_url: str, data: dict[str, Any], out: Path, rpm: int | None) -> dict[str, Any]:
    """The job sized to the endpoint: 64 in flight split over the actors of each stage, overlapping batches."""
    endpoint: dict[str, Any] = {"base_url": sim_url, "api_key_env": "RAE_BENCH_UNSET", "api_key_required": False,
                                "max_in_flight": MAX_IN_FLIGHT, "timeout_s": 60, "backoff_base_s": 0.25,
                                "backoff_max_s": 5}
    if rpm is not None:
        endpoint["rpm"] = rpm
    # Each actor gets max_in_flight // max_actors requests at once (runtime.stage_config); min = max actors so
    # the pool does not have to scale up while the clock runs. 2 batches of 64 rows per actor keep its semaphore
    # full while the next batch arrives.
    annotate = {"min_actors": 2, "max_actors": 2, "batch_size": 64, "max_concurrent_requests": 32,
                "max_concurrent_batches": 4, "num_cpus": 0.25}
    guidelines = {"min_actors": 2, "max_actors": 2, "batch_size": 16, "max_concurrent_requests": 32,
                  "max_concurrent_batches": 4, "num_cpus": 0.25}
    return {
        "run_id": "bench",
        "input": {"log": data["log"], "catalog": data["catalog"]},
        "llm": {"endpoints": {"default": endpoint}, "guidelines": {"model": MODEL}, "annotate": {"model": MODEL}},
        "compute": {"shuffle_partitions": 4, "guidelines": guidelines, "annotate": annotate},
        "metrics": {"bootstrap": 100, "permutations": 200},
        "output": {"uri": str(out)},
    }


def start_private_ray() -> None:
    """A local Ray of this benchmark alone, started as `runtime.ensure_ray` starts one (no dashboard, all CPUs).

    `address="local"`: a bare `ray.init()` joins whatever Ray another process runs on the machine (and dies with
    it); a temp dir of its own: nobody else's bare `ray.init()` finds this one and puts work on its CPUs.
    """
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
             _temp_dir=tempfile.mkdtemp(prefix="rtb-", dir="/tmp"))
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def labels_written_at(root: Path) -> float:
    files = list((root / "labels").glob("*.parquet"))
    if not files:
        raise RuntimeError(f"no labels written under {root}")
    return max(f.stat().st_mtime for f in files)


def timeline(samples: list[tuple[float, int, int, int, int]], started: float, labelled_at: float,
             guideline_calls: int) -> dict[str, Any]:
    """Where the job's wall time went, seen from the endpoint (sampled every 0.25 s): before the first request,
    the guideline calls, the gap before the first annotation, the annotation calls, after the last reply.

    Also the mean requests in flight while annotating (the ceiling is 64) and the busiest 60 s.
    """
    if not samples or samples[-1][1] == 0:
        return {}
    total = samples[-1][1]
    first = next(t for t, n, *_ in samples if n > 0)
    guidelines_done = next((t for t, n, f, *_ in samples if n >= guideline_calls and f == 0), first)
    annotate_start = next((t for t, n, *_ in samples if n > guideline_calls), guidelines_done)
    last = next(t for t, n, f, *_ in samples if n == total and f == 0)
    annotating = [f for t, n, f, *_ in samples if annotate_start <= t <= last]
    times = [t for t, *_ in samples]
    counts = [n for _, n, *_ in samples]
    busiest, j = 0, 0
    for t, n in zip(times, counts):
        while times[j] < t - 60.0:
            j += 1
        busiest = max(busiest, n - (counts[j - 1] if j > 0 else 0))
    return {
        "before_first_request_s": round(first - started, 2),
        "guidelines_s": round(guidelines_done - first, 2),
        "gap_before_annotation_s": round(annotate_start - guidelines_done, 2),
        "annotation_s": round(last - annotate_start, 2),
        "after_last_reply_s": round(labelled_at - last, 2),
        "calls_per_s_first_to_last_request": round(total / (last - first), 2) if last > first else None,
        "mean_in_flight_annotating": round(sum(annotating) / len(annotating), 1) if annotating else None,
        "busiest_60s_requests": busiest if times[-1] - times[0] >= 60 else None,
    }


def run_job(sim: SimProcess, data: dict[str, Any], out: Path, rpm: int | None) -> dict[str, Any]:
    config = config_from_dict(job_config(sim.base_url, data, out, rpm))
    sim.reset_stats()
    load_before = _load()
    stats_sampler = StatsSampler(sim)
    cpu_sampler = CpuSampler(sim.pid)
    driver_before = _driver_cpu()
    stats_sampler.start()
    cpu_sampler.start()
    started = time.time()
    result = run(config)
    ended = time.time()
    driver = _driver_cpu() - driver_before
    cpu = cpu_sampler.stop()
    samples = stats_sampler.stop()
    driver -= cpu_sampler.own_cpu_s + stats_sampler.own_cpu_s
    stats = sim.stats()
    labelled_at = labels_written_at(Path(result.root))
    wall = labelled_at - started
    manifest = result.manifest
    calls = stats["requests_total"]
    pairs = manifest["pairs_unique"]
    ours = driver + cpu["ray_workers"]
    return {
        "load_before": load_before,
        "load_after": _load(),
        "pairs_unique": pairs,
        "queries": manifest["queries"],
        "llm_calls": calls,
        "llm_calls_by_stage": manifest["llm_calls"],
        "errors": manifest["errors"],
        "responses_429": stats["responses_429"],
        "share_429": calls and stats["responses_429"] / calls,
        "seconds_to_labels": round(wall, 2),
        "seconds_run_total": round(ended - started, 2),
        "seconds_by_step": manifest["seconds"],
        "calls_per_s": calls / wall,
        "pairs_per_s": pairs / wall,
        "cpu_s": {"driver": round(driver, 2), **{k: round(v, 2) for k, v in cpu.items()}},
        "cpu_s_by_process": {k: round(v, 2) for k, v in sorted(cpu_sampler.by_name.items(), key=lambda kv: -kv[1])
                             if v >= 0.5},
        "driver_cpu_s_by_thread": {k: round(v, 2) for k, v in sorted(cpu_sampler.driver_threads.items(),
                                                                     key=lambda kv: -kv[1]) if v >= 0.5},
        "cpu_s_per_1000_pairs": 1000 * ours / pairs,
        "cpu_s_per_1000_pairs_with_ray_daemons": 1000 * (ours + cpu["ray_system"]) / pairs,
        "timeline": timeline(samples, started, labelled_at, manifest["llm_calls"].get("guidelines", 0)),
        "root": result.root,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=3, help="versions of every chorus query (1-6)")
    parser.add_argument("--extra-products", type=int, default=9, help="random products per query (synthetic ranker)")
    parser.add_argument("--bare-calls", type=int, default=960, help="calls of the bare AsyncOpenAI loop")
    parser.add_argument("--min-pairs", type=int, default=10_000, help="fail unless the job annotates this many pairs")
    parser.add_argument("--skip-rpm", action="store_true", help="skip the 3,000 requests/minute run")
    parser.add_argument("--keep", action="store_true", help="keep the generated log and the outputs")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    work = Path(tempfile.mkdtemp(prefix="rae-throughput-"))
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_at_start": _load()}}
    failures: list[str] = []
    try:
        data = make_log(work, args.variants, args.extra_products)
        figures["log"] = {k: data[k] for k in ("rows", "queries", "pairs")}
        print(f"[bench] log: {data['rows']} rows, {data['queries']} queries, {data['pairs']} unique pairs; "
              f"load {_load()}", file=sys.stderr, flush=True)
        if data["pairs"] < args.min_pairs:
            failures.append(f"the generated log has {data['pairs']} unique pairs, fewer than {args.min_pairs}")

        with SimProcess(latency_ms=LATENCY_MS, max_in_flight=MAX_IN_FLIGHT) as sim:
            load = _load()
            bare = asyncio.run(bare_loop(sim.base_url, args.bare_calls, MAX_IN_FLIGHT))
            figures["a_bare_loop"] = {"load_before": load, **bare, "load_after": _load()}
            print(f"[bench] (a) bare loop: {bare['calls_per_s']:.2f} calls/s", file=sys.stderr, flush=True)

            ray_started = time.monotonic()
            start_private_ray()
            figures["ray_start_s"] = round(time.monotonic() - ray_started, 2)

            job = run_job(sim, data, work / "out-unlimited", rpm=None)
            figures["b_job"] = job
            print(f"[bench] (b) job: {job['calls_per_s']:.2f} calls/s", file=sys.stderr, flush=True)
        ratio = job["calls_per_s"] / bare["calls_per_s"]
        cpu_ratio = job["cpu_s_per_1000_pairs"] / bare["cpu_s_per_1000_calls"]
        figures["cpu_ratio_b_per_pair_over_a_per_call"] = cpu_ratio
        if cpu_ratio > CPU_RATIO_TARGET:
            failures.append(f"the job's CPU per pair is {cpu_ratio:.2f}x the bare loop's per call > {CPU_RATIO_TARGET}")
        figures["ratio_b_over_a"] = ratio
        figures["ratio_b_over_a_counting_ray_start"] = (
            job["llm_calls"] / (job["seconds_to_labels"] + figures["ray_start_s"]) / bare["calls_per_s"])
        if ratio < RATIO_TARGET:
            failures.append(f"(b)/(a) = {ratio:.3f} < {RATIO_TARGET}")
        if job["pairs_unique"] < args.min_pairs:
            failures.append(f"the job annotated {job['pairs_unique']} pairs, fewer than {args.min_pairs}")
        if bare["errors"] or any(job["errors"].values()):
            failures.append(f"errors: bare loop {bare['errors']}, job {job['errors']}")

        if not args.skip_rpm:
            with SimProcess(latency_ms=LATENCY_MS, max_in_flight=MAX_IN_FLIGHT, rpm=RPM) as sim:
                limited = run_job(sim, data, work / "out-rpm", rpm=RPM)
            allowed = RPM / 60.0
            limited["allowed_calls_per_s"] = allowed
            limited["share_of_allowed_rate"] = limited["calls_per_s"] / allowed
            figures["c_rpm_job"] = limited
            if limited["share_of_allowed_rate"] < RATE_TARGET:
                failures.append(f"rpm run at {limited['share_of_allowed_rate']:.3f} of the allowed rate < {RATE_TARGET}")
            if limited["share_429"] > MAX_429_SHARE:
                failures.append(f"rpm run: {limited['share_429']:.4f} of calls answered 429 > {MAX_429_SHARE}")
            if any(limited["errors"].values()):
                failures.append(f"rpm run errors: {limited['errors']}")
    finally:
        try:
            import ray

            ray.shutdown()
        except Exception:
            pass
        if args.keep:
            print(f"[bench] kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    figures["machine"]["load_at_end"] = _load()
    figures["failures"] = failures
    print(json.dumps(figures, indent=2, default=str))
    print(summary(figures))
    return 1 if failures else 0


def summary(figures: dict[str, Any]) -> str:
    a, b, c = figures.get("a_bare_loop", {}), figures.get("b_job", {}), figures.get("c_rpm_job")
    lines = [
        f"machine: {figures['machine']['cpus']} cpus, load (1/5/15 min) at start {figures['machine']['load_at_start']}, "
        f"at end {figures['machine']['load_at_end']}",
        f"(a) bare AsyncOpenAI, 64 at a time:  {a.get('calls_per_s', 0):7.2f} calls/s, "
        f"{a.get('cpu_s_per_1000_calls', 0):.2f} CPU-s per 1,000 calls  (load before {a.get('load_before')})",
        f"(b) whole job, {b.get('pairs_unique')} pairs, {b.get('llm_calls')} calls: {b.get('calls_per_s', 0):7.2f} calls/s, "
        f"{b.get('pairs_per_s', 0):.2f} pairs/s, {b.get('seconds_to_labels')} s to labels (load before {b.get('load_before')})",
        f"    ratio (b)/(a) = {figures.get('ratio_b_over_a', 0):.3f} (target >= {RATIO_TARGET}); counting Ray's "
        f"start-up ({figures.get('ray_start_s')} s): {figures.get('ratio_b_over_a_counting_ray_start', 0):.3f}",
        f"    timeline (s): {b.get('timeline')}",
        f"    CPU-s per 1,000 pairs (driver + Ray workers): {b.get('cpu_s_per_1000_pairs', 0):.2f}; with Ray daemons "
        f"{b.get('cpu_s_per_1000_pairs_with_ray_daemons', 0):.2f}; {b.get('cpu_s')}",
        f"    CPU per pair / bare CPU per call = {figures.get('cpu_ratio_b_per_pair_over_a_per_call', 0):.2f} "
        f"(target <= {CPU_RATIO_TARGET})",
    ]
    if c:
        lines.append(
            f"(c) rpm {RPM}: {c['calls_per_s']:.2f} calls/s = {c['share_of_allowed_rate']:.3f} of the allowed "
            f"{c['allowed_calls_per_s']:.1f}/s (target >= {RATE_TARGET}); 429s {c['responses_429']} of {c['llm_calls']} "
            f"= {c['share_429']:.4f} (target <= {MAX_429_SHARE}); busiest 60 s: {c['timeline'].get('busiest_60s_requests')} "
            f"requests (load before {c['load_before']})")
    lines.append("RESULT: " + ("PASS" if not figures["failures"] else "FAIL: " + "; ".join(figures["failures"])))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
