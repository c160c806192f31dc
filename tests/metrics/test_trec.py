"""TREC export: the files read back into ir_measures give our figures."""

import ir_measures
import polars as pl
import pytest

from rae_ray.metrics.trec import query_id, write_qrels, write_run


def test_write_qrels_and_run_small(tmp_path):
    labels = pl.DataFrame(
        {
            "query": ["red shoes", "red shoes", "tv", "tv"],
            "product_id": ["p2", "p1", "t1", "t2"],
            "grade": [2, 0, None, 1],
        }
    )
    mapping = write_qrels(labels, tmp_path / "qrels.txt", gains={0: 0, 1: 1, 2: 3})
    assert (tmp_path / "qrels.txt").read_text().splitlines() == [
        f"{query_id('red shoes')} 0 p1 0",
        f"{query_id('red shoes')} 0 p2 3",
        f"{query_id('tv')} 0 t2 1",
    ]
    assert pl.read_parquet(tmp_path / "qrels.queries.parquet").equals(mapping)
    assert mapping.rows() == [(query_id("red shoes"), "red shoes"), (query_id("tv"), "tv")]

    run = pl.DataFrame(
        {
            "ranker": ["bm25 v1", "bm25 v1", "bm25 v1", "other"],
            "query": ["red shoes", "red shoes", "tv", "tv"],
            "rank": [7, 3, 1, 1],
            "product_id": ["p1", "p2", "t1", "t9"],
        }
    )
    write_run(run, tmp_path / "run.txt", ranker="bm25 v1")
    assert (tmp_path / "run.txt").read_text().splitlines() == [
        f"{query_id('red shoes')} Q0 p2 1 2 bm25_v1",
        f"{query_id('red shoes')} Q0 p1 2 1 bm25_v1",
        f"{query_id('tv')} Q0 t1 1 1 bm25_v1",
    ]
    with pytest.raises(ValueError, match="no rows"):
        write_run(run, tmp_path / "none.txt", ranker="missing")
    # Whitespace (and "%") in a product id is percent-encoded, the same way in qrels and runs.
    write_qrels(labels.head(1).with_columns(pl.lit("SKU 1\t50%").alias("product_id")), tmp_path / "spaces.txt")
    assert (tmp_path / "spaces.txt").read_text().split() == [query_id("red shoes"), "0", "SKU%201%0950%25", "2"]
    write_run(run.head(1).with_columns(pl.lit("SKU 1\t50%").alias("product_id")), tmp_path / "spaces.run", "bm25 v1")
    assert (tmp_path / "spaces.run").read_text().split()[2] == "SKU%201%0950%25"
    with pytest.raises(ValueError, match="empty"):
        write_qrels(labels.with_columns(pl.lit("").alias("product_id")), tmp_path / "bad.txt")


def test_query_id_is_stable():
    assert query_id("laptop") == query_id("laptop") and query_id("laptop") != query_id("laptops")
    assert query_id("laptop").startswith("q") and len(query_id("laptop")) == 17


def test_chorus_files_through_ir_measures(tmp_path, chorus_log, chorus_labels, chorus_query_metrics):
    write_qrels(chorus_labels, tmp_path / "qrels.txt", gains={0: 0, 1: 1, 2: 3})  # trec_eval gain = relevance
    qrels = list(ir_measures.read_trec_qrels(str(tmp_path / "qrels.txt")))
    ndcg10 = ir_measures.nDCG @ 10
    for ranker in ("random-v0", "bm25-v1", "tuned-v2"):
        write_run(chorus_log, tmp_path / f"{ranker}.run", ranker)
        run = list(ir_measures.read_trec_run(str(tmp_path / f"{ranker}.run")))
        theirs = ir_measures.calc_aggregate([ndcg10], qrels, run)[ndcg10]
        ours = chorus_query_metrics.filter(
            (pl.col("ranker") == ranker) & (pl.col("metric") == "ndcg") & (pl.col("k") == 10)
        )["value"].mean()
        assert ours == pytest.approx(theirs, abs=1e-12)
