"""Running the metrics over logs and labels: per query, per ranker, per segment; chorus reference figures."""

import math

import ir_measures
import numpy as np
import polars as pl
import pytest

from rae_ray.metrics.evaluate import (
    QUERY_METRICS_SCHEMA,
    bootstrap_counts,
    query_metrics,
    ranker_metrics,
    ranker_order,
    segment_metrics,
    traffic_segments,
    worst_queries,
)

log2 = math.log2


def small_run():
    return pl.DataFrame(
        {
            "ranker": ["a", "a", "a", "b", "b", "a"],
            "query": ["red shoes", "red shoes", "red shoes", "red shoes", "red shoes", "no labels"],
            "rank": [1, 5, 2, 1, 2, 1],  # a has a gap at 3-4 and is given out of order
            "product_id": ["p1", "p3", "p2", "p2", "p4", "x"],
        }
    )


def small_labels():
    return pl.DataFrame(
        {
            "query": ["red shoes"] * 5 + ["no labels"],
            "product_id": ["p1", "p2", "p3", "p4", "p5", "x"],
            "grade": [2, 0, 1, None, 2, None],
        }
    )


def value(table, ranker, metric, k):
    rows = table.filter((pl.col("ranker") == ranker) & (pl.col("metric") == metric) & (pl.col("k") == k))
    assert rows.height == 1, rows
    return rows["value"][0]


def test_query_metrics_small_example():
    table = query_metrics(small_run(), small_labels(), ks=(2, 3))
    assert table.schema == pl.Schema(QUERY_METRICS_SCHEMA)
    assert set(table["query"]) == {"red shoes"}  # a query without any label is left out
    ideal3 = 3 / log2(2) + 3 / log2(3) + 1 / log2(4)  # pool p1, p5 (2), p3 (1); p4 unlabelled
    # ranker a by position: p1 (2), p2 (0), p3 (1)
    assert value(table, "a", "ndcg", 3) == pytest.approx((3 / log2(2) + 0 + 1 / log2(4)) / ideal3)
    assert value(table, "a", "precision", 3) == pytest.approx(2 / 3)
    assert value(table, "a", "precision_top", 3) == pytest.approx(1 / 3)
    assert value(table, "a", "share_irrelevant", 2) == pytest.approx(1 / 2)
    assert value(table, "a", "mean_grade", 3) == pytest.approx((2 + 0 + 1) / 3)
    # ranker b: p2 (0), p4 (unlabelled)
    assert value(table, "b", "ndcg", 2) == 0.0
    assert value(table, "b", "precision", 3) == pytest.approx(0 / 3)
    assert value(table, "b", "share_irrelevant", 2) == pytest.approx(1 / 1)
    assert value(table, "b", "mean_grade", 2) == pytest.approx(0 / 1)


def test_undefined_scores_are_left_out():
    run = pl.DataFrame({"ranker": ["a"], "query": ["q"], "rank": [1], "product_id": ["unjudged"]})
    labels = pl.DataFrame({"query": ["q"], "product_id": ["p"], "grade": [2]})
    table = query_metrics(run, labels, ks=(5,))
    assert sorted(table["metric"]) == ["judged", "ndcg", "precision", "precision_top"]  # judged: 0 of 1 labelled
    assert table["value"].to_list() == [0.0, 0.0, 0.0, 0.0]


def test_query_metrics_subset_of_metrics_and_empty_run():
    table = query_metrics(small_run(), small_labels(), ks=(10,), metrics=["ndcg"])
    assert set(table["metric"]) == {"ndcg"} and table.height == 2
    empty = query_metrics(small_run().clear(), small_labels())
    assert empty.height == 0 and empty.schema == pl.Schema(QUERY_METRICS_SCHEMA)


def test_query_metrics_input_errors():
    with pytest.raises(ValueError, match="product_id"):
        query_metrics(small_run().drop("product_id"), small_labels())
    with pytest.raises(ValueError, match="grade"):
        query_metrics(small_run(), small_labels().drop("grade"))
    with pytest.raises(ValueError, match="unknown metric"):
        query_metrics(small_run(), small_labels(), metrics=["mrr"])
    with pytest.raises(ValueError, match="null values"):
        query_metrics(small_run().with_columns(pl.lit(None, pl.Int64).alias("rank")), small_labels())
    with pytest.raises(ValueError, match="duplicated"):
        query_metrics(small_run(), pl.concat([small_labels(), small_labels()]))


