"""Repeat: S3 end to end, the label store reused across runs, resume after a killed driver, shared stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import boto3
import polars as pl
import pytest
import yaml

from rae_ray.config import config_from_dict
from rae_ray.job import run
from tests.helpers import base_config, stored_records

pytestmark = pytest.mark.integration

N_QUERIES = 30


def s3_frame(endpoint: str, uri: str) -> pl.DataFrame:
    """All Parquet shards under an s3:// folder, read by polars (its own S3 client, same moto server)."""
    options = {"aws_endpoint_url": endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "aws_region": "us-east-1"}
    pattern = uri if uri.endswith(".parquet") else uri.rstrip("/") + "/*.parquet"
    return pl.read_parquet(pattern, storage_options=options)


def upload(endpoint: str, bucket: str, key: str, frame: pl.DataFrame) -> str:
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


@pytest.fixture
def subset(chorus):
    """The first N_QUERIES queries of the chorus log, and the catalog."""
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:N_QUERIES]
    return log.filter(pl.col("query").is_in(queries)), pl.read_parquet(chorus / "products.parquet")


def unique_pairs(log: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    return log.filter(pl.col("rank") <= k).select("query", "product_id").unique()


def s3_config(sim_url: str, bucket: str, log_uri: str, catalog_uri: str, run_id: str, **extra) -> dict:
    config = base_config(sim_url, f"s3://{bucket}/runs")
    config["input"] = {"log": log_uri, "catalog": catalog_uri}
    config["run_id"] = run_id
    config.update(extra)
    return config


def test_s3_runs_reuse_the_store(ray_local, sim, s3_server, s3_bucket, subset):
    log, catalog = subset
    log_uri = upload(s3_server, s3_bucket, "in/log.parquet", log)
    catalog_uri = upload(s3_server, s3_bucket, "in/catalog.parquet", catalog)
    pairs = unique_pairs(log)
    n_queries = log["query"].n_unique()

    first = run(config_from_dict(s3_config(sim.base_url, s3_bucket, log_uri, catalog_uri, "first"))).manifest
    assert first["llm_calls"] == {"guidelines": n_queries, "annotate": pairs.height}
    assert first["cache_hits"] == {"guidelines": 0, "annotate": 0}
    assert first["label_store"] == f"s3://{s3_bucket}/runs/_store"

    # Same config, new run: nothing is sent, everything comes from the store, results are identical.
    sim.reset_stats()
    second = run(config_from_dict(s3_config(sim.base_url, s3_bucket, log_uri, catalog_uri, "second"))).manifest
    assert second["llm_calls"] == {"guidelines": 0, "annotate": 0}
    assert sim.stats()["requests_total"] == 0
    assert second["cache_hits"] == {"guidelines": n_queries, "annotate": pairs.height}
    labels_1 = s3_frame(s3_server, f"s3://{s3_bucket}/runs/first/labels").sort("query", "product_id")
    labels_2 = s3_frame(s3_server, f"s3://{s3_bucket}/runs/second/labels").sort("query", "product_id")
    columns = ["query", "product_id", "grade", "label", "reasoning", "guideline_id", "label_key"]
    assert labels_1.select(columns).equals(labels_2.select(columns))
    assert labels_2["cache_hit"].all() and not labels_1["cache_hit"].any()
    for table in ("rankers", "queries"):
        metrics_1 = s3_frame(s3_server, f"s3://{s3_bucket}/runs/first/metrics/{table}.parquet")
        metrics_2 = s3_frame(s3_server, f"s3://{s3_bucket}/runs/second/metrics/{table}.parquet")
        assert metrics_1.height > 0 and metrics_1.equals(metrics_2)
    # boto3 sees the same outputs: a manifest and sharded labels.
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket=s3_bucket, Prefix="runs/second/")["Contents"]]
    assert "runs/second/manifest.json" in keys and any(k.startswith("runs/second/labels/") for k in keys)

    # A fourth ranker: only the pairs nobody labelled before are sent.
    new_ranker = log.filter(pl.col("ranker") == "random-v0").with_columns(
        pl.lit("new-v3").alias("ranker"), pl.col("product_id").shuffle(seed=1).over("query"))
    extra_products = catalog.join(log.select("product_id").unique(), on="product_id", how="anti")["product_id"]
    swap = pl.Series("product_id", extra_products[: new_ranker.height].to_list())
    new_ranker = new_ranker.with_columns(pl.when(pl.col("rank") > 7).then(swap).otherwise(pl.col("product_id")).alias("product_id"))
    grown = pl.concat([log, new_ranker])
    grown_uri = upload(s3_server, s3_bucket, "in/log-grown.parquet", grown)
    expected_new = unique_pairs(grown).join(pairs, on=["query", "product_id"], how="anti").height
    assert expected_new > 0
    third = run(config_from_dict(s3_config(sim.base_url, s3_bucket, grown_uri, catalog_uri, "third"))).manifest
    assert third["llm_calls"] == {"guidelines": 0, "annotate": expected_new}
    assert third["cache_hits"]["annotate"] == pairs.height
    assert set(third["rankers"]) == {"random-v0", "bm25-v1", "tuned-v2", "new-v3"}


