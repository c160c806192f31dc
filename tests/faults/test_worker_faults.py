"""Worker faults (issue 6, point 2): the annotation actor's process killed mid-run, and a worker node of a local
multi-node cluster removed mid-run; the job completes with every pair labelled once and the manifest adding up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from rae_ray.config import config_from_dict
from rae_ray.job import run
from tests.faults.conftest import chorus_subset, expected_pairs, read_folder
from tests.helpers import base_config

pytestmark = pytest.mark.integration

KEY = ["query", "product_id"]
# One actor with 8 requests in flight against a 150 ms endpoint: annotation lasts seconds, time to kill it mid-way.
SLOW_ANNOTATE = {"min_actors": 1, "max_actors": 1, "batch_size": 16, "max_concurrent_batches": 1,
                 "max_concurrent_requests": 8}
N_QUERIES = 10  # 215 unique pairs


def check_complete(root: Path, manifest: dict, pairs: pl.DataFrame) -> pl.DataFrame:
    """The guarantees: every pair once, labelled (the endpoint never failed), errors/ empty, the manifest adds up."""
    labels = read_folder(root / "labels")
    assert labels.height == labels.select(KEY).n_unique() == pairs.height == manifest["pairs_unique"]
    assert labels.join(pairs, on=KEY, how="anti").is_empty() and pairs.join(labels, on=KEY, how="anti").is_empty()
    assert labels["grade"].null_count() == 0 and labels["error"].null_count() == labels.height
    assert manifest["labelled"] == pairs.height and manifest["errors"]["annotate"] == 0
    assert read_folder(root / "errors").height == 0
    return labels


def alive_map_workers() -> list[dict]:
    """This job's live Ray Data map actors, from the GCS actor table (the session Ray has no dashboard, hence no
    state API). While annotation runs, the guideline actors are gone: their pool ended when guidelines materialized."""
    import ray
    from ray._private import state

    job = ray.get_runtime_context().get_job_id()
    return [a for a in state.actors().values()
            if a["State"] == "ALIVE" and a["JobID"] == job and "MapWorker" in a["ActorClassName"]]


def test_annotation_actor_killed_mid_run(ray_local, chorus, tmp_path):
    from rae_ray.sim.process import SimProcess

    log, catalog = chorus_subset(chorus, N_QUERIES)
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    pairs = expected_pairs(log)
    outcome: dict = {}
    with SimProcess(latency_ms=150) as slow:
        config = base_config(slow.base_url, tmp_path / "out", run_id="killed-actor")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": str(tmp_path / "catalog.parquet")}
        config["compute"].update(shuffle_partitions=2, annotate=SLOW_ANNOTATE)

        def job() -> None:
            try:
                outcome["result"] = run(config_from_dict(config))
            except BaseException as error:  # reported below
                outcome["error"] = error

        driver = threading.Thread(target=job, daemon=True)
        driver.start()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and slow.stats()["by_schema"].get("relevance_judgement", 0) < 24:
            assert driver.is_alive(), outcome.get("error")
            time.sleep(0.2)
        actors = alive_map_workers()
        assert actors, "no annotation actor found while the sim was receiving judgements"
        sent_before_kill = slow.stats()["by_schema"]["relevance_judgement"]
        for actor in actors:
            os.kill(actor["Pid"], signal.SIGKILL)
        driver.join(300)
        stats = slow.stats()
    assert not driver.is_alive(), "the job did not finish after its annotation actor was killed"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert sent_before_kill < pairs.height, "the actor was killed too late to matter"
    manifest = outcome["result"].manifest
    check_complete(tmp_path / "out" / "killed-actor", manifest, pairs)
    # The killed actor's batches were sent again by its replacement: the endpoint saw some pairs twice, the
    # outputs (and the manifest's call count, which the replacement's rows carry) hold each pair once.
    assert stats["by_schema"]["relevance_judgement"] >= pairs.height == manifest["llm_calls"]["annotate"]
    killed = {a["Pid"] for a in actors}
    assert not killed & {a["Pid"] for a in alive_map_workers()}


CLUSTER_SCRIPT = Path(__file__).with_name("cluster_node_kill.py")


def test_worker_node_removed_mid_run(chorus, tmp_path):
    """In a subprocess (its own Ray cluster, not the session's): head + 2 worker nodes of 2 CPUs; the node running the
    annotation actor is removed mid-run."""
    log, catalog = chorus_subset(chorus, N_QUERIES)
    log.write_parquet(tmp_path / "log.parquet")
    catalog.write_parquet(tmp_path / "catalog.parquet")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    done = subprocess.run([sys.executable, str(CLUSTER_SCRIPT), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"exit {done.returncode}, no report\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    report = json.loads(lines[-1])
    if report.get("skip"):
        pytest.skip(report["skip"])
    assert report["removed_node_had_annotate_actor"] and report["sent_before_removal"] < report["pairs"]
    assert "Budget" not in report["other_actors_on_removed_node"]  # it is kept on the driver's node
    assert report["error"] is None, f"{report['error']}\n--- stderr ---\n{done.stderr[-4000:]}"
    pairs = expected_pairs(log)
    check_complete(tmp_path / "out" / "node-lost", report["manifest"], pairs)


def test_budget_actor_lost_with_its_node_is_restarted(ray_local):
    """The run's budget actor (rate limits, cost guard) dies with its process or node: the run must not die with it."""
    import asyncio

    from ray._private import state

    from rae_ray.config import config_from_dict as load
    from rae_ray.llm.ratelimit import RateBudget
    from rae_ray.runtime import start_budget

    config = load(base_config("http://127.0.0.1:9/v1", Path("/nonexistent"), run_id="budget-loss"))
    name, handle = start_budget(config, "budget-loss")
    try:
        key = f"{config.llm.endpoint_for('annotate').base_url}|sim-judge"
        assert asyncio.run(RateBudget(name, "rae-ray", key).acquire(10)) is None
        budget = next(a for a in state.actors().values() if a["Name"] == name and a["State"] == "ALIVE")
        os.kill(budget["Pid"], signal.SIGKILL)
        time.sleep(1.0)
        # A new client of the same run (e.g. a restarted annotation actor) must still get its grants.
        assert asyncio.run(asyncio.wait_for(RateBudget(name, "rae-ray", key).acquire(10), 30)) is None
    finally:
        import ray

        ray.kill(handle)
