"""The labels nDCG's ideal DCG is built from (`metrics.ideal`): this run's, or also the label store's.

With `run` the ideal pool of a query is what this run judged for it, so a ranker's nDCG moves when another ranker
joins the run. With `store` it is every label of the query under the same judging context, whichever run paid
for it, so two runs that share a store and a judge score a ranker against the same ideal.
"""

from __future__ import annotations

import polars as pl

from rae_ray.metrics.evaluate import require_columns

__all__ = ["STORED_POOL_SCHEMA", "store_pool", "with_stored_labels"]

STORED_POOL_SCHEMA = {"query": pl.String, "product_id": pl.String, "grade": pl.Int16}


def store_pool(queries: pl.DataFrame, records: pl.DataFrame, context: str) -> pl.DataFrame:
    """One stored grade per (query, product) of the run's queries: query, product_id, grade.

    `queries`: the run's query and query_key (normalized) pairs; `records`: label store records (query_key,
    product_id, grade, judge_context). Only records of `context` count (older records without one do not); a
    product stored several times under it (its content changed between runs) keeps its highest grade.
    """
    require_columns(queries, "queries", ("query", "query_key"))
    require_columns(records, "records", ("query_key", "product_id", "grade", "judge_context"))
    matching = records.select(
        pl.col("query_key").cast(pl.String), pl.col("product_id").cast(pl.String), pl.col("grade").cast(pl.Int16),
        pl.col("judge_context").cast(pl.String),
    ).filter((pl.col("judge_context") == context) & pl.col("grade").is_not_null()).drop("judge_context")
    return (
        queries.select(pl.col("query").cast(pl.String), pl.col("query_key").cast(pl.String)).unique()
        .join(matching, on="query_key", how="inner")
        .group_by("query", "product_id").agg(pl.col("grade").max())
        .sort("query", "product_id")
        .select(pl.col(name).cast(dtype) for name, dtype in STORED_POOL_SCHEMA.items())
    )


def with_stored_labels(labels: pl.DataFrame, stored: pl.DataFrame) -> pl.DataFrame:
    """The run's labels (query, product_id, grade) plus the stored grades of products the run did not judge.

    A product the run judged keeps the run's outcome, failed or not, so a ranking and its ideal agree on it.
    """
    require_columns(labels, "labels", ("query", "product_id", "grade"))
    require_columns(stored, "stored", ("query", "product_id", "grade"))
    labels = labels.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String),
                           pl.col("grade").cast(pl.Float64))
    extra = stored.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String),
                          pl.col("grade").cast(pl.Float64)).join(labels, on=["query", "product_id"], how="anti")
    return pl.concat([labels, extra])
