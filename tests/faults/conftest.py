"""Shared by the fault tests: a small chorus log, and one faulted run (plus its rerun) through the CLI.

The faulted run is shared by `test_endpoint_faults` (accounting) and `test_secrets` (nothing leaks), so the suite
pays for it once. It runs with a planted API key that the simulated endpoint requires, so every call carries it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from rae_ray.cli import main
from tests.helpers import base_config

PLANTED_KEY = "sk-rae-test-PLANTED-0123456789"
KEY_ENV = "RAE_FAULTS_TEST_KEY"
# The stage actors read the key from their own environment, which Ray's workers inherit from the process that
# starts Ray: the variable is set at collection, before the session's Ray starts, as on a cluster's nodes.
os.environ.setdefault(KEY_ENV, PLANTED_KEY)
N_QUERIES = 15  # 317 unique pairs at k = 10
# The mix: 10% 5xx, 5% 429 with Retry-After, 3% malformed or off-schema, 2% timeouts, plus resets.
FAULTS = {"error_rate_5xx": 0.10, "error_rate_429": 0.05, "error_rate_malformed": 0.03, "error_rate_timeout": 0.02,
          "error_rate_reset": 0.02}
# Short timeouts and backoffs keep the test fast; one retry and one re-ask leave some pairs failed on purpose.
FAST_ENDPOINT = {"timeout_s": 1.0, "max_retries": 1, "max_parse_retries": 1, "backoff_base_s": 0.05,
                 "backoff_max_s": 0.5}


def chorus_subset(chorus: Path, n_queries: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:n_queries]
    return log.filter(pl.col("query").is_in(queries)), pl.read_parquet(chorus / "products.parquet")


def expected_pairs(log: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    return log.filter(pl.col("rank") <= k).select("query", "product_id").unique()


def read_folder(folder: Path) -> pl.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    assert files, f"no parquet files in {folder}"
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


@dataclass
class CliRun:
    """One `rae-ray run` in this process: exit code, what it printed and logged, the sim's counters after it."""

    root: Path
    code: int
    stdout: str
    stderr: str
    logs: str
    stats: dict
    seconds: float
    manifest: dict = field(default_factory=dict)


@contextlib.contextmanager
def captured_logs():
    """Every log record of this process (any logger, INFO and up) into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)


def run_cli(config: dict, folder: Path, sim) -> CliRun:
    """`rae-ray run --config FILE` in process, stdout, stderr and logs captured; the sim's counters reset first."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config['run_id']}.yaml"
    path.write_text(yaml.safe_dump(config))
    sim.reset_stats()
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with captured_logs() as logs, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(path)])
    root = Path(config["output"]["uri"]) / config["run_id"]
    result = CliRun(root=root, code=code, stdout=out.getvalue(), stderr=err.getvalue(), logs=logs.getvalue(),
                    stats=sim.stats(), seconds=time.monotonic() - started)
    if (root / "manifest.json").exists():
        result.manifest = json.loads((root / "manifest.json").read_text())
    return result


@dataclass
class FaultedRuns:
    log: pl.DataFrame
    out: Path
    first: CliRun
    rerun: CliRun
    started: float


@pytest.fixture(scope="session")
def faulted_runs(ray_local, chorus, tmp_path_factory) -> FaultedRuns:
    """A run against an endpoint injecting every fault kind, then a rerun (same output, new run id, same faults)."""
    from rae_ray.sim.process import SimProcess

    started = time.time()
    folder = tmp_path_factory.mktemp("faulted")
    log, catalog = chorus_subset(chorus, N_QUERIES)
    log.write_parquet(folder / "log.parquet")
    catalog.write_parquet(folder / "catalog.parquet")
    with pytest.MonkeyPatch.context() as env, SimProcess(
        latency_ms=5, timeout_hold_s=3, retry_after_s=1, seed=11, api_key=PLANTED_KEY, **FAULTS
    ) as sim:
        env.setenv(KEY_ENV, PLANTED_KEY)
        config = base_config(sim.base_url, folder / "out")
        config["input"] = {"log": str(folder / "log.parquet"), "catalog": str(folder / "catalog.parquet")}
        config["compute"]["shuffle_partitions"] = 2
        config["llm"]["endpoints"]["default"].update(api_key_env=KEY_ENV, api_key_required=True, **FAST_ENDPOINT)
        first = run_cli({**config, "run_id": "faulted"}, folder, sim)
        rerun = run_cli({**config, "run_id": "rerun"}, folder, sim)
    for run in (first, rerun):
        assert run.code == 0, f"exit {run.code}\n{run.stderr[-3000:]}"
    return FaultedRuns(log=log, out=folder / "out", first=first, rerun=rerun, started=started)
