"""Label store scale benchmark: a 10,000-pair run's lookup against a store of 1,000,000 labels and one of 10,000.

Both stores are written through the store's own writer (`publish_shard`, one Delta commit per call) with synthetic
keys and label-shaped rows (reasoning ~200 characters), the way nightly runs leave them: the large store is a year
of nights (365 nights x COMMITS_PER_NIGHT commits of ~1,370 labels), the small one 4 nights; then each is compacted
as a user would (`rae-ray store compact --store DIR`, default retention). The run's 10,000 keys are half stored
(5,000 drawn from the store), half new. Each lookup is the job's own (`labelstore.cached.lookup` on a Ray Dataset,
local Ray with num_cpus=2, 2 partitions, the job's default sort shuffle), timed until both halves are counted; the
median of REPEATS alternating runs after one warm-up. Bytes read are counted at the file object the lookup's tasks read through (every byte
pyarrow asked the filesystem for: footers and column chunks) and logged by each task (`RAE_RAY_STORE_IO_LOG`).
The stores live on the local disk (page cache warm for both: the build just wrote them).

Exits non-zero unless the large store's lookup takes at most 2x the small one's and every stored key is found.

    /work/cpu-run --exclusive .venv/bin/python benchmarks/store_scale.py [--keep DIR] [--large N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pyarrow as pa  # noqa: E402

from rae_ray.io import Storage  # noqa: E402
from rae_ray.labelstore.delta import IO_LOG_ENV  # noqa: E402
from rae_ray.labelstore.store import LabelStore, publish_shard  # noqa: E402

NIGHTS = 365
COMMITS_PER_NIGHT = 2
RUN_PAIRS = 10_000
REPEATS = 3
WORDS = ("the product matches the query because its title brand colour and category agree while the size and "
         "material are not stated so the grade reflects a close but imperfect match for this shopper").split()


def label_rows(keys: list[str], rng: random.Random, night: int) -> pa.Table:
    """Rows shaped as the annotate stage stores them (LABEL_SPEC.output), keys given."""
    n = len(keys)
    grades = [rng.randrange(3) for _ in range(n)]
    reasoning = [" ".join(rng.choices(WORDS, k=32)) for _ in range(n)]
    return pa.table({
        "query": [f"query {rng.randrange(30_000)}" for _ in range(n)],
        "product_id": [f"p{rng.randrange(2_000_000)}" for _ in range(n)],
        "product_hash": [rng.randbytes(8).hex() for _ in range(n)],
        "label_key": keys, "grade": pa.array(grades, pa.int16()),
        "label": [("irrelevant", "acceptable", "highly relevant")[g] for g in grades], "reasoning": reasoning,
        "model": ["gpt-4o-mini" if night % 3 else "gpt-4.1"] * n, "prompt_version": ["annotate-v1"] * n,
        "guideline_id": [rng.randbytes(10).hex() for _ in range(n)], "caption_id": pa.nulls(n, pa.string()),
        "image_id": pa.nulls(n, pa.string()), "image_status": ["no_image"] * n,
        "cache_hit": pa.array([False] * n), "error": pa.nulls(n, pa.string()),
        "llm_calls": pa.array([1] * n, pa.int64()), "prompt_tokens": pa.array([900] * n, pa.int64()),
        "completion_tokens": pa.array([60] * n, pa.int64()), "cached_tokens": pa.array([700] * n, pa.int64()),
        "seconds": pa.array([1.2] * n, pa.float64()),
    })


def build(root: Path, labels: int, nights: int, seed: int) -> tuple[LabelStore, list[str], float]:
    """A store of `labels` labels over `nights` nights of COMMITS_PER_NIGHT commits, compacted; its keys; seconds."""
    from rae_ray.cli import main

    store = LabelStore(str(root), Storage())
    rng = random.Random(seed)
    keys = [rng.randbytes(16).hex() for _ in range(labels)]
    commits = nights * COMMITS_PER_NIGHT
    started = time.monotonic()
    if not store.table("labels").exists():
        for c in range(commits):
            part = keys[c * labels // commits:(c + 1) * labels // commits]
            publish_shard(label_rows(part, rng, c // COMMITS_PER_NIGHT), store.folder("labels"), store.storage,
                          f"night-{c // COMMITS_PER_NIGHT:03d}")
        files = store.table("labels").files("label_key").num_rows
        print(f"built {root.name}: {labels:,} labels in {commits} commits, {files:,} files, "
              f"{time.monotonic() - started:.0f}s; compacting", flush=True)
        main(["store", "compact", "--store", str(root)])
    return store, keys, time.monotonic() - started


def run_keys(stored: list[str], seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    hits = rng.sample(stored, RUN_PAIRS // 2)
    return hits, hits + [rng.randbytes(16).hex() for _ in range(RUN_PAIRS - len(hits))]


def lookup_once(ray, store: LabelStore, keys: list[str], expected: set[str], log: Path) -> dict:
    from rae_ray.labelstore.cached import LABEL_SPEC, lookup

    shutil.rmtree(log, ignore_errors=True)
    log.mkdir()
    pairs = pa.table({"query": [f"q{i % 300}" for i in range(len(keys))],
                      "product_id": [f"p{i}" for i in range(len(keys))], "label_key": keys})
    started = time.monotonic()
    ds = ray.data.from_arrow(pairs)
    hits, misses = lookup(store, ds, LABEL_SPEC, 2)
    hit_keys = {row["label_key"] for row in hits.select_columns(["label_key"]).take_all()}
    n_misses = misses.count()
    seconds = time.monotonic() - started
    io = [json.loads(line) for f in log.iterdir() for line in f.read_text().splitlines()]
    return {"seconds": seconds, "hits": len(hit_keys), "misses": n_misses, "all_found": hit_keys == expected,
            "bytes": sum(r.get("bytes", 0) for r in io), "files": sum(r.get("files", 0) for r in io),
            "row_groups": sum(r.get("row_groups", 0) for r in io)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the stores here and keep them (reused when present)")
    parser.add_argument("--large", type=int, default=1_000_000, help="labels in the large store")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="store-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    log = root / "io-log"
    os.environ[IO_LOG_ENV] = str(log)  # before Ray starts: its workers inherit it

    large, large_keys, large_build = build(root / "large", args.large, NIGHTS, seed=1)
    small, small_keys, small_build = build(root / "small", 10_000, 4, seed=2)

    import ray

    from ray.data.context import ShuffleStrategy

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    # As the job sets it (`compute.shuffle: sort`, the default; runtime.ensure_ray): the lookup's group-by of the
    # run's keys is a sort shuffle on pooled tasks, not Ray's hash shuffle, which starts aggregator actors.
    ray.data.DataContext.get_current().shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        runs = {}
        for name, store, stored, seed in (("small", small, small_keys, 3), ("large", large, large_keys, 4)):
            expected, keys = run_keys(stored, seed)
            runs[name] = (store, keys, set(expected))
        lookup_once(ray, *runs["small"], log)  # warm-up: workers started, code imported
        results = {"small": [], "large": []}
        for _ in range(REPEATS):
            for name in ("small", "large"):
                results[name].append(lookup_once(ray, *runs[name], log))
                print(f"{name}: {json.dumps(results[name][-1])}", flush=True)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    figures = {}
    for name, store_labels in (("small", 10_000), ("large", args.large)):
        rs = results[name]
        figures[name] = {"labels": store_labels, "seconds_median": round(statistics.median(r["seconds"] for r in rs), 3),
                         "seconds_all": [round(r["seconds"], 3) for r in rs], "bytes_read": rs[-1]["bytes"],
                         "files_read": rs[-1]["files"], "row_groups_read": rs[-1]["row_groups"],
                         "hits": rs[-1]["hits"], "misses": rs[-1]["misses"],
                         "every_stored_key_found": all(r["all_found"] for r in rs)}
    figures["build_seconds"] = {"large": round(large_build, 1), "small": round(small_build, 1)}
    seconds_ratio = figures["large"]["seconds_median"] / figures["small"]["seconds_median"]
    bytes_ratio = figures["large"]["bytes_read"] / max(1, figures["small"]["bytes_read"])
    figures["seconds_ratio"] = round(seconds_ratio, 3)
    figures["bytes_ratio"] = round(bytes_ratio, 2)
    ok = seconds_ratio <= 2 and figures["small"]["every_stored_key_found"] and figures["large"]["every_stored_key_found"]
    print(json.dumps(figures, indent=2))
    print(f"lookup of {RUN_PAIRS:,} pairs (half stored): {figures['small']['seconds_median']:.2f}s against 10,000 labels, "
          f"{figures['large']['seconds_median']:.2f}s against {args.large:,} (ratio {seconds_ratio:.2f}, target <= 2); "
          f"bytes read {figures['small']['bytes_read']:,} vs {figures['large']['bytes_read']:,} "
          f"(ratio {bytes_ratio:.1f}); every stored key found: "
          f"{figures['small']['every_stored_key_found'] and figures['large']['every_stored_key_found']}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