def test_query_metrics_is_per_query_so_subsets_add_up(chorus_log, chorus_labels, chorus_query_metrics):
    queries = sorted(chorus_log["query"].unique())
    parts = [
        query_metrics(chorus_log.filter(pl.col("query").is_in(part)), chorus_labels.filter(pl.col("query").is_in(part)))
        for part in (queries[::2], queries[1::2])
    ]
    keys = ["ranker", "query", "metric", "k"]
    assert pl.concat(parts).sort(keys).equals(chorus_query_metrics.sort(keys))


README_TABLE = {  # copied from /work/shared/data/chorus/README.md: nDCG@10, P@10
    "random-v0": (0.5413, 0.4533),
    "bm25-v1": (0.7195, 0.5496),
    "tuned-v2": (0.8476, 0.6030),
}


def test_chorus_reproduces_readme_table(chorus_query_metrics):
    means = chorus_query_metrics.group_by("ranker", "metric", "k").agg(pl.col("value").mean(), pl.len())
    for ranker, (ndcg10, p10) in README_TABLE.items():
        assert round(value(means, ranker, "ndcg", 10), 4) == ndcg10
        assert round(value(means, ranker, "precision", 10), 4) == p10
    assert set(means["len"]) == {135}


def test_chorus_ndcg_matches_ir_measures(chorus_log, chorus_labels, chorus_query_metrics):
    # ir_measures' nDCG (pytrec_eval) uses the qrels relevance as gain and builds the ideal from the qrels:
    # nDCG(gains={0: 0, 1: 1, 2: 3}) makes the gain 2**g - 1. Scores = -rank keep the log's order.
    qrels = [ir_measures.Qrel(q, d, int(g)) for q, d, g in chorus_labels.drop_nulls("grade").iter_rows()]
    measures = [ir_measures.nDCG(gains={0: 0, 1: 1, 2: 3}) @ 10, ir_measures.P(rel=1) @ 10]
    for ranker in README_TABLE:
        run = [
            ir_measures.ScoredDoc(q, d, -float(r))
            for q, r, d in chorus_log.filter(ranker=ranker).select("query", "rank", "product_id").iter_rows()
        ]
        theirs = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(measures, qrels, run)}
        ours = chorus_query_metrics.filter((pl.col("ranker") == ranker) & (pl.col("k") == 10))
        for name, measure in (("ndcg", measures[0]), ("precision", measures[1])):
            rows = ours.filter(pl.col("metric") == name)
            assert rows.height == 135
            for query, score in rows.select("query", "value").iter_rows():
                assert score == pytest.approx(theirs[(query, str(measure))], abs=1e-9)


