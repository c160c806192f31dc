"""Choosing a judge: a sweep with human labels writes the judges table; the ablation without guidelines."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from rae_ray.cli import main
from rae_ray.config import load_config
from rae_ray.estimate import estimate
from rae_ray.llm.prompts import ANNOTATION_NO_GUIDELINE_PROMPT_VERSION, ANNOTATION_PROMPT_VERSION
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration

MEASURES = ("exact", "cohen_kappa", "quadratic_weighted_kappa")


def test_sweep_with_people_writes_the_judges_table(ray_local, sim, chorus, tmp_path, capsys):
    log = pl.read_parquet(chorus / "search_log.parquet")
    log = log.filter(pl.col("query").is_in(sorted(log["query"].unique())[:8]))
    log.write_parquet(tmp_path / "log.parquet")
    config = base_config(sim.base_url, tmp_path / "out", k=4)
    config["input"] = {
        "log": str(tmp_path / "log.parquet"), "catalog": "sample:products.parquet",
        "human_labels": {"uri": "sample:judgments.parquet", "column": "final_rating",
                         "rater_columns": ["rater_1", "rater_2", "rater_3"], "grade_map": {3: 2, 2: 1, 1: 1, 0: 0}},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "base": "base.yaml", "sweep_id": "jd",
        "variants": {"default": {}, "no-guidelines": {"llm.guidelines.enabled": False}}}))
    pairs = log.filter(pl.col("rank") <= 4).select("query", "product_id").unique().height

    predicted = estimate(load_config(tmp_path / "base.yaml", ["llm.guidelines.enabled=false"]))
    assert predicted.stages["guidelines"].calls == 0 and predicted.stages["annotate"].calls == pairs

    assert main(["sweep", "--sweep", str(tmp_path / "sweep.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "judges vs people" in printed and "* best judge by Cohen's kappa" in printed

    judges = pl.read_parquet(tmp_path / "out" / "jd" / "judges.parquet")
    assert judges.filter(kind="judge")["variant"].to_list() == ["default", "no-guidelines"]
    assert judges.filter(kind="judge")["guidelines_model"].to_list() == ["sim-judge", "none"]
    people = judges.filter(kind="human_vs_human")
    assert people.select("rater_a", "rater_b").rows() == [("rater_1", "rater_2"), ("rater_1", "rater_3"),
                                                          ("rater_2", "rater_3")]
    assert people["llm_calls"].null_count() == people["cost_usd"].null_count() == 3
    for row in judges.iter_rows(named=True):
        assert 0 < row["n_pairs"] <= pairs and 0 < row["n_queries"] <= 8
        for name in MEASURES:
            assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"], (row["variant"], name)
        assert row["exact_ci_low"] < row["exact_ci_high"]  # eight queries: a real interval

    first = json.loads((tmp_path / "out" / "jd-default" / "manifest.json").read_text())
    ablation = json.loads((tmp_path / "out" / "jd-no-guidelines" / "manifest.json").read_text())
    assert first["llm_calls"]["guidelines"] == 8
    # No guideline calls; every pair judged again (its own prompt version: no label of the first variant fits).
    assert ablation["llm_calls"] == {"guidelines": 0, "annotate": pairs}
    assert ablation["versions"]["prompts"]["annotate"] == ANNOTATION_NO_GUIDELINE_PROMPT_VERSION
    by_variant = dict(zip(judges["variant"], judges["llm_calls"]))
    assert by_variant["no-guidelines"] == pairs and by_variant["default"] == 8 + pairs
    labels = read_output(tmp_path / "out" / "jd-no-guidelines", "labels")
    assert set(labels["prompt_version"]) == {ANNOTATION_NO_GUIDELINE_PROMPT_VERSION}
    assert labels["guideline_id"].null_count() == labels.height == pairs and labels["grade"].null_count() == 0
    assert set(read_output(tmp_path / "out" / "jd-default", "labels")["prompt_version"]) == {ANNOTATION_PROMPT_VERSION}
    assert not (tmp_path / "out" / "jd-no-guidelines" / "guidelines").exists()