def test_changed_product_or_model_is_labelled_again(ray_local, sim, tmp_path, subset):
    log, catalog = subset
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    config = base_config(sim.base_url, tmp_path / "out")
    config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
    pairs = unique_pairs(log)
    run(config_from_dict({**config, "run_id": "a"}))

    product = log.filter(pl.col("rank") <= 10)["product_id"][0]
    affected = pairs.filter(pl.col("product_id") == product).height
    catalog.with_columns(pl.when(pl.col("product_id") == product).then(pl.lit("Renamed product"))
                         .otherwise(pl.col("title")).alias("title")).write_parquet(tmp_path / "catalog.parquet")
    changed = run(config_from_dict({**config, "run_id": "b"})).manifest
    assert changed["llm_calls"] == {"guidelines": 0, "annotate": affected}

    other_model = json.loads(json.dumps(config))
    other_model["llm"]["annotate"]["model"] = "sim-judge-2"
    remodelled = run(config_from_dict({**other_model, "run_id": "c"})).manifest
    assert remodelled["llm_calls"] == {"guidelines": 0, "annotate": pairs.height}


def _run_in_subprocess(config: dict, path, env_extra: dict) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, "-m", "rae_ray", "run", "--config", str(path)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def test_resume_after_the_driver_is_killed(ray_local, tmp_path, subset):
    """Kill the driver mid-annotation; rerun with the same run id: exactly one label per unique pair."""
    from rae_ray.sim.process import SimProcess

    log, catalog = subset
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    pairs = unique_pairs(log)
    with SimProcess(latency_ms=300) as slow:
        config = base_config(slow.base_url, tmp_path / "out")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["run_id"] = "resumable"
        # ~13 pairs/s: the whole subset takes ~45 s, the first 32-row shard a few seconds.
        config["compute"]["annotate"] = {"max_actors": 1, "max_concurrent_requests": 4, "batch_size": 16,
                                         "max_concurrent_batches": 1}
        store_labels = tmp_path / "out" / "_store" / "labels"
        driver = _run_in_subprocess(config, tmp_path / "config.yaml",
                                    {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address})
        deadline = time.monotonic() + 480
        # Kill once about two thirds of the judgements have been served.
        while time.monotonic() < deadline:
            assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
            if slow.stats()["by_schema"].get("relevance_judgement", 0) >= 0.66 * pairs.height:
                break
            time.sleep(0.5)
        assert (store_labels / "_delta_log").exists(), "no label batch was published before the deadline"
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        stored_before = stored_records(store_labels).height
        assert 0 < stored_before < pairs.height

        resumed = run(config_from_dict(config)).manifest
    labels = pl.read_parquet(tmp_path / "out" / "resumable" / "labels" / "*.parquet")
    assert labels.height == pairs.height
    assert labels.select("query", "product_id").n_unique() == pairs.height  # no duplicates
    assert labels.join(pairs, on=["query", "product_id"], how="anti").is_empty()
    assert pairs.join(labels, on=["query", "product_id"], how="anti").is_empty()  # none missing
    assert resumed["cache_hits"]["annotate"] >= stored_before
    assert resumed["llm_calls"]["annotate"] == pairs.height - resumed["cache_hits"]["annotate"]


def test_two_runs_share_a_store_at_the_same_time(ray_local, sim, tmp_path, subset):
    log, catalog = subset
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    pairs = unique_pairs(log)
    address = {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    drivers = []
    for name in ("sweep-a", "sweep-b"):
        config = base_config(sim.base_url, tmp_path / "out")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["run_id"] = name
        drivers.append(_run_in_subprocess(config, tmp_path / f"{name}.yaml", address))
    for driver in drivers:
        output = driver.communicate(timeout=400)[0].decode()
        assert driver.returncode == 0, output[-3000:]
    for name in ("sweep-a", "sweep-b"):
        labels = pl.read_parquet(tmp_path / "out" / name / "labels" / "*.parquet")
        assert labels.height == pairs.height and labels.select("query", "product_id").n_unique() == pairs.height
        assert labels["grade"].null_count() == 0
    # The store is one Delta table, read here by polars; it may hold a key twice (both runs labelled it).
    stored = stored_records(tmp_path / "out" / "_store" / "labels")
    assert stored.select("label_key").n_unique() == pairs.height
    assert not list((tmp_path / "out" / "_store").rglob("*.tmp-*"))
