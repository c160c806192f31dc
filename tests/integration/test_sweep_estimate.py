"""Sweeps over variants sharing one store, one log per ranker version, and the dry-run estimate."""

from __future__ import annotations

import polars as pl
import pytest
import yaml

from rae_ray.cli import main
from rae_ray.config import load_config
from rae_ray.estimate import estimate
from tests.helpers import base_config

pytestmark = pytest.mark.integration


def test_estimate_then_sweep_over_per_ranker_logs(ray_local, sim, chorus, tmp_path, capsys):
    log = pl.read_parquet(chorus / "search_log.parquet")
    log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:25]))
    sources = {}
    for ranker in ("random-v0", "bm25-v1", "tuned-v2"):
        path = tmp_path / f"{ranker}.parquet"
        log.filter(pl.col("ranker") == ranker).drop("ranker").write_parquet(path)
        sources[ranker] = str(path)
    config = base_config(sim.base_url, tmp_path / "out")
    config["input"] = {"log": sources, "catalog": "sample:products.parquet"}
    config["llm"]["guidelines"]["expected_output_tokens"] = 170
    config["llm"]["annotate"]["expected_output_tokens"] = 50
    config["pricing"] = {"sim-judge": {"input_per_1m": 0.15, "cached_input_per_1m": 0.075, "output_per_1m": 0.6}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "sweep_id": "sw", "variants": {"k10": {}, "k5": {"k": 5}}}))
    pairs = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique().height

    sim.reset_stats()
    predicted = estimate(load_config(tmp_path / "base.yaml"))
    assert sim.stats()["requests_total"] == 0
    assert predicted.stages["annotate"].calls == pairs
    assert predicted.stages["guidelines"].calls == log["query"].n_unique()

    assert main(["sweep", "--sweep", str(tmp_path / "sweep.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "k5" in printed
    comparison = pl.read_parquet(tmp_path / "out" / "sw" / "comparison.parquet")
    assert set(comparison["variant"]) == {"k10", "k5"}
    assert set(comparison["ranker"]) == {"random-v0", "bm25-v1", "tuned-v2"}
    rankings = pl.read_parquet(tmp_path / "out" / "sw" / "rankings.parquet")
    assert rankings.filter(pl.col("variant") == "k5")["kendall_tau_vs_first"].drop_nulls().len() > 0

    import json

    first = json.loads((tmp_path / "out" / "sw-k10" / "manifest.json").read_text())
    second = json.loads((tmp_path / "out" / "sw-k5" / "manifest.json").read_text())
    assert first["llm_calls"]["annotate"] == pairs
    assert second["llm_calls"] == {"guidelines": 0, "annotate": 0}  # k=5 pairs are a subset, all in the store
    # The estimate made before any call is within 20% of what the run really cost.
    assert abs(predicted.cost_usd - first["cost_usd"]["total"]) <= 0.2 * first["cost_usd"]["total"]
    for stage in ("guidelines", "annotate"):
        real = first["tokens"][stage]["prompt"]
        assert abs(predicted.stages[stage].prompt_tokens - real) <= 0.2 * real
