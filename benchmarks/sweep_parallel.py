"""Sweep benchmark: do a sweep's variants on different rate-limited models run side by side?

Starts the simulated endpoint (it serves any model name) and a private local Ray, then runs one sweep of three
variants twice: one after the other (`parallel: 1`) and side by side (`parallel: 3`). Each variant judges the
same slice of the chorus sample with a model of its own (guidelines and judgements), through an endpoint entry
of its own with `rpm` set, so the job's budget holds each model to that rate and the rate sets each variant's
time. Each phase writes to a fresh output folder and label store, so both make the same calls.

Target: wall time side by side / wall time one after the other <= 0.5. Exits 1 above. Figures are printed last
(one JSON object, then a table). The wall times run from `run_sweep` to its return (tables written); Ray is
started, and warmed up by one small run, before either clock.

    python benchmarks/sweep_parallel.py [--queries 4] [--k 5] [--rpm 55] [--latency-ms 50] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from rae_ray.io import sample_dir
from rae_ray.sim.process import SimProcess

RATIO_TARGET = 0.5
MODELS = ("sim-judge-1", "sim-judge-2", "sim-judge-3")


def endpoint(base_url: str, rpm: int | None) -> dict[str, Any]:
    return {"base_url": base_url, "api_key_env": "RAE_SIM_API_KEY", "api_key_required": False,
            **({"rpm": rpm} if rpm else {})}


def write_sweep(folder: Path, sim_url: str, log: str, k: int, rpm: int, parallel: int, out: Path) -> Path:
    """A base config over `log` and a sweep file: one variant per model, each through its own limited endpoint."""
    base = {
        "input": {"log": log, "catalog": "sample:products.parquet"},
        "k": k,
        "llm": {"endpoints": {"default": endpoint(sim_url, None),
                              **{f"e{i}": endpoint(sim_url, rpm) for i in range(1, len(MODELS) + 1)}},
                "guidelines": {"model": "sim-judge"}, "annotate": {"model": "sim-judge"}},
        # The rate sets the pace: one actor per stage is plenty, and three variants' pools fit on 2 CPUs.
        "compute": {"shuffle_partitions": 2, "guidelines": {"max_actors": 1}, "annotate": {"max_actors": 1}},
        "metrics": {"bootstrap": 200, "permutations": 1000},
        "output": {"uri": str(out)},
    }
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    variants = {f"judge-{i}": {"llm.guidelines.endpoint": f"e{i}", "llm.guidelines.model": model,
                               "llm.annotate.endpoint": f"e{i}", "llm.annotate.model": model}
                for i, model in enumerate(MODELS, start=1)}
    path = folder / f"sweep-{parallel}.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "sweep_id": "bench", "parallel": parallel,
                                    "variants": variants}))
    return path


def run_phase(sweep_file: Path, sim: SimProcess) -> dict[str, Any]:
    from rae_ray.sweep import load_sweep, run_sweep, sweep_options

    sweep_id, configs = load_sweep(sweep_file)
    parallel = sweep_options(sweep_file).parallel
    sim.reset_stats()
    started = time.monotonic()
    result = run_sweep(sweep_id, configs, parallel=parallel)
    wall = time.monotonic() - started
    stats = sim.stats()
    manifests = {name: json.loads((Path(result.root).parent / c.run_id / "manifest.json").read_text())
                 for name, c in configs.items()}
    return {
        "parallel": parallel, "wall_s": round(wall, 2),
        "calls_by_model": stats["by_model"], "answers_429": stats["responses_429"],
        "variants": {name: {"seconds": m["seconds"]["total"], "llm_calls": m["llm_calls"],
                            "errors": sum(m["errors"].values()), "started_at": m["started_at"],
                            "finished_at": m["finished_at"]} for name, m in manifests.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=4, help="queries of the chorus sample each variant judges")
    parser.add_argument("--k", type=int, default=5, help="each ranker's list cut at k")
    parser.add_argument("--rpm", type=int, default=55, help="requests per minute of each model")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the simulated endpoint's latency")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import ray

    work = Path(tempfile.mkdtemp(prefix="rae-sweep-bench-"))
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0]}}
    try:
        log = pl.read_parquet(sample_dir() / "search_log.parquet")
        log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:args.queries]))
        log.write_parquet(work / "log.parquet")
        pairs = log.filter(pl.col("rank") <= args.k).select("query", "product_id").unique().height
        calls = args.queries + pairs
        figures["per_variant"] = {"queries": args.queries, "pairs": pairs, "llm_calls": calls, "rpm": args.rpm,
                                  "seconds_at_rpm": round(calls / (0.97 * args.rpm / 60), 1)}
        print(f"[bench] each variant: {args.queries} queries, {pairs} pairs, {calls} calls at {args.rpm} rpm "
              f"(~{figures['per_variant']['seconds_at_rpm']} s)", file=sys.stderr, flush=True)

        with SimProcess(latency_ms=args.latency_ms) as sim:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                     _temp_dir=tempfile.mkdtemp(prefix="rsb-", dir="/tmp"))
            started = time.monotonic()
            from rae_ray.sweep import load_sweep, run_sweep

            first = log.filter(pl.col("query") == log["query"].min())
            first.write_parquet(work / "warm-up.parquet")
            warm = write_sweep(work, sim.base_url, str(work / "warm-up.parquet"), 2, 6000, 1, work / "out-warm-up")
            warm_id, warm_configs = load_sweep(warm)
            run_sweep(warm_id, dict([next(iter(warm_configs.items()))]), parallel=1)
            figures["warm_up_s"] = round(time.monotonic() - started, 1)

            for parallel, name in ((1, "one_after_the_other"), (len(MODELS), "side_by_side")):
                folder = work / name
                folder.mkdir()
                sweep_file = write_sweep(folder, sim.base_url, str(work / "log.parquet"), args.k, args.rpm,
                                         parallel, folder / "out")
                print(f"[bench] {name.replace('_', ' ')} (parallel: {parallel})", file=sys.stderr, flush=True)
                figures[name] = run_phase(sweep_file, sim)
                print(f"[bench] {name.replace('_', ' ')}: {figures[name]['wall_s']} s", file=sys.stderr, flush=True)
        ratio = figures["side_by_side"]["wall_s"] / figures["one_after_the_other"]["wall_s"]
        figures["ratio"] = round(ratio, 3)
        figures["machine"]["load_at_end"] = os.getloadavg()[0]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if args.keep:
            print(f"[bench] outputs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    failures = []
    for phase in ("one_after_the_other", "side_by_side"):
        got = figures[phase]["calls_by_model"]
        if got != {model: calls for model in MODELS}:
            failures.append(f"{phase}: calls by model {got}, expected {calls} for each of {list(MODELS)}")
        if any(v["errors"] for v in figures[phase]["variants"].values()):
            failures.append(f"{phase}: errors in a variant")
    if ratio > RATIO_TARGET:
        failures.append(f"side by side / one after the other = {ratio:.3f} > {RATIO_TARGET}")
    figures["failures"] = failures
    print(json.dumps(figures, indent=2))
    print()
    print(f"sweep of {len(MODELS)} variants, {len(MODELS)} models at {args.rpm} rpm each, {calls} calls per variant")
    print(f"  one after the other (parallel: 1)  {figures['one_after_the_other']['wall_s']:8.1f} s")
    print(f"  side by side (parallel: {len(MODELS)})        {figures['side_by_side']['wall_s']:8.1f} s")
    print(f"  ratio                              {ratio:8.3f}  (target <= {RATIO_TARGET})")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
