"""Confidence from repeated judgments, end to end on the simulated endpoint with per-sample noise: votes in the
label store one by one (raising samples sends only the new votes), majority labels with confidence, a panel."""

from __future__ import annotations

import json

import polars as pl
import pytest

from rae_ray.config import config_from_dict
from rae_ray.estimate import estimate
from rae_ray.job import run
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration

N_QUERIES = 15


@pytest.fixture(scope="module")
def noisy_sim():
    from rae_ray.sim.process import SimProcess

    with SimProcess(judge_noise=0.3) as server:
        yield server


@pytest.fixture
def inputs(chorus, tmp_path):
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:N_QUERIES]
    log = log.filter(pl.col("query").is_in(queries))
    log.write_parquet(tmp_path / "log.parquet")
    pairs = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique().height
    return {"log": str(tmp_path / "log.parquet"), "catalog": str(chorus / "products.parquet")}, pairs


def voting_config(sim_url: str, out, inputs: dict, run_id: str, **annotate) -> dict:
    config = base_config(sim_url, out)
    config["input"] = inputs
    config["run_id"] = run_id
    config["llm"]["annotate"].update({"temperature": 0.7, **annotate})
    return config


def test_more_samples_send_only_the_new_votes(ray_local, noisy_sim, tmp_path, inputs):
    files, pairs = inputs
    out = tmp_path / "out"
    one = run(config_from_dict(voting_config(noisy_sim.base_url, out, files, "one"))).manifest
    assert one["llm_calls"]["annotate"] == pairs
    assert "confidence" not in one  # one vote per pair: no confidence section
    single = read_output(out / "one", "labels")
    assert single["confidence"].drop_nulls().unique().to_list() == [1.0]

    three = run(config_from_dict(voting_config(noisy_sim.base_url, out, files, "three", samples=3))).manifest
    # Sample 0 is today's label: only samples 1 and 2 are new.
    assert three["llm_calls"] == {"guidelines": 0, "annotate": 2 * pairs}
    assert three["cache_hits"]["annotate"] == pairs
    labels = read_output(out / "three", "labels")
    assert labels.height == pairs
    assert labels["votes"].list.len().unique().to_list() == [3]
    assert labels.filter(pl.col("confidence") < 1).height > 0  # the noise makes samples disagree
    confidence = three["confidence"]
    assert confidence["votes_per_pair"] == 3 and confidence["samples"] == 3
    assert sum(b["pairs"] for b in confidence["histogram"]) == confidence["pairs_graded"] == labels["grade"].count()
    assert confidence["mean_confidence"] == pytest.approx(labels["confidence"].mean(), abs=1e-3)
    agreement = confidence["agreement"]
    assert agreement["slot_pairs"] == 3 and 0 < agreement["exact"] < 1
    assert confidence["judges"]["sim-judge"]["llm_calls"] == 2 * pairs
    # The label is the majority of its votes, ties to the lower grade.
    for row in labels.head(50).iter_rows(named=True):
        grades = [v["grade"] for v in row["votes"]]
        best = max(grades.count(g) for g in set(grades))
        assert row["grade"] == min(g for g in set(grades) if grades.count(g) == best)
        assert row["confidence"] == pytest.approx(best / 3)

    five_config = config_from_dict(voting_config(noisy_sim.base_url, out, files, "five", samples=5))
    predicted = estimate(five_config).stages["annotate"]
    assert (predicted.calls, predicted.cache_hits) == (2 * pairs, 3 * pairs)
    five = run(five_config).manifest
    assert five["llm_calls"] == {"guidelines": 0, "annotate": 2 * pairs}
    assert five["cache_hits"]["annotate"] == 3 * pairs
    again = read_output(out / "five", "labels")
    assert again["votes"].list.len().unique().to_list() == [5]
    # The first three votes of each pair are the stored ones.
    first_three = again.select("query", "product_id", pl.col("votes").list.head(3).alias("v")).sort("query", "product_id")
    before = labels.select("query", "product_id", pl.col("votes").alias("v")).sort("query", "product_id")
    assert first_three["v"].to_list() == before["v"].to_list()
    queue = pl.read_csv(out / "five" / "review" / "queue.csv")
    assert {"confidence", "votes"} <= set(queue.columns)
    uncertain = queue.filter(pl.col("confidence").is_not_null())
    assert uncertain.height > 0 and uncertain["confidence"].to_list() == sorted(uncertain["confidence"].to_list())
    assert queue["confidence"][0] == again["confidence"].min()
    report = (out / "five" / "report.html").read_text()
    assert "Confidence" in report and "least confident" in report.lower()


def test_a_panel_of_two_judges(ray_local, noisy_sim, tmp_path, inputs):
    files, pairs = inputs
    out = tmp_path / "out"
    config = voting_config(noisy_sim.base_url, out, files, "panel",
                           panel=[{"model": "sim-judge-b", "endpoint": "second"}])
    config["llm"]["endpoints"]["second"] = json.loads(json.dumps(config["llm"]["endpoints"]["default"]))
    config["pricing"] = {"sim-judge": {"input_per_1m": 1, "cached_input_per_1m": 0.5, "output_per_1m": 2},
                         "sim-judge-b": {"input_per_1m": 10, "cached_input_per_1m": 5, "output_per_1m": 20}}
    noisy_sim.reset_stats()
    manifest = run(config_from_dict(config)).manifest
    assert manifest["llm_calls"]["annotate"] == 2 * pairs
    by_model = noisy_sim.stats()["by_model"]
    assert by_model.get("sim-judge-b") == pairs
    judges = manifest["confidence"]["judges"]
    assert set(judges) == {"sim-judge", "sim-judge-b"}
    assert judges["sim-judge-b"]["cost_usd"] > judges["sim-judge"]["cost_usd"] > 0
    assert manifest["cost_usd"]["annotate"] == pytest.approx(
        judges["sim-judge"]["cost_usd"] + judges["sim-judge-b"]["cost_usd"], abs=1e-5)
    agreement = manifest["confidence"]["agreement"]
    assert agreement["between_judges"]["slot_pairs"] == 1 and agreement["between_samples"]["slot_pairs"] == 0
    labels = read_output(out / "panel", "labels")
    assert {v["model"] for votes in labels["votes"].to_list() for v in votes} == {"sim-judge", "sim-judge-b"}
    # Two votes that differ tie: the lower grade, at confidence 0.5.
    split = labels.filter(pl.col("confidence") == 0.5)
    assert split.height > 0
    assert all(row["grade"] == min(v["grade"] for v in row["votes"]) for row in split.iter_rows(named=True))
