"""`ray job submit` against a real local head: the job as a cluster runs it, through the Jobs API.

The head is a separate Ray (`ray start --head --block` in its own process group, its own temp dir and ports), not
the session's `ray_local`: nothing here calls `ray.init()` in the test process. It is stopped by signalling the
processes it started; never `ray stop`, which kills every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from rae_ray.sim.process import SimProcess
from tests.cluster.processes import free_port, stop_head
from tests.helpers import read_output

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What `--working-dir .` should not upload (Ray also skips .git, .venv and .gitignore'd files by default).
EXCLUDES = [".venv", ".git", "rae-output", "**/__pycache__", "*.egg-info", ".pytest_cache", "build", "dist"]
KEY_ENV = "RAE_SIM_API_KEY"  # the variable jobs/configs/demo.yaml names as api_key_env
JOB_TIMEOUT_S = 150.0


@dataclass
class Head:
    address: str  # the dashboard / Jobs API, http://127.0.0.1:<port>
    api_key: str  # in the Ray processes' environment only
    sim_url: str


def _start_head(temp_dir: str, api_key: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    ports = {name: free_port() for name in ("gcs", "dashboard", "agent", "client", "runtime_env")}
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    # A job's entrypoint runs in a shell with the raylet's environment: `python` must be this venv's python,
    # as it is the image's python on a cluster node.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["RAY_AUTH_MODE"] = "disabled"
    # On SIGTERM, skip the node's drain phase (up to 30 s by default): nothing here needs a graceful drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # As cluster.yaml's start commands do: the key is in the environment `ray start` runs in, nowhere else.
    env[KEY_ENV] = api_key
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={ports['gcs']}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
        f"--dashboard-agent-listen-port={ports['agent']}", f"--ray-client-server-port={ports['client']}",
        f"--runtime-env-agent-port={ports['runtime_env']}", "--num-cpus=2", "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    log_path = Path(temp_dir) / "ray-start.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=temp_dir, start_new_session=True)
    return process, f"http://127.0.0.1:{ports['dashboard']}", log_path


def _wait_for_dashboard(process: subprocess.Popen[bytes], address: str, log_path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`ray start --head` exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(address + "/api/version", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the dashboard at {address} did not come up in {timeout_s:.0f} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    # Ray's socket paths must stay under ~107 characters: a short directory of our own rather than tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rae-ray-head-", dir="/tmp")
    api_key = "sk-test-" + secrets.token_hex(16)
    process = None
    try:
        with SimProcess(latency_ms=2, api_key=api_key) as sim:
            process, address, log_path = _start_head(temp_dir, api_key)
            _wait_for_dashboard(process, address, log_path)
            yield Head(address=address, api_key=api_key, sim_url=sim.base_url)
    finally:
        if process is not None:
            stop_head(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _entrypoint(*settings: str) -> str:
    return " ".join(["python jobs/evaluate.py --config jobs/configs/demo.yaml", *(f"--set {s}" for s in settings)])


def _wait_for_job(client, submission_id: str, timeout_s: float = JOB_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status.is_terminal():
            return status
        time.sleep(1)
    client.stop_job(submission_id)
    logs = client.get_job_logs(submission_id)
    pytest.fail(f"job {submission_id} not done in {timeout_s:.0f} s; logs:\n{logs[-6000:]}")


def test_submitted_job_succeeds_and_writes_the_run(head, chorus, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head.address)
    out = tmp_path / "out"
    submission_id = client.submit_job(
        entrypoint=_entrypoint(
            f"llm.endpoints.default.base_url={head.sim_url}",
            # The simulated endpoint wants the key: the job succeeds only if it got it from the head's environment.
            "llm.endpoints.default.api_key_required=true",
            f"output.uri={out}",
            "run_id=submitted",
            # Less work than the defaults (8 partitions, 1000 resamples) on a 2-core machine; same code path.
            "compute.shuffle_partitions=4",
            "metrics.bootstrap=200",
        ),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES},
    )
    status = _wait_for_job(client, submission_id)
    logs = client.get_job_logs(submission_id)
    info = client.get_job_info(submission_id)
    assert status == JobStatus.SUCCEEDED, f"{status}: {info.message}\n--- logs ---\n{logs[-6000:]}"
    assert info.driver_exit_code == 0

    # The key reached the job without passing through its metadata (entrypoint, runtime_env) or its outputs.
    assert head.api_key not in repr(info) and head.api_key not in logs
    assert "env_vars" not in (info.runtime_env or {})

    root = out / "submitted"
    manifest = json.loads((root / "manifest.json").read_text())
    assert head.api_key not in json.dumps(manifest)
    assert manifest["status"] == "succeeded"
    labels = read_output(root, "labels")
    log = pl.read_parquet(chorus / "search_log.parquet")
    expected_pairs = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique().height
    assert labels.height == manifest["pairs_unique"] == expected_pairs
    assert labels.select("query", "product_id").n_unique() == labels.height
    assert labels["grade"].null_count() == 0
    assert manifest["errors"]["annotate"] == 0 and manifest["llm_calls"]["annotate"] == labels.height
    rankers = pl.read_parquet(root / "metrics" / "rankers.parquet")
    assert set(rankers["ranker"]) == {"random-v0", "bm25-v1", "tuned-v2"}
    # The per-ranker table the job prints ends up in the job's logs.
    assert "bm25-v1" in logs and f"output: {root}" in logs


def test_failing_job_fails_through_the_cli(head):
    """`ray job submit` (the CLI) waits for the job and exits non-zero; the Jobs API records the driver's code."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission_id = "rae-bad-config-" + secrets.token_hex(4)
    env = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", head.address, "--submission-id", submission_id,
         "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
         *_entrypoint("k=0").split()],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, f"exit {result.returncode}\n{output[-4000:]}"
    assert "k: Input should be greater than or equal to 1" in output

    info = JobSubmissionClient(head.address).get_job_info(submission_id)
    assert info.status == JobStatus.FAILED
    assert info.driver_exit_code == 2  # jobs/evaluate.py: 2 = bad config, input or endpoint
