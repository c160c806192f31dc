"""Votes on a real server (llama.cpp, SmolLM2-135M-Instruct): two samples per pair at temperature 0.8, each its
own request (sample 1 carries seed 1), both kept as votes with the label's confidence."""

from __future__ import annotations

import polars as pl
import pytest

from rae_ray.config import config_from_dict
from rae_ray.job import run
from tests.helpers import read_output
from tests.real.test_real_job import real_config, slice_log

pytestmark = pytest.mark.integration


def test_two_samples_give_votes_and_confidence(ray_local, llama, chorus, tmp_path):
    # "camera bag" at k=3 over the 3 rankers: 4 unique pairs.
    log = slice_log(chorus, tmp_path / "log.parquet", ["camera bag"])
    config = real_config(llama, tmp_path / "out", tmp_path / "log.parquet", k=3, metrics={"ks": [3], "bootstrap": 50})
    config["llm"]["annotate"].update({"samples": 2, "temperature": 0.8})
    manifest = run(config_from_dict(config)).manifest

    pairs = log.filter(pl.col("rank") <= 3).select("query", "product_id").unique()
    labels = read_output(tmp_path / "out" / "real", "labels")
    assert labels.height == pairs.height == 4
    assert labels["votes"].list.len().to_list() == [2] * 4
    assert {v["sample"] for votes in labels["votes"].to_list() for v in votes} == {0, 1}
    assert manifest["llm_calls"]["annotate"] >= 2 * pairs.height  # a reply cut at max_tokens is asked once more
    for row in labels.iter_rows(named=True):
        grades = [v["grade"] for v in row["votes"] if v["grade"] is not None]
        assert row["votes_failed"] == 2 - len(grades)
        if grades:
            assert row["confidence"] == (1.0 if len(set(grades)) == 1 else 0.5)
            assert row["grade"] == (min(grades) if len(set(grades)) > 1 else grades[0])
        else:
            assert row["confidence"] is None and row["error"] is not None
    section = manifest["confidence"]
    assert section["votes_per_pair"] == 2 and section["pairs_graded"] == labels["grade"].count()
    print("real votes:", labels.select("product_id", "grade", "confidence", "votes").to_dicts())
