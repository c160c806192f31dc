"""Where ranked lists and judge labels come from: the `EvaluationSource` protocol and its in-memory `FrameSource`.

The evaluation asks a source only for the queries and pairs a table needs, so a Ray-backed source (the job's)
never hands the whole log to the driver.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import polars as pl

from rae_ray.metrics.evaluate import require_columns
from rae_ray.metrics.trec import qrels_lines, run_text

__all__ = [
    "LABEL_SCHEMA",
    "QRELS",
    "RUN",
    "RUN_SCHEMA",
    "EvaluationSource",
    "FrameSource",
    "conform",
    "conform_labels",
    "empty_labels",
    "least_confident",
    "votes_as_text",
]

RUN_SCHEMA = {"ranker": pl.String, "query": pl.String, "rank": pl.Int64, "product_id": pl.String}
LABEL_SCHEMA = {
    "query": pl.String,
    "product_id": pl.String,
    "grade": pl.Int64,
    "label": pl.String,
    "reasoning": pl.String,
    "error": pl.String,
}
# Carried through when the source has them: the product's title and content hash (the review queue shows them),
# `source` (llm, or human: a person's grade from review import, left out of judge-vs-human agreement), and with
# votes the label's confidence and its votes as text ("model#sample=grade ...", "failed" for a vote without a grade).
OPTIONAL_LABEL_COLUMNS = {"title": pl.String, "product_hash": pl.String, "source": pl.String,
                          "confidence": pl.Float64, "votes": pl.String}
QRELS, RUN = "qrels", "run:"  # the file keys of `trec_chunks`: "qrels", or "run:" + a ranker's name


class EvaluationSource(Protocol):
    """Ranked lists and judge labels, asked for by query or by pair (a Ray-backed source filters its datasets).

    Label frames have LABEL_SCHEMA's columns (query, product_id, grade, label, reasoning, error; grade null when
    the judge gave none) and may add `title`, `product_hash` and `source`.
    """

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        """ranker, query, rank, product_id of those queries only."""
        ...

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        """Judge labels of every pair of those queries."""
        ...

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Judge labels of the given (query, product_id) pairs (pairs the judge never saw are absent)."""
        ...

    def failed_labels(self, limit: int) -> pl.DataFrame:
        """At most `limit` label rows whose error is set."""
        ...

    def trec_chunks(self, rankers: Sequence[str]) -> Iterator[tuple[str, str]]:
        """TREC text in pieces, each (file, lines): file QRELS (judge labels, relevance 2**g - 1) or RUN + a
        ranker's name (its run). A query's lines of one file come in one piece; pieces come in no set order."""
        ...


def conform(table: pl.DataFrame, schema: dict) -> pl.DataFrame:
    """The schema's columns in its order and types; a column the table lacks is null."""
    return table.select(
        (pl.col(name) if name in table.columns else pl.lit(None)).cast(dtype).alias(name) for name, dtype in schema.items()
    )


def conform_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """LABEL_SCHEMA columns (missing optional ones as null) plus the OPTIONAL_LABEL_COLUMNS present, one row per pair."""
    require_columns(labels, "labels", ("query", "product_id", "grade"))
    labels = votes_as_text(labels)
    columns = [
        (pl.col(name) if name in labels.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in {**LABEL_SCHEMA, **OPTIONAL_LABEL_COLUMNS}.items()
        if name in LABEL_SCHEMA or name in labels.columns
    ]
    return labels.select(columns).unique(subset=["query", "product_id"], keep="first", maintain_order=True)


def votes_as_text(labels: pl.DataFrame) -> pl.DataFrame:
    """A `votes` column of labels/ (list of {model, sample, grade}) as text: "model#sample=grade ..."."""
    if "votes" not in labels.columns or not isinstance(labels.schema["votes"], pl.List):
        return labels
    vote = pl.element().struct
    text = pl.format("{}#{}={}", vote.field("model"), vote.field("sample"),
                     vote.field("grade").cast(pl.String).fill_null("failed"))
    return labels.with_columns(pl.col("votes").list.eval(text).list.join(" ").alias("votes"))


def least_confident(labels: pl.DataFrame, limit: int) -> pl.DataFrame:
    """The `limit` labels of lowest confidence below 1 (votes disagreed), least confident first."""
    if "confidence" not in labels.columns:
        return labels.head(0)
    return labels.filter(pl.col("confidence") < 1).sort("confidence", maintain_order=True).head(limit)


def empty_labels() -> pl.DataFrame:
    return pl.DataFrame(schema=LABEL_SCHEMA)


class FrameSource:
    """An `EvaluationSource` over in-memory frames: run (ranker, query, rank, product_id) and labels.

    `products` (product_id, title), when given, supplies titles the labels lack.
    """

    def __init__(self, run: pl.DataFrame, labels: pl.DataFrame, products: pl.DataFrame | None = None):
        require_columns(run, "run", tuple(RUN_SCHEMA))
        self.run = run.select(pl.col(name).cast(dtype) for name, dtype in RUN_SCHEMA.items())
        labels = conform_labels(labels)
        if products is not None and "title" not in labels.columns:
            require_columns(products, "products", ("product_id", "title"))
            titles = products.select(pl.col("product_id").cast(pl.String), pl.col("title").cast(pl.String)).unique(
                subset=["product_id"], keep="first"
            )
            labels = labels.join(titles, on="product_id", how="left", maintain_order="left")
        self.labels = labels

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        return self.run.filter(pl.col("query").is_in(list(queries)))

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        return self.labels.filter(pl.col("query").is_in(list(queries)))

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        keys = pairs.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        return self.labels.join(keys, on=["query", "product_id"], how="semi", maintain_order="left")

    def failed_labels(self, limit: int) -> pl.DataFrame:
        return self.labels.filter(pl.col("error").is_not_null()).head(limit)

    def least_confident(self, limit: int) -> pl.DataFrame:
        return least_confident(self.labels, limit)

    def trec_chunks(self, rankers: Sequence[str], chunk: int = 10000) -> Iterator[tuple[str, str]]:
        queries = sorted(set(self.run["query"].to_list()))  # labels of queries no ranker answered are left out
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            yield QRELS, qrels_lines(self.labels_for(part))
            ranked = self.ranked_lists(part)
            present = set(ranked["ranker"].unique().to_list())
            for ranker in rankers:
                if ranker in present:
                    yield RUN + ranker, run_text(ranked, ranker)
