"""metrics.ideal store without Ray: the judging context, label records that carry it, the store read, the pool."""

from __future__ import annotations

import math

import polars as pl
import pyarrow as pa
import pytest

from rae_ray.config import config_from_dict
from rae_ray.io import Storage
from rae_ray.labelstore import LabelStore, publish_shard
from rae_ray.labelstore.cached import LABEL_SPEC, STORED_PREFIX, hits_as_output, output_schema
from rae_ray.labelstore.keys import add_judge_context, judge_context, normalize_query
from rae_ray.metrics.ideal import store_pool, with_stored_labels
from rae_ray.steps.evaluate import _GRADED, STORED_ROWS, per_query_metrics
from rae_ray.steps.judge import run_judge_context

SCALE = [{"grade": 0, "name": "irrelevant"}, {"grade": 2, "name": "highly relevant"}]
log2 = math.log2


def _config(**changes) -> dict:
    config = {
        "input": {"log": "sample:search_log.parquet"},
        "llm": {"endpoints": {"default": {"base_url": "http://127.0.0.1:9/v1", "api_key_required": False}},
                "guidelines": {"model": "g"}, "annotate": {"model": "judge"}},
    }
    for key, value in changes.items():
        section, _, name = key.partition(".")
        config.setdefault(section, {})[name] = value
    return config


def test_ideal_store_needs_the_label_store():
    assert config_from_dict(_config()).metrics.ideal == "run"  # today's numbers by default
    assert config_from_dict(_config(**{"metrics.ideal": "store"})).metrics.ideal == "store"
    with pytest.raises(ValueError, match="metrics.ideal 'store'.*store.enabled: false"):
        config_from_dict(_config(**{"metrics.ideal": "store", "store.enabled": False}))


def test_judge_context_changes_with_what_judges_alike():
    base = judge_context("judge", "annotate-v2", SCALE, "text", ("g", "guideline-v2"), None)
    assert base == judge_context("judge", "annotate-v2", SCALE, "text", ("g", "guideline-v2"), None)
    others = [
        judge_context("judge-2", "annotate-v2", SCALE, "text", ("g", "guideline-v2"), None),
        judge_context("judge", "annotate-v3", SCALE, "text", ("g", "guideline-v2"), None),
        judge_context("judge", "annotate-v2", SCALE[:1], "text", ("g", "guideline-v2"), None),
        judge_context("judge", "annotate-v2", SCALE, "direct", ("g", "guideline-v2"), None),
        judge_context("judge", "annotate-v2", SCALE, "text", ("g2", "guideline-v2"), None),
        judge_context("judge", "annotate-v2", SCALE, "text", None, None),
        judge_context("judge", "annotate-v2", SCALE, "caption", ("g", "guideline-v2"), ("vision", "caption-v1")),
    ]
    assert len({base, *others}) == len(others) + 1
    # A run's context: the same config gives the same context; another judge model another one.
    config = config_from_dict(_config())
    assert run_judge_context(config) == run_judge_context(config_from_dict(_config()))
    other = _config()
    other["llm"]["annotate"]["model"] = "judge-2"
    assert run_judge_context(config) != run_judge_context(config_from_dict(other))


def test_label_records_carry_query_key_and_context_and_hits_keep_their_own():
    pairs = pa.table({"query": ["Red  Shoes", "TV"]})
    keyed = add_judge_context(pairs, "ctx")
    assert keyed.column("query_key").to_pylist() == [normalize_query("Red  Shoes"), "tv"] == ["red shoes", "tv"]
    assert keyed.column("judge_context").to_pylist() == ["ctx", "ctx"]
    assert {"query_key", "judge_context"} <= set(LABEL_SPEC.stored) & set(LABEL_SPEC.output)
    assert set(output_schema(LABEL_SPEC).names) == set(LABEL_SPEC.output)
    # A hit found in a record stored before records carried the context (null) keeps the row's own.
    n = keyed.num_rows
    looked = keyed.append_column("product_id", pa.array(["p1", "p2"]))
    for name, dtype in LABEL_SPEC.stored.items():
        if name not in ("query_key", "judge_context"):
            looked = looked.append_column(STORED_PREFIX + name, pa.array([None] * n, dtype))
    looked = looked.append_column(STORED_PREFIX + "query_key", pa.nulls(n, pa.string()))
    looked = looked.append_column(STORED_PREFIX + "judge_context", pa.nulls(n, pa.string()))
    hits = hits_as_output(looked, LABEL_SPEC.output, LABEL_SPEC.stored, LABEL_SPEC.carried)
    assert hits.column("judge_context").to_pylist() == ["ctx", "ctx"]
    assert hits.column("query_key").to_pylist() == ["red shoes", "tv"]


def _shard(store: LabelStore, run_id: str, rows: dict) -> None:
    publish_shard(pa.table(rows), store.folder("labels"), store.storage, run_id)


