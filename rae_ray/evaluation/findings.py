"""Findings on the per-query scores: segments, the worst queries and the largest regressions, with the products
behind each and the judge's reasoning."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from rae_ray.evaluation.sources import RUN_SCHEMA, conform
from rae_ray.metrics.evaluate import require_columns, traffic_segments, worst_queries

__all__ = [
    "REGRESSION_SCHEMA",
    "WORST_SCHEMA",
    "finding_evidence",
    "locale_segments",
    "problem_queries",
    "regression_pairs",
    "regression_queries",
    "regressions",
    "segments_from_log",
    "top_k",
]

WORST_SCHEMA = {
    "ranker": pl.String, "position": pl.Int64, "query": pl.String, "k": pl.Int32,
    "share_irrelevant": pl.Float64, "ndcg": pl.Float64, "rank": pl.Int64, "product_id": pl.String,
    "title": pl.String, "grade": pl.Int64, "label": pl.String, "reasoning": pl.String, "error": pl.String,
}  # fmt: skip
REGRESSION_SCHEMA = {
    "ranker": pl.String, "baseline": pl.String, "position": pl.Int64, "query": pl.String, "metric": pl.String,
    "k": pl.Int32, "value": pl.Float64, "baseline_value": pl.Float64, "delta": pl.Float64, "change": pl.String,
    "product_id": pl.String, "title": pl.String, "rank": pl.Int64, "baseline_rank": pl.Int64, "grade": pl.Int64,
    "label": pl.String, "reasoning": pl.String, "error": pl.String,
}  # fmt: skip
CHANGE_ORDER = {"added_irrelevant": 0, "promoted_irrelevant": 1, "dropped_relevant": 2, "reordered": 3}


# --- segments -----------------------------------------------------------------------------------------------


def locale_segments(query_locales: pl.DataFrame) -> pl.DataFrame:
    """(query, locale) rows -> segment rows (query, "locale", locale); a query in several locales is in each."""
    require_columns(query_locales, "query_locales", ("query", "locale"))
    return query_locales.select(
        pl.col("query").cast(pl.String), pl.lit("locale").alias("segment_type"), pl.col("locale").cast(pl.String).alias("segment")
    ).drop_nulls().unique().sort("segment", "query")


def segments_from_log(log: pl.DataFrame, head: float = 0.2, torso: float = 0.3) -> pl.DataFrame | None:
    """Traffic segments from `query_count` and locale segments from `locale`, where the log has them."""
    parts = []
    if "query_count" in log.columns:
        counts = log.group_by(pl.col("query").cast(pl.String)).agg(pl.col("query_count").max())
        parts.append(traffic_segments(counts, head, torso))
    if "locale" in log.columns:
        parts.append(locale_segments(log.select("query", "locale")))
    return pl.concat(parts) if parts else None


# --- worst queries and regressions --------------------------------------------------------------------------


def _irrelevant(grade: pl.Expr) -> pl.Expr:
    """Grade 0, or no grade (gain 0 in every metric)."""
    return grade.is_null() | (grade <= 0)


def top_k(ranked: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each ranking sorted by rank (ties by product_id) and renumbered 1..n, cut at k (as the metrics see it)."""
    return (
        ranked.select(pl.col(name).cast(dtype) for name, dtype in RUN_SCHEMA.items())
        .sort("ranker", "query", "rank", "product_id")
        .with_columns((pl.int_range(pl.len()).over("ranker", "query") + 1).cast(pl.Int64).alias("rank"))
        .filter(pl.col("rank") <= k)
    )


def problem_queries(
    query_metrics: pl.DataFrame, ranked: pl.DataFrame, labels: pl.DataFrame, k: int, n: int
) -> pl.DataFrame:
    """The n worst queries per ranker by share irrelevant@k (ties: lower nDCG@k first), with their offending
    products: the top-k products judged irrelevant or left without a grade. A worst query whose top k has no
    such product keeps one row with null product columns. Columns: WORST_SCHEMA."""
    worst = worst_queries(query_metrics, "share_irrelevant", k, n, tie_metric="ndcg")
    if worst.height == 0:
        return pl.DataFrame(schema=WORST_SCHEMA)
    ndcg = query_metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == k)).select(
        "ranker", "query", pl.col("value").alias("ndcg")
    )
    top = top_k(ranked, k).join(worst.select("ranker", "query"), on=["ranker", "query"], how="semi")
    offending = top.join(labels, on=["query", "product_id"], how="left").filter(_irrelevant(pl.col("grade")))
    table = (
        worst.select("ranker", "position", "query", "k", pl.col("value").alias("share_irrelevant"))
        .join(ndcg, on=["ranker", "query"], how="left")
        .join(offending, on=["ranker", "query"], how="left")
        .sort("ranker", "position", "rank", nulls_last=True)
    )
    return conform(table, WORST_SCHEMA)


