"""metrics.ideal: a ranker's nDCG stays put when another ranker joins a later run (store), and moves (run)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from rae_ray.config import config_from_dict
from rae_ray.job import run
from rae_ray.sim.judge import DEFAULT_SCALE, judge, make_guideline
from tests.helpers import base_config, read_output

pytestmark = pytest.mark.integration

N_QUERIES = 10
A, B, C = "bm25-v1", "tuned-v2", "new-v3"


def _new_relevant_ranker(log: pl.DataFrame, catalog: pl.DataFrame) -> pl.DataFrame:
    """Ranker C: per query, catalog products that A and B never returned and that the simulated judge finds
    highly relevant (grade 2), so C's products enter the ideal pool of a run that holds it."""
    shown = log.filter(pl.col("rank") <= 10).select("query", "product_id").unique()
    rows = []
    products = catalog.to_dicts()
    for query in sorted(log["query"].unique()):
        seen = set(shown.filter(pl.col("query") == query)["product_id"])
        guideline = make_guideline(query, DEFAULT_SCALE)
        found = [p["product_id"] for p in products
                 if p["product_id"] not in seen and judge(query, guideline, DEFAULT_SCALE, p)["grade"] == 2][:5]
        rows += [{"query": query, "ranker": C, "rank": rank, "product_id": product}
                 for rank, product in enumerate(found, start=1)]
    count = log.select("query", "query_count").unique()
    return pl.DataFrame(rows).join(count, on="query").select(log.columns).cast(dict(log.schema))


def _ndcg(root, table: str = "queries") -> pl.DataFrame:
    frame = pl.read_parquet(root / "metrics" / f"{table}.parquet")
    by = ["ranker", "query", "k"] if table == "queries" else ["ranker", "k"]
    return frame.filter(pl.col("metric") == "ndcg").drop("metric").sort(by)


@pytest.fixture
def two_logs(chorus, tmp_path):
    log = pl.read_parquet(chorus / "search_log.parquet")
    queries = sorted(log["query"].unique())[:N_QUERIES]
    first = log.filter(pl.col("query").is_in(queries) & pl.col("ranker").is_in([A, B]))
    catalog = pl.read_parquet(chorus / "products.parquet")
    second = pl.concat([first, _new_relevant_ranker(first, catalog)])
    first.write_parquet(tmp_path / "log-1.parquet")
    second.write_parquet(tmp_path / "log-2.parquet")
    return tmp_path / "log-1.parquet", tmp_path / "log-2.parquet"


def _config(sim, tmp_path, log, run_id: str, ideal: str) -> dict:
    config = base_config(sim.base_url, tmp_path / "out", run_id=run_id)
    config["input"] = {"log": str(log), "catalog": "sample:products.parquet"}
    config["metrics"] = {"bootstrap": 50, "permutations": 200, "ideal": ideal}
    return config


