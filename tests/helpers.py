"""Helpers shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def base_config(sim_url: str, out: Path, **overrides) -> dict:
    """A run config over the bundled sample and the simulated endpoint (a dict: tests change parts of it)."""
    config = {
        "run_id": "run",
        "input": {"log": "sample:search_log.parquet", "catalog": "sample:products.parquet"},
        "llm": {
            "endpoints": {"default": {"base_url": sim_url, "api_key_env": "RAE_TEST_UNSET_KEY", "api_key_required": False,
                                      "backoff_base_s": 0.05, "backoff_max_s": 0.5}},
            "guidelines": {"model": "sim-judge"},
            "annotate": {"model": "sim-judge"},
        },
        "compute": {"shuffle_partitions": 4},
        "metrics": {"bootstrap": 200},
        "output": {"uri": str(out)},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def read_output(root: Path, name: str) -> pl.DataFrame:
    files = sorted((root / name).glob("*.parquet"))
    assert files, f"no parquet files in {root / name}"
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def stored_records(table: Path, storage_options: dict | None = None) -> pl.DataFrame:
    """Every record of one label-store table (a Delta table, e.g. OUT/_store/labels), read by polars; empty if none yet."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(str(table), storage_options=storage_options):
        return pl.DataFrame({"label_key": []}, schema={"label_key": pl.Utf8})
    return pl.read_delta(str(table), storage_options=storage_options)
