"""Run by `test_worker_faults.py` in its own process: a local multi-node Ray cluster loses a worker node mid-run.

`python cluster_node_kill.py FOLDER` (FOLDER holds log.parquet and catalog.parquet). Builds a head node with no
CPUs (so every task and actor runs on a worker node) and two worker nodes, starts the job in a thread, waits
until the endpoint has received some judgements, removes the worker node that runs the annotation actor, waits for
the job, and prints one JSON line: what happened and the run's manifest (or the error).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

STORE_BYTES = 150 * 1024 * 1024
SLOW_ANNOTATE = {"min_actors": 1, "max_actors": 1, "batch_size": 16, "max_concurrent_batches": 1,
                 "max_concurrent_requests": 8}


def emit(report: dict) -> None:
    print(json.dumps(report, default=str), flush=True)


def map_workers(job_id: str) -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values()
            if a["State"] == "ALIVE" and a["JobID"] == job_id and "MapWorker" in a["ActorClassName"]]


def main(folder: Path) -> int:
    import polars as pl
    import ray
    from ray.cluster_utils import Cluster

    from rae_ray.config import config_from_dict
    from rae_ray.job import run
    from rae_ray.sim.process import SimProcess
    from tests.helpers import base_config

    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": STORE_BYTES, "include_dashboard": False,
            # A node slow to answer on a loaded machine is not dead (a killed one fails its checks at once).
            "_system_config": {"health_check_timeout_ms": 30_000}})
        # Two CPUs a node (logical): with a single 1-CPU node left, Ray Data deadlocks on its own (a join's
        # aggregator holds 0.25 CPU while the catalog read waits for a whole one), whatever the job does.
        workers = [cluster.add_node(num_cpus=2, object_store_memory=STORE_BYTES) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
    except Exception as error:  # noqa: BLE001 - reported as a skip with its reason
        emit({"skip": f"cannot start a local multi-node Ray cluster here: {type(error).__name__}: {error}"})
        return 0
    report: dict = {"error": None}
    try:
        log = pl.read_parquet(folder / "log.parquet")
        report["pairs"] = log.filter(pl.col("rank") <= 10).select("query", "product_id").n_unique()
        outcome: dict = {}
        with SimProcess(latency_ms=150) as sim:
            config = base_config(sim.base_url, folder / "out", run_id="node-lost")
            config["input"] = {"log": str(folder / "log.parquet"), "catalog": str(folder / "catalog.parquet")}
            config["compute"].update(shuffle_partitions=2, annotate=SLOW_ANNOTATE)

            def job() -> None:
                try:
                    outcome["result"] = run(config_from_dict(config))
                except BaseException as error:  # noqa: BLE001 - reported
                    outcome["error"] = f"{type(error).__name__}: {str(error)[:6000]}"

            driver = threading.Thread(target=job, daemon=True)
            driver.start()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and sim.stats()["by_schema"].get("relevance_judgement", 0) < 24:
                if not driver.is_alive():
                    break
                time.sleep(0.2)
            job_id = ray.get_runtime_context().get_job_id()
            actors = map_workers(job_id)
            nodes = {a["Address"]["NodeID"] for a in actors}
            victim = next((w for w in workers if w.node_id in nodes), None)
            report["sent_before_removal"] = sim.stats()["by_schema"].get("relevance_judgement", 0)
            report["annotate_actor_nodes"] = sorted(nodes)
            report["worker_nodes"] = [w.node_id for w in workers]
            report["removed_node_had_annotate_actor"] = victim is not None
            from ray._private import state

            others = [a for a in state.actors().values() if a["State"] == "ALIVE" and a["JobID"] == job_id
                      and "MapWorker" not in a["ActorClassName"]]
            report["other_actors_on_removed_node"] = sorted(
                a["ActorClassName"] for a in others if victim is not None and a["Address"]["NodeID"] == victim.node_id)
            if victim is not None:
                cluster.remove_node(victim, allow_graceful=False)
                report["removed_at_s"] = time.monotonic()
            driver.join(300)
            report["finished"] = not driver.is_alive()
            report["judgements_received"] = sim.stats()["by_schema"].get("relevance_judgement", 0)
        if "result" in outcome:
            report["manifest"] = outcome["result"].manifest
        report["error"] = outcome.get("error") or (None if report["finished"] else "the job did not finish in 300 s after the node was removed")
    except BaseException as error:  # noqa: BLE001 - reported
        report["error"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()[-4000:]}"
    finally:
        emit(report)
        for stop in (ray.shutdown, cluster.shutdown):
            try:
                stop()
            except Exception as error:  # noqa: BLE001 - the report is out; a messy teardown must not hide it
                print(f"teardown: {type(error).__name__}: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
