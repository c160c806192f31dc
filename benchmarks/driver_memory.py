"""Driver memory as the log grows: the job on logs of 5,000 and 50,000 unique pairs (simulated endpoint, no
added latency), each in a fresh driver process; the driver's peak RSS must grow by at most 1.5x.

The driver holds no rows of the log: Ray Data streams them through tasks and actors; only aggregated tables
(per-query metrics, counts) come to the driver. Exits non-zero unless the target holds; prints figures last.

    .venv/bin/python benchmarks/driver_memory.py [--sizes 5000,50000]
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
    from rae_ray.pipeline import run
    from rae_ray.sim.process import SimProcess

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
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"unique_pairs": unique, "labelled": result.manifest["labelled"],
                      "driver_peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(seconds, 1)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="5000,50000")
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
        figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = figures[0], figures[-1]
    growth = large["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]
    ok = growth <= 1.5
    for figure in figures:
        print(f"{figure['unique_pairs']:>7} unique pairs: driver peak RSS {figure['driver_peak_rss_mib']} MiB, "
              f"{figure['seconds']} s, {figure['labelled']} labelled")
    print(f"growth {large['unique_pairs'] / small['unique_pairs']:.1f}x pairs -> {growth:.2f}x driver memory "
          f"(target <= 1.5x): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