def test_adding_a_ranker_leaves_the_others_ndcg_unchanged_under_ideal_store(ray_local, sim, tmp_path, two_logs):
    """Night 1: A and B. Night 2: A, B and C, whose products nobody judged before. Then night 1's log again, into
    the same store: under store a ranker's nDCG depends on its own list and the store's labels, not on the run's
    other rankers; under run it moves with them."""
    log_1, log_2 = two_logs
    out = tmp_path / "out"
    night_1 = run(config_from_dict(_config(sim, tmp_path, log_1, "run-1", "run")))
    night_2 = run(config_from_dict(_config(sim, tmp_path, log_2, "store-2", "store")))
    assert night_1.manifest["llm_calls"]["annotate"] > 0 and night_2.manifest["llm_calls"]["annotate"] > 0
    rerun = run(config_from_dict(_config(sim, tmp_path, log_1, "store-1-again", "store")))
    run_2 = run(config_from_dict(_config(sim, tmp_path, log_2, "run-2", "run")))
    for again in (rerun, run_2):  # every label of these runs comes from the store
        assert again.manifest["llm_calls"]["annotate"] == 0

    # C surfaced highly relevant products nobody had judged: they are in night 2's labels.
    labels_2 = read_output(out / "store-2", "labels")
    shown_1 = pl.read_parquet(log_1).select("query", "product_id").unique()
    new = labels_2.join(shown_1, on=["query", "product_id"], how="anti")
    assert new.height > 0 and (new["grade"] == 2).any()
    assert labels_2["judge_context"].n_unique() == 1 and labels_2["query_key"].null_count() == 0

    old = pl.col("ranker").is_in([A, B])
    for name in ("run-1", "store-2", "store-1-again", "run-2"):
        assert set(_ndcg(out / name)["ranker"].unique()) >= {A, B}
    # store: with C in the run or not, A's and B's nDCG per query and per ranker are the same.
    assert _ndcg(out / "store-2").filter(old).equals(_ndcg(out / "store-1-again"))
    assert _ndcg(out / "store-2", "rankers").filter(old).equals(_ndcg(out / "store-1-again", "rankers"))
    # run: C's products raise the ideal, so A's and B's nDCG fall on the queries where C found some.
    moved = _ndcg(out / "run-2").filter(old).join(_ndcg(out / "run-1"), on=["ranker", "query", "k"], suffix="_1")
    assert moved.height == _ndcg(out / "run-1").height
    assert (moved["value"] <= moved["value_1"] + 1e-12).all()
    assert moved.filter(pl.col("value") < pl.col("value_1") - 1e-9)["ranker"].unique().sort().to_list() == [A, B]
    # While the store holds nothing beyond the run's own products, store and run agree (night 2); the rerun of
    # night 1 has C's products in its ideal, as night 2 under run has.
    assert _ndcg(out / "store-2").equals(_ndcg(out / "run-2"))
    assert _ndcg(out / "store-1-again").equals(_ndcg(out / "run-2").filter(old))

    # The manifest and the report say which ideal was used.
    assert night_2.manifest["ideal"]["mode"] == "store" and run_2.manifest["ideal"] == {"mode": "run"}
    assert rerun.manifest["ideal"]["judge_context"] == labels_2["judge_context"][0]
    assert rerun.manifest["ideal"]["stored_labels"] == labels_2.filter(pl.col("grade").is_not_null()).height
    assert "metrics.ideal: store" in (out / "store-2" / "report.html").read_text()
    assert "metrics.ideal: run" in (out / "run-2" / "report.html").read_text()
    assert json.loads((out / "run-2" / "manifest.json").read_text())["config"]["metrics"]["ideal"] == "run"

    # judged@k: every product of every top k was labelled (judged or reused); it is not compared.
    rankers = pl.read_parquet(out / "store-2" / "metrics" / "rankers.parquet")
    judged = rankers.filter(pl.col("metric") == "judged")
    assert sorted(judged["ranker"].unique()) == sorted([A, B, C]) and (judged["value"] == 1.0).all()
    comparisons = pl.read_parquet(out / "store-2" / "metrics" / "comparisons.parquet")
    assert comparisons.height > 0 and "judged" not in comparisons["metric"].to_list()


def test_store_records_without_context_are_reused_but_not_in_the_ideal(ray_local, sim, tmp_path, two_logs):
    log_1, log_2 = two_logs
    out = tmp_path / "out"
    run(config_from_dict(_config(sim, tmp_path, log_1, "old", "run")))
    # Half the buckets' records made to look like ones written before records carried query and context (the
    # Delta table reads a column those records lack as null).
    from deltalake import DeltaTable

    table = str(out / "_store" / "labels")
    DeltaTable(table).update(updates={"query_key": "NULL", "judge_context": "NULL"}, predicate="bucket < '8'")
    records = pl.read_delta(table)
    kept = records.filter(pl.col("judge_context").is_not_null()).select("query", "product_id").unique()
    assert 0 < kept.height < records.height
    first = run(config_from_dict(_config(sim, tmp_path, log_1, "again", "store")))
    assert first.manifest["llm_calls"]["annotate"] == 0  # old records still answer lookups
    assert first.manifest["ideal"]["stored_labels"] == kept.height  # ... but only the others count for the ideal
    labels = read_output(out / "again", "labels")
    assert labels["cache_hit"].all() and labels["judge_context"].null_count() == 0  # hits keep their own
    assert _ndcg(out / "again").equals(_ndcg(out / "old"))
