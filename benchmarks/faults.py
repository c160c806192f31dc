"""Faults benchmark: a run of at least 5,000 unique pairs against an endpoint that fails in every way, then a rerun.

The endpoint (the simulated one) answers 10% of calls 5xx, 5% 429 with Retry-After, 3% malformed or off-schema
JSON, 2% after a timeout, and resets 2% of connections mid-response. Retries are kept low (default 2 retries, 1
re-ask) so that some pairs do fail. Targets: every unique pair is labelled or in errors/ with its reason
(lost 0), exactly once (duplicates 0), the manifest adds up (labelled + errored = unique pairs), and a rerun with
the same output (same label store, new run id), once the endpoint is healthy again, sends exactly the pairs that
failed (rerun calls = errored, each pair once) and labels them. Exits non-zero unless every target holds; prints
its figures last.

The log is the bundled chorus sample (135 queries, 3 rankers) plus synthetic ranker versions that each return
10 products drawn from the catalog per query (seeded), to pass 5,000 unique pairs.

    .venv/bin/python benchmarks/faults.py [--extra-rankers 3] [--max-retries 2] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from rae_ray.config import config_from_dict  # noqa: E402
from rae_ray.io import sample_dir  # noqa: E402
from rae_ray.sim.process import SimProcess  # noqa: E402

FAULTS = {"error_rate_5xx": 0.10, "error_rate_429": 0.05, "error_rate_malformed": 0.03, "error_rate_timeout": 0.02,
          "error_rate_reset": 0.02}
KEY = ["query", "product_id"]


def synthetic_log(extra_rankers: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The chorus log plus `extra_rankers` ranker versions returning 10 catalog products per query (seeded)."""
    log = pl.read_parquet(sample_dir() / "search_log.parquet").with_columns(pl.col("rank").cast(pl.Int64))
    catalog = pl.read_parquet(sample_dir() / "products.parquet")
    products = catalog["product_id"].to_numpy()
    counts = log.group_by("query").agg(pl.col("query_count").first()).sort("query")
    rng = np.random.default_rng(seed)
    rows = []
    for version in range(extra_rankers):
        ranker = f"sampled-v{3 + version}"
        for query, count in counts.iter_rows():
            for rank, product in enumerate(rng.choice(products, size=10, replace=False), start=1):
                rows.append({"query": query, "query_count": count, "ranker": ranker, "rank": rank,
                             "product_id": str(product)})
    grown = pl.concat([log.select("query", "query_count", "ranker", "rank", "product_id"),
                       pl.DataFrame(rows, schema=log.select("query", "query_count", "ranker", "rank", "product_id").schema)])
    return grown, catalog


