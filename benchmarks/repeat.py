"""Repeat benchmark: the chorus sample on S3 (moto's server over HTTP), runs sharing one label store.

Reports the LLM calls of a first run, of an identical rerun (target 0), after adding a fourth ranker (target:
that ranker's new unique pairs), and a resume check: a driver killed mid-annotation, rerun with the same run
id (targets: duplicates 0, missing 0). Exits non-zero unless every target holds; prints its figures last.

    .venv/bin/python benchmarks/repeat.py
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for name, value in (("RAY_AUTH_MODE", "disabled"), ("AWS_ACCESS_KEY_ID", "testing"),
                    ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                    ("AWS_REGION", "us-east-1")):
    os.environ[name] = value

import boto3  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402

from rae_ray.config import config_from_dict  # noqa: E402
from rae_ray.io import sample_dir  # noqa: E402
from rae_ray.sim.process import SimProcess  # noqa: E402
from rae_ray.sim.s3 import MotoServer  # noqa: E402

BUCKET = "rae-repeat"


def upload(s3, key: str, frame: pl.DataFrame) -> str:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{BUCKET}/{key}"


def config(sim_url: str, log_uri: str, catalog_uri: str, run_id: str) -> dict:
    return {
        "run_id": run_id,
        "input": {"log": log_uri, "catalog": catalog_uri},
        "llm": {"endpoints": {"default": {"base_url": sim_url, "api_key_required": False}},
                "guidelines": {"model": "sim-judge"}, "annotate": {"model": "sim-judge"}},
        "compute": {"shuffle_partitions": 4},
        "metrics": {"bootstrap": 200},
        "output": {"uri": f"s3://{BUCKET}/runs"},
    }


def fourth_ranker(log: pl.DataFrame, catalog: pl.DataFrame) -> pl.DataFrame:
    """new-v3: bm25-v1's lists with ranks 8-10 replaced by catalog products no ranker returned."""
    base = log.filter(pl.col("ranker") == "bm25-v1").with_columns(pl.lit("new-v3").alias("ranker"))
    unused = catalog.join(log.select("product_id").unique(), on="product_id", how="anti")["product_id"].to_list()
    fresh = pl.Series("fresh", [unused[i % len(unused)] for i in range(base.height)])
    return base.with_columns(pl.when(pl.col("rank") >= 8).then(fresh).otherwise(pl.col("product_id")).alias("product_id"))


def pairs_of(log: pl.DataFrame) -> pl.DataFrame:
    return log.filter(pl.col("rank") <= 10).select("query", "product_id").unique()


def labels_at(s3_endpoint: str, prefix: str, run_id: str) -> pl.DataFrame:
    options = {"aws_endpoint_url": s3_endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "aws_region": "us-east-1"}
    return pl.read_parquet(f"s3://{BUCKET}/{prefix}/{run_id}/labels/*.parquet", storage_options=options)


def main() -> int:
    server = MotoServer().start()
    endpoint = server.endpoint
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint  # before Ray starts: its workers inherit it
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    log = pl.read_parquet(sample_dir() / "search_log.parquet")
    catalog = pl.read_parquet(sample_dir() / "products.parquet")
    log_uri = upload(s3, "in/log.parquet", log)
    catalog_uri = upload(s3, "in/catalog.parquet", catalog)
    grown = pl.concat([log, fourth_ranker(log, catalog)])
    grown_uri = upload(s3, "in/log-4-rankers.parquet", grown)
    new_pairs = pairs_of(grown).join(pairs_of(log), on=["query", "product_id"], how="anti").height

    import ray

    from rae_ray.job import run

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    figures: dict[str, object] = {"unique_pairs": pairs_of(log).height, "queries": log["query"].n_unique()}
    with SimProcess(latency_ms=10) as sim:
        started = time.monotonic()
        first = run(config_from_dict(config(sim.base_url, log_uri, catalog_uri, "first"))).manifest
        figures["first_run_calls"] = first["llm_calls"]
        figures["first_run_seconds"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        rerun = run(config_from_dict(config(sim.base_url, log_uri, catalog_uri, "rerun"))).manifest
        figures["rerun_calls"] = rerun["llm_calls"]
        figures["rerun_seconds"] = round(time.monotonic() - started, 1)
        fourth = run(config_from_dict(config(sim.base_url, grown_uri, catalog_uri, "fourth-ranker"))).manifest
        figures["fourth_ranker_calls"] = fourth["llm_calls"]
        figures["fourth_ranker_new_unique_pairs"] = new_pairs

    # Resume: a driver (joined to this Ray) killed mid-annotation, then the same run id again.
    with SimProcess(latency_ms=200) as slow, tempfile.TemporaryDirectory() as tmp:
        resume = config(slow.base_url, log_uri, catalog_uri, "resumed")
        resume["output"]["uri"] = f"s3://{BUCKET}/resume-runs"
        resume["compute"]["annotate"] = {"max_actors": 1, "max_concurrent_requests": 8, "batch_size": 16,
                                         "max_concurrent_batches": 1}
        path = Path(tmp) / "resume.yaml"
        path.write_text(yaml.safe_dump(resume))
        driver = subprocess.Popen(
            [sys.executable, "-m", "rae_ray", "run", "--config", str(path)],
            env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 600
        shards = []
        while time.monotonic() < deadline and driver.poll() is None:
            listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="resume-runs/_store/labels/")
            shards = listing.get("Contents", [])
            if shards:  # the first shard is out: annotation is under way, kill the driver now
                break
            time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        figures["resume_shards_before_kill"] = len(shards)
        resumed = run(config_from_dict(resume)).manifest
    labels = labels_at(endpoint, "resume-runs", "resumed").select("query", "product_id")
    expected = pairs_of(log)
    figures["resume_calls_after_restart"] = resumed["llm_calls"]
    figures["resume_cache_hits"] = resumed["cache_hits"]
    figures["resume_duplicates"] = labels.height - labels.n_unique()
    figures["resume_missing"] = expected.join(labels, on=["query", "product_id"], how="anti").height
    ray.shutdown()
    server.stop()

    checks = {
        "first run labels every unique pair": figures["first_run_calls"]["annotate"] == figures["unique_pairs"],
        "identical rerun makes 0 calls": sum(figures["rerun_calls"].values()) == 0,
        "fourth ranker sends only its new pairs": figures["fourth_ranker_calls"] == {"guidelines": 0, "annotate": new_pairs},
        "resume killed mid-annotation": 0 < resumed["cache_hits"]["annotate"] < figures["unique_pairs"],
        "resume: no duplicates": figures["resume_duplicates"] == 0,
        "resume: nothing missing": figures["resume_missing"] == 0,
    }
    print(json.dumps(figures, indent=2))
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