def test_ranker_metrics_mean_and_bootstrap(chorus_query_metrics):
    table = ranker_metrics(chorus_query_metrics, n_bootstrap=500, seed=7)
    assert table.columns == ["ranker", "metric", "k", "value", "ci_low", "ci_high", "n_queries"]
    row = table.filter((pl.col("ranker") == "tuned-v2") & (pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    assert round(row["value"][0], 4) == 0.8476 and row["n_queries"][0] == 135
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert table.equals(ranker_metrics(chorus_query_metrics, n_bootstrap=500, seed=7))  # seeded
    one_ranker = ranker_metrics(chorus_query_metrics.filter(pl.col("ranker") == "tuned-v2"), n_bootstrap=500, seed=7)
    assert one_ranker.equals(table.filter(pl.col("ranker") == "tuned-v2"))  # independent of other rows


def test_ranker_metrics_bootstrap_formula():
    values = [0.0, 1.0, 0.5, 0.25]
    qm = pl.DataFrame(
        {"ranker": ["a"] * 4, "query": list("wxyz"), "metric": ["ndcg"] * 4, "k": [10] * 4, "value": values},
        schema=QUERY_METRICS_SCHEMA,
    )
    table = ranker_metrics(qm, n_bootstrap=4000, confidence=0.9)
    assert table["value"][0] == pytest.approx(np.mean(values))
    # the bootstrap distribution of the mean has sd ~ population sd / sqrt(n)
    half_width = 1.645 * np.std(values) / math.sqrt(len(values))
    assert table["ci_low"][0] == pytest.approx(np.mean(values) - half_width, abs=0.05)
    assert table["ci_high"][0] == pytest.approx(np.mean(values) + half_width, abs=0.05)
    no_ci = ranker_metrics(qm, n_bootstrap=0)
    assert no_ci["ci_low"][0] is None and no_ci["n_queries"][0] == 4


def test_traffic_segments_rule():
    counts = pl.DataFrame({"query": [f"q{i:02d}" for i in range(10)], "query_count": [5, 9, 9, 1, 1, 1, 7, 2, 3, 4]})
    segments = traffic_segments(counts, head=0.2, torso=0.3)
    # sorted by count desc, ties by text: q01 q02 | q06 q00 q09 | q08 q07 q03 q04 q05
    expected = {"q01": "head", "q02": "head", "q06": "torso", "q00": "torso", "q09": "torso"}
    got = dict(segments.select("query", "segment").iter_rows())
    assert got == {q: expected.get(q, "tail") for q in counts["query"]}
    assert set(segments["segment_type"]) == {"traffic"}


def test_traffic_segments_on_a_log(chorus_log):
    segments = traffic_segments(chorus_log.select("query", "query_count"))
    sizes = dict(segments.group_by("segment").len().iter_rows())
    n = 135  # head: 0.2 * n = 27 exactly (no float rounding up to 28); torso: ceil(0.5 * n) - 27 = 41
    assert sizes == {"head": 27, "torso": math.ceil(0.5 * n) - 27, "tail": n - math.ceil(0.5 * n)}
    with pytest.raises(ValueError, match="several counts"):
        traffic_segments(pl.DataFrame({"query": ["a", "a"], "query_count": [1, 2]}))


def test_segment_metrics(chorus_query_metrics, chorus_log):
    segments = pl.concat(
        [
            traffic_segments(chorus_log.select("query", "query_count")),
            pl.DataFrame({"query": ["laptop", "aa"], "segment_type": ["topic", "topic"], "segment": ["it", "power"]}),
        ]
    )
    table = segment_metrics(chorus_query_metrics, segments)
    assert table.columns == ["ranker", "segment_type", "segment", "metric", "k", "value", "n_queries"]
    head = segments.filter(pl.col("segment") == "head")["query"]
    expected = chorus_query_metrics.filter(pl.col("query").is_in(head.to_list()), ranker="bm25-v1", metric="ndcg", k=10)
    row = table.filter(ranker="bm25-v1", segment="head", metric="ndcg", k=10)
    assert row["value"][0] == pytest.approx(expected["value"].mean()) and row["n_queries"][0] == head.len()
    topic = table.filter(pl.col("segment_type") == "topic")
    assert set(topic["n_queries"]) == {1}


def test_worst_queries(chorus_query_metrics):
    worst = worst_queries(chorus_query_metrics, metric="share_irrelevant", k=10, n=5)
    assert worst.columns == ["ranker", "position", "query", "metric", "k", "value"]
    for ranker, rows in worst.group_by("ranker"):
        assert rows["position"].to_list() == [1, 2, 3, 4, 5]
        everything = chorus_query_metrics.filter(
            (pl.col("ranker") == ranker[0]) & (pl.col("metric") == "share_irrelevant") & (pl.col("k") == 10)
        )
        assert rows["value"][0] == everything["value"].max()  # lower is better: worst = highest
    best_is_low = worst_queries(chorus_query_metrics, metric="ndcg", k=10, n=3)
    ndcg10 = chorus_query_metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10))
    for ranker in README_TABLE:
        rows = best_is_low.filter(pl.col("ranker") == ranker).sort("position")
        assert rows["value"][0] == ndcg10.filter(pl.col("ranker") == ranker)["value"].min()
        assert rows["value"].is_sorted()


def test_ranker_order_best_first():
    rows = [("b", "ndcg", 0.7), ("a", "ndcg", 0.7), ("c", "ndcg", 0.9), ("d", "precision", 0.5),
            ("a", "share_irrelevant", 0.4), ("c", "share_irrelevant", 0.1), ("b", "share_irrelevant", 0.2)]  # fmt: skip
    table = pl.DataFrame([(r, m, 10, v) for r, m, v in rows], schema=["ranker", "metric", "k", "value"], orient="row")
    assert ranker_order(table, 10) == ["c", "a", "b", "d"]  # ties by name; no nDCG@10: last
    assert ranker_order(table, 10, "share_irrelevant") == ["c", "b", "a", "d"]  # lower is better
    assert ranker_order(table, 5) == ["a", "b", "c", "d"]  # nothing at k: by name


def test_bootstrap_counts_are_resamples_with_replacement():
    chunks = list(bootstrap_counts(5, 7, np.random.default_rng(0), chunk=10))  # 10 entries: 2 resamples at a time
    assert [c.shape for c in chunks] == [(2, 5), (2, 5), (2, 5), (1, 5)]
    assert (np.vstack(chunks).sum(axis=1) == 5).all()  # each resample draws n rows
    draws = np.random.default_rng(0).integers(0, 5, size=(2, 5))  # the same generator's first draws
    assert np.array_equal(chunks[0], np.stack([np.bincount(d, minlength=5) for d in draws]))
