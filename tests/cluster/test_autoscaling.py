"""Autoscaling shown: a job whose annotate pool wants more CPUs than the head has makes the cluster grow, and the
cluster shrinks after the workers' idle timeout; no pair is lost.

The cluster is Ray's fake multi-node provider (`FakeMultiNodeProvider`): the real autoscaler (monitor process,
`StandardAutoscaler`) on this machine, which starts and stops Ray nodes as local processes instead of cloud VMs.
`ray.cluster_utils.AutoscalingCluster` is not used: it runs `ray stop --force` (every Ray on the machine) and
reads the provider's example.yaml, which Ray 2.60's wheel does not ship. The head here is `ray start --head
--block --autoscaling-config=...` with its own temp dir and port, and the provider is named as an `external`
one (no defaults file needed); it is stopped by signalling the processes it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from rae_ray.sim.process import SimProcess
from tests.cluster.processes import free_port, stop_head
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
HEAD_CPUS = 1
# Two CPUs a worker: at its largest (head + 2 workers of 1 CPU) the cluster held the two 1-CPU annotate actors and
# a 0.25-CPU actor, and the 1-CPU task the job needed next fitted on no node: the job waited with the cluster at
# its maximum (measured 2026-12-01 06:21). With 2, a worker holding an actor still takes a task.
WORKER_CPUS = 2
MAX_WORKERS = 2
IDLE_TIMEOUT_MINUTES = 0.25  # the schema takes a number: 15 s
QUERIES = 8
SHRINK_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 300.0

SAMPLER = r"""
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"t": time.time(), "nodes": len(nodes),
                      "cpus": sum(n["Resources"].get("CPU", 0) for n in nodes)}), flush=True)
    time.sleep(1)
"""


def autoscaling_config(gcs_address: str) -> dict:
    """The cluster launcher's config, as `ray up` would hand it to the head's monitor."""
    return {
        "cluster_name": "rae-ray-autoscaling-test",
        "max_workers": MAX_WORKERS,
        "provider": {
            "type": "external",
            "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0},
            "cpu-worker": {"resources": {"CPU": WORKER_CPUS, "object_store_memory": 200 * 1024**2},
                           "node_config": {}, "min_workers": 0, "max_workers": MAX_WORKERS},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class Cluster:
    address: str  # the GCS, ip:port
    temp_dir: str
    env: dict[str, str]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    import ray._private.services

    temp_dir = tempfile.mkdtemp(prefix="rae-as-", dir="/tmp")  # Ray's socket paths must stay short
    # The fake provider starts worker nodes on this machine's address; the head and the job use the same one.
    address = f"{ray._private.services.get_node_ip_address()}:{free_port()}"
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(autoscaling_config(address)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]), "RAY_AUTH_MODE": "disabled",
                "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    command = [str(BIN / "ray"), "start", "--head", "--block", f"--port={address.rsplit(':', 1)[1]}",
               f"--autoscaling-config={config_path}", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=false",
               "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--object-store-memory={300 * 1024**2}"]
    log_path = Path(temp_dir) / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=temp_dir, start_new_session=True)
    try:
        yield Cluster(address=address, temp_dir=temp_dir, env=env)
    finally:
        stop_head(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def autoscaler_log(cluster: Cluster, lines: int = 40) -> str:
    """The end of the head's monitor (autoscaler) log, for a failure's message."""
    logs = sorted(Path(cluster.temp_dir).glob("session_*/logs/monitor.log"))
    return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else "(no monitor.log)"


@dataclass
class Timeline:
    """Node counts sampled every second, and the job's progress lines, each with its time."""

    start: float = field(default_factory=time.time)
    samples: list[dict] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # every line the job printed

    def follow_samples(self, stream) -> None:
        for line in stream:
            try:
                self.samples.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def follow_job(self, stream) -> None:
        for line in stream:
            self.output.append(line.rstrip())
            if line.startswith("[rae-ray]"):
                self.events.append((time.time(), line.strip()))

    def lines(self) -> list[str]:
        """Every change of the node count, and the job's lines, in time order."""
        rows, last = [], None
        for sample in self.samples:
            if (sample["nodes"], sample["cpus"]) != last:
                rows.append((sample["t"], f"nodes {sample['nodes']} (CPUs {sample['cpus']:g})"))
                last = (sample["nodes"], sample["cpus"])
        rows += [(t, "  job: " + text.removeprefix("[rae-ray] ")[:110]) for t, text in self.events]
        return [f"{t - self.start:6.1f}s  {text}" for t, text in sorted(rows)]