def regression_pairs(rankers: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """(ranker, against): every other ranker against the baseline, or without one every ordered pair."""
    rankers = sorted(rankers)
    if baseline is not None:
        return [(r, baseline) for r in rankers if r != baseline]
    return [(a, b) for a in rankers for b in rankers if a != b]


def regression_queries(
    query_metrics: pl.DataFrame, pairs: Sequence[tuple[str, str]], k: int, n: int, metric: str = "ndcg"
) -> pl.DataFrame:
    """Per (ranker, baseline) the n queries where metric@k drops most (delta = ranker - baseline < 0)."""
    at_k = query_metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k)).select("ranker", "query", "value")
    parts = []
    for ranker, baseline in pairs:
        mine = at_k.filter(pl.col("ranker") == ranker)
        theirs = at_k.filter(pl.col("ranker") == baseline).select("query", pl.col("value").alias("baseline_value"))
        parts.append(
            mine.join(theirs, on="query", how="inner")
            .with_columns(pl.lit(baseline).alias("baseline"), (pl.col("value") - pl.col("baseline_value")).alias("delta"))
            .filter(pl.col("delta") < -1e-12)
            .sort("delta", "query")
            .head(n)
            .with_columns((pl.int_range(pl.len()) + 1).cast(pl.Int64).alias("position"))
        )
    schema = {"ranker": pl.String, "baseline": pl.String, "position": pl.Int64, "query": pl.String,
              "value": pl.Float64, "baseline_value": pl.Float64, "delta": pl.Float64}  # fmt: skip
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat([p.select(list(schema)) for p in parts]).with_columns(
        pl.lit(metric).alias("metric"), pl.lit(k, dtype=pl.Int32).alias("k")
    )


def regressions(
    query_metrics: pl.DataFrame, ranked: pl.DataFrame, labels: pl.DataFrame, pairs: Sequence[tuple[str, str]],
    k: int, n: int,
) -> pl.DataFrame:
    """The largest per-query nDCG@k regressions of each ranker against its baseline, with the products behind them.

    `change` says what a product did: added_irrelevant (in the ranker's top k, not the baseline's, grade 0 or
    none), promoted_irrelevant (in both, ranked higher by the ranker), dropped_relevant (grade >= 1 in the
    baseline's top k, missing from the ranker's). A regression from reordering relevant products alone keeps
    one row with change "reordered" and no product. Columns: REGRESSION_SCHEMA.
    """
    worst = regression_queries(query_metrics, pairs, k, n)
    if worst.height == 0:
        return pl.DataFrame(schema=REGRESSION_SCHEMA)
    top = top_k(ranked, k)
    keys = worst.select("ranker", "baseline", "query")
    mine = keys.join(top.select("ranker", "query", "product_id", "rank"), on=["ranker", "query"], how="inner")
    theirs = keys.join(
        top.select(pl.col("ranker").alias("baseline"), "query", "product_id", pl.col("rank").alias("baseline_rank")),
        on=["baseline", "query"], how="inner",
    )
    products = mine.join(
        theirs, on=["ranker", "baseline", "query", "product_id"], how="full", coalesce=True
    ).join(labels, on=["query", "product_id"], how="left")
    irrelevant = _irrelevant(pl.col("grade"))
    change = (
        pl.when(pl.col("baseline_rank").is_null() & irrelevant).then(pl.lit("added_irrelevant"))
        .when(pl.col("rank").is_not_null() & (pl.col("rank") < pl.col("baseline_rank")) & irrelevant)
        .then(pl.lit("promoted_irrelevant"))
        .when(pl.col("rank").is_null() & ~irrelevant).then(pl.lit("dropped_relevant"))
        .otherwise(None)
    )
    products = products.with_columns(change.alias("change")).filter(pl.col("change").is_not_null())
    table = worst.join(products, on=["ranker", "baseline", "query"], how="left").with_columns(
        pl.col("change").fill_null("reordered"),
    )
    table = table.with_columns(pl.col("change").replace_strict(CHANGE_ORDER, return_dtype=pl.Int64).alias("_order"))
    table = table.sort("ranker", "baseline", "position", "_order", "rank", "baseline_rank", nulls_last=True)
    return conform(table, REGRESSION_SCHEMA)


def finding_evidence(
    ranked: pl.DataFrame, worst_keys: pl.DataFrame, regression_keys: pl.DataFrame, k: int
) -> pl.DataFrame:
    """(query, product_id) of the products a finding rests on: the top k of the worst queries and of both sides
    of a regression."""
    keys = pl.concat([
        worst_keys.select("ranker", "query"),
        regression_keys.select("ranker", "query"),
        regression_keys.select(pl.col("baseline").alias("ranker"), "query"),
    ]).unique()
    return top_k(ranked, k).join(keys, on=["ranker", "query"], how="semi").select("query", "product_id").unique()