def read_folder(folder: Path) -> pl.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def config(sim_url: str, folder: Path, run_id: str, args: argparse.Namespace) -> dict:
    return {
        "run_id": run_id,
        "input": {"log": str(folder / "log.parquet"), "catalog": str(folder / "catalog.parquet")},
        "llm": {
            "endpoints": {"default": {
                "base_url": sim_url, "api_key_required": False, "timeout_s": args.timeout_s,
                "max_retries": args.max_retries, "max_parse_retries": args.max_parse_retries,
                "backoff_base_s": 0.05, "backoff_max_s": 0.5}},
            "guidelines": {"model": "sim-judge"}, "annotate": {"model": "sim-judge"},
        },
        "compute": {"num_cpus": 2, "shuffle_partitions": 4, "annotate": {"max_actors": 2, "max_concurrent_requests": 32}},
        "metrics": {"bootstrap": 200},
        "output": {"uri": str(folder / "out")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra-rankers", type=int, default=3, help="synthetic ranker versions added to the log")
    parser.add_argument("--max-retries", type=int, default=2, help="retries of 429, 5xx, timeouts and resets")
    parser.add_argument("--max-parse-retries", type=int, default=1, help="re-asks of a reply that does not parse")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per-call timeout (the sim holds 3 s)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the simulated endpoint's mean latency")
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    args = parser.parse_args()

    from rae_ray.job import run

    folder = Path(args.out or tempfile.mkdtemp(prefix="rae-faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    log, catalog = synthetic_log(args.extra_rankers)
    log.write_parquet(folder / "log.parquet")
    catalog.write_parquet(folder / "catalog.parquet")
    pairs = log.filter(pl.col("rank") <= 10).select(KEY).unique()
    figures: dict = {"unique_pairs": pairs.height, "queries": log["query"].n_unique(),
                     "rankers": log["ranker"].n_unique(), "faults": FAULTS,
                     "endpoint": {"max_retries": args.max_retries, "max_parse_retries": args.max_parse_retries,
                                  "timeout_s": args.timeout_s}}

    started = time.monotonic()
    with SimProcess(latency_ms=args.latency_ms, latency_jitter_ms=args.latency_ms / 2, timeout_hold_s=3.0,
                    retry_after_s=1, seed=1, **FAULTS) as faulty:
        first = run(config_from_dict(config(faulty.base_url, folder, "faulted", args))).manifest
        stats = faulty.stats()
    figures["faulted_run_seconds"] = round(time.monotonic() - started, 1)
    figures["injected"] = stats["injected_errors"]
    figures["requests_faulted_run"] = stats["requests_total"]

    labels = read_folder(folder / "out" / "faulted" / "labels")
    errors = read_folder(folder / "out" / "faulted" / "errors")
    labelled = labels.filter(pl.col("grade").is_not_null())
    failed = labels.filter(pl.col("grade").is_null() & pl.col("error").is_not_null())
    annotate_errors = errors.filter(pl.col("stage") == "annotate") if errors.height else errors
    accounted = pl.concat([labelled.select(KEY), annotate_errors.select(KEY)]).unique() if errors.height else labelled.select(KEY)
    figures["labelled"] = labelled.height
    figures["errored"] = failed.height
    figures["duplicates"] = labels.height - labels.select(KEY).n_unique()
    figures["lost"] = pairs.join(accounted, on=KEY, how="anti").height
    figures["errors_without_reason"] = labels.filter(pl.col("grade").is_null() & pl.col("error").is_null()).height
    kinds = failed.select(
        pl.coalesce(pl.col("error").str.extract(r"^gave up after \d+ attempts: (HTTP \d+|timeout|connection error)", 1),
                    pl.col("error").str.extract(r"^(reply did not match|no guideline for this query)", 1),
                    pl.lit("other")).alias("reason"))
    figures["error_reasons"] = dict(sorted(kinds["reason"].value_counts().iter_rows()))
    figures["manifest_faulted"] = {k: first[k] for k in ("pairs_unique", "labelled", "errors", "llm_calls")}

    started = time.monotonic()
    with SimProcess(latency_ms=args.latency_ms, latency_jitter_ms=args.latency_ms / 2) as healthy:
        rerun = run(config_from_dict(config(healthy.base_url, folder, "rerun", args))).manifest
        rerun_stats = healthy.stats()
    figures["rerun_seconds"] = round(time.monotonic() - started, 1)
    relabels = read_folder(folder / "out" / "rerun" / "labels")
    sent = relabels.filter(pl.col("llm_calls") > 0)
    figures["rerun_calls"] = rerun_stats["by_schema"].get("relevance_judgement", 0)
    figures["rerun_guideline_calls"] = rerun_stats["by_schema"].get("query_guideline", 0)
    figures["rerun_distinct_pairs_sent"] = sent.select(KEY).n_unique()
    figures["rerun_pairs_sent_not_errored"] = sent.select(KEY).join(failed.select(KEY), on=KEY, how="anti").height
    figures["rerun_cache_hits"] = rerun["cache_hits"]["annotate"]
    figures["rerun_labelled"] = rerun["labelled"]

    checks = {
        "at least 5,000 unique pairs": pairs.height >= 5000,
        "every fault kind injected": all(v > 0 for v in figures["injected"].values()),
        "some pairs failed (the rerun has work)": figures["errored"] > 0,
        "labelled + errored = unique pairs": figures["labelled"] + figures["errored"] == pairs.height,
        "manifest adds up": first["labelled"] + first["errors"]["annotate"] == first["pairs_unique"] == pairs.height,
        "errors/ holds every failed pair once": annotate_errors.height == annotate_errors.select(KEY).n_unique() == figures["errored"],
        "duplicates 0": figures["duplicates"] == 0,
        "lost 0": figures["lost"] == 0 and figures["errors_without_reason"] == 0,
        "rerun calls = errored": figures["rerun_calls"] == figures["errored"] == rerun["llm_calls"]["annotate"],
        "rerun sends only errored pairs, each once": figures["rerun_distinct_pairs_sent"] == figures["errored"]
        and figures["rerun_pairs_sent_not_errored"] == 0,
        "rerun reuses every label": figures["rerun_cache_hits"] == figures["labelled"],
        "rerun labels every pair": figures["rerun_labelled"] == pairs.height,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps(figures, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