def test_job_grows_the_cluster_and_it_shrinks_after_idle_timeout(cluster, chorus, tmp_path):
    log = pl.read_parquet(chorus / "search_log.parquet")
    log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:QUERIES]))
    log.write_parquet(tmp_path / "log.parquet")
    expected = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique()
    timeline = Timeline()

    with SimProcess(latency_ms=200) as sim:
        config = base_config(sim.base_url, tmp_path / "out")
        config["input"] = {"log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet"}
        config["run_id"] = "grown"
        config["llm"]["endpoints"]["default"]["rpm"] = 300  # ~5 calls/s: annotation lasts ~30 s
        config["metrics"] = {"bootstrap": 100, "permutations": 200}
        config["compute"] = {
            "ray_address": cluster.address, "shuffle_partitions": 2,
            "guidelines": {"min_actors": 1, "max_actors": 1, "batch_size": 4},
            # Two actors of a whole CPU each: more than the head's one CPU, so the autoscaler adds workers.
            "annotate": {"min_actors": 2, "max_actors": 2, "num_cpus": 1, "batch_size": 8,
                         "max_concurrent_requests": 2, "max_concurrent_batches": 1},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

        sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, cluster.address], env=cluster.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=timeline.follow_samples, args=(sampler.stdout,), daemon=True).start()
        job = None
        try:
            job = subprocess.Popen([sys.executable, "-m", "rae_ray", "run", "--config", str(tmp_path / "config.yaml")],
                                   env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            reader = threading.Thread(target=timeline.follow_job, args=(job.stdout,), daemon=True)
            reader.start()
            try:
                job_exit = job.wait(timeout=JOB_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                job_exit = None
            reader.join(5)
            job_done = time.time()
            timeline.events.append((job_done, f"[rae-ray] job exited with {job_exit}"))
            # After the job: the workers are idle; they go after IDLE_TIMEOUT_MINUTES (and an autoscaler round).
            deadline = time.monotonic() + (SHRINK_TIMEOUT_S if job_exit == 0 else 0)
            while time.monotonic() < deadline:
                if timeline.samples and timeline.samples[-1]["t"] > job_done and timeline.samples[-1]["nodes"] == 1:
                    break
                time.sleep(1)
        finally:
            if job is not None and job.poll() is None:
                job.kill()
                job.wait()
            sampler.kill()
            sampler.wait()
    print("\nautoscaling timeline (seconds from the test's start):\n" + "\n".join(timeline.lines()))

    assert job_exit == 0, ("\n".join(timeline.output[-40:]) + "\n--- autoscaler ---\n" + autoscaler_log(cluster))
    most = max(s["nodes"] for s in timeline.samples)
    assert most > 1, "the cluster never grew above the head\n" + autoscaler_log(cluster)
    assert most <= 1 + MAX_WORKERS
    grown = next(s["t"] for s in timeline.samples if s["nodes"] > 1)
    assert grown < job_done  # it grew while the job ran
    assert timeline.samples[-1]["nodes"] == 1 and timeline.samples[-1]["t"] > job_done, \
        "the workers were not removed after their idle timeout"

    # No pair lost: every pair of the log is labelled or in errors/.
    root = tmp_path / "out" / "grown"
    manifest = json.loads((root / "manifest.json").read_text())
    labels = read_output(root, "labels").select("query", "product_id")
    errors = (read_output(root, "errors").select("query", "product_id").drop_nulls()
              if (root / "errors").exists() and list((root / "errors").glob("*.parquet")) else labels.clear())
    accounted = pl.concat([labels, errors]).unique()
    assert expected.join(accounted, on=["query", "product_id"], how="anti").height == 0
    assert labels.height == manifest["pairs_unique"] == expected.height
    print(f"manifest: status {manifest['status']}, attempts {manifest['attempts']}, "
          f"attempts_failed {manifest['attempts_failed']}, llm_calls {manifest['llm_calls']}")