def test_records_for_reads_matching_records_and_tolerates_older_shards(tmp_path):
    store = LabelStore(str(tmp_path / "store"), Storage())
    assert store.records_for("labels", "query_key", ["tv"], ["product_id", "grade"]).num_rows == 0  # no store yet
    # An older shard: no query_key, no judge_context.
    _shard(store, "old", {"label_key": ["k0"], "query": ["tv"], "product_id": ["p0"],
                          "grade": pa.array([2], pa.int16())})
    assert store.records_for("labels", "query_key", ["tv"], ["product_id"]).num_rows == 0  # nothing carries it yet
    _shard(store, "new", {"label_key": ["k1", "k2", "k3"], "query": ["TV", "tv", "radio"],
                          "product_id": ["p1", "p2", "p3"], "grade": pa.array([1, 0, 2], pa.int16()),
                          "query_key": ["tv", "tv", "radio"], "judge_context": ["ctx", "other", "ctx"]})
    found = pl.from_arrow(store.records_for("labels", "query_key", ["tv"],
                                            ["query_key", "product_id", "grade", "judge_context", "missing"]))
    assert found.columns == ["query_key", "product_id", "grade", "judge_context", "missing"]
    assert sorted(found["product_id"].to_list()) == ["p1", "p2"]  # the old record (no query_key) does not match
    assert found["missing"].null_count() == 2
    assert store.records_for("labels", "query_key", [], ["product_id"]).num_rows == 0


def test_store_pool_takes_the_runs_context_and_one_grade_per_product():
    queries = pl.DataFrame({"query": ["TV", "tv", "radio"], "query_key": ["tv", "tv", "radio"]})
    records = pl.DataFrame({
        "query_key": ["tv", "tv", "tv", "tv", "radio", "radio"],
        "product_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
        "grade": [1, 2, 0, 2, 1, None],
        "judge_context": ["ctx", "ctx", "ctx", "other", "ctx", "ctx"],
    })
    pool = store_pool(queries, records, "ctx")
    assert pool.rows() == [("TV", "p1", 2), ("TV", "p2", 0), ("radio", "p4", 1), ("tv", "p1", 2), ("tv", "p2", 0)]
    # Records without a context (stored before records carried it) count for nothing.
    assert store_pool(queries, records.with_columns(pl.lit(None, pl.String).alias("judge_context")), "ctx").height == 0


def test_with_stored_labels_keeps_the_runs_outcome():
    labels = pl.DataFrame({"query": ["q", "q"], "product_id": ["a", "b"], "grade": [1, None]})
    stored = pl.DataFrame({"query": ["q", "q", "q"], "product_id": ["a", "b", "c"], "grade": [2, 2, 2]})
    merged = with_stored_labels(labels, stored).sort("product_id")
    assert merged["product_id"].to_list() == ["a", "b", "c"]
    assert merged["grade"].to_list()[0] == 1.0 and merged["grade"].is_null().to_list()[1]
    assert merged["grade"].to_list()[2] == 2.0


def _group(rows: list[tuple]) -> pa.Table:
    names = _GRADED.names
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)}, schema=_GRADED)


def _value(table: pa.Table, ranker: str, metric: str, k: int) -> float:
    frame = pl.from_arrow(table)
    return frame.filter((pl.col("ranker") == ranker) & (pl.col("metric") == metric) & (pl.col("k") == k))["value"][0]


def test_per_query_metrics_with_stored_labels_in_the_ideal_pool():
    # Ranked rows (no grade) and the run's label rows (no ranker, no rank).
    ranked = [("A", "q", 1, "a", None), ("A", "q", 2, "b", None), ("B", "q", 1, "b", None), ("B", "q", 2, "a", None),
              (None, "q", None, "a", 1), (None, "q", None, "b", 0)]
    run_only = per_query_metrics(_group(ranked), ks=[2], top_grade=2)
    assert _value(run_only, "A", "ndcg", 2) == pytest.approx(1.0)  # the run's pool: a (1), b (0)
    # Stored labels (ranker STORED_ROWS): c (2) was judged by an earlier run; a's stored grade loses to the run's.
    stored = [(STORED_ROWS, "q", None, "c", 2), (STORED_ROWS, "q", None, "a", 2)]
    with_store = per_query_metrics(_group(ranked + stored), ks=[2], top_grade=2)
    ideal = (2**2 - 1) / log2(2) + (2**1 - 1) / log2(3)
    assert _value(with_store, "A", "ndcg", 2) == pytest.approx(1.0 / ideal)
    assert _value(with_store, "B", "ndcg", 2) == pytest.approx((1 / log2(3)) / ideal)
    assert set(pl.from_arrow(with_store)["ranker"].to_list()) == {"A", "B"}  # stored rows are no ranking
    # Coverage does not depend on the pool: judged@2 is 1 for both.
    assert _value(with_store, "A", "judged", 2) == 1.0 == _value(run_only, "B", "judged", 2)
