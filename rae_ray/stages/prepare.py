"""Stateless transforms from log rows to unique (query, product) pairs: row checks, selection, dedup, keys."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable

import polars as pl
import pyarrow as pa

from rae_ray.inputs import PRODUCT_COLUMNS

LOG_KEY_COLUMNS = ["query", "ranker", "rank", "product_id"]


def normalize_query(query: str) -> str:
    """Case-folded, NFKC, single-spaced: the form under which two queries are the same query."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def check_log_rows(batch: pa.Table) -> pa.Table:
    """Add `input_error`: why a log row cannot be evaluated (null if it can). Casts key columns to canonical types."""
    frame = pl.from_arrow(batch)
    frame = frame.with_columns(
        pl.col("query").cast(pl.String),
        pl.col("ranker").cast(pl.String),
        pl.col("product_id").cast(pl.String),
        pl.col("rank").cast(pl.Int64),
    )
    error = (
        pl.when(pl.col("query").is_null()).then(pl.lit("null query"))
        .when(pl.col("query").str.strip_chars() == "").then(pl.lit("empty query"))
        .when(pl.col("product_id").is_null()).then(pl.lit("null product_id"))
        .when(pl.col("product_id").str.strip_chars() == "").then(pl.lit("empty product_id"))
        .when(pl.col("ranker").is_null()).then(pl.lit("null ranker"))
        .when(pl.col("rank").is_null()).then(pl.lit("null rank"))
        .when(pl.col("rank") < 1).then(pl.lit("rank below 1"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return frame.with_columns(error.alias("input_error")).to_arrow()


def select_rows(batch: pa.Table, rankers: list[str] | None, k: int, queries: Iterable[str] | None = None) -> pa.Table:
    """Valid rows of the chosen rankers (and queries) at rank <= k."""
    frame = pl.from_arrow(batch).filter(pl.col("input_error").is_null() & (pl.col("rank") <= k))
    if rankers is not None:
        frame = frame.filter(pl.col("ranker").is_in(list(rankers)))
    if queries is not None:
        frame = frame.filter(pl.col("query").is_in(list(queries)))
    return frame.drop("input_error").to_arrow()


def invalid_rows(batch: pa.Table) -> pa.Table:
    """Rows that failed `check_log_rows`, as error records."""
    frame = pl.from_arrow(batch).filter(pl.col("input_error").is_not_null())
    return error_records(frame, stage="input", reason=pl.col("input_error"))


ERROR_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("query", pa.string()),
        ("product_id", pa.string()),
        ("ranker", pa.string()),
        ("rank", pa.int64()),
        ("reason", pa.string()),
    ]
)


def error_records(frame: pl.DataFrame, stage: str, reason: pl.Expr) -> pa.Table:
    """Rows of `frame` as records of the errors/ output (missing key columns become null)."""
    exprs = []
    for name, dtype in zip(ERROR_SCHEMA.names, ERROR_SCHEMA.types):
        if name == "stage":
            exprs.append(pl.lit(stage).alias(name))
        elif name == "reason":
            exprs.append(reason.cast(pl.String).alias(name))
        elif name in frame.columns:
            exprs.append(pl.col(name).cast(pl.from_arrow(pa.array([], dtype)).dtype).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=pl.from_arrow(pa.array([], dtype)).dtype).alias(name))
    return frame.select(exprs).to_arrow().cast(ERROR_SCHEMA)


def _attributes_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):  # map arrays come as [(key, value), ...]
        value = dict(value)
    return json.dumps(value, sort_keys=True, default=str)


def normalize_products(batch: pa.Table, mark_catalog: bool = False) -> pa.Table:
    """Product columns as strings (attributes as JSON text); with `mark_catalog`, add `in_catalog` = true."""
    columns = {}
    for name in batch.column_names:
        column = batch.column(name)
        if name == "attributes" and not pa.types.is_string(column.type):
            column = pa.array([_attributes_text(v) for v in column.to_pylist()], pa.string())
        elif name in PRODUCT_COLUMNS or name == "product_id":
            column = column.cast(pa.string())
        columns[name] = column
    if mark_catalog:
        columns["in_catalog"] = pa.array([True] * batch.num_rows, pa.bool_())
    return pa.table(columns)


def product_hash(row: dict) -> str:
    """Hash of everything about a product that the judge sees."""
    content = json.dumps({c: row.get(c) for c in PRODUCT_COLUMNS}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:20]


def unique_pairs(group: pa.Table) -> pa.Table:
    """Log rows of whole queries -> one row per (query, product_id): product fields, rankers, best rank, hash."""
    frame = pl.from_arrow(group)
    carried = [c for c in (*PRODUCT_COLUMNS, "in_catalog", "query_count", "locale") if c in frame.columns]
    pairs = (
        frame.sort("rank")
        .group_by(["query", "product_id"], maintain_order=True)
        .agg(
            pl.col("ranker").n_unique().alias("n_rankers"),
            pl.col("rank").min().alias("best_rank"),
            *[pl.col(c).first() for c in carried],
        )
    )
    table = pairs.to_arrow()
    rows = table.select([c for c in PRODUCT_COLUMNS if c in table.column_names]).to_pylist()
    return table.append_column("product_hash", pa.array([product_hash(r) for r in rows], pa.string()))


def pair_problems(batch: pa.Table) -> pa.Table:
    """Add `pair_error`: why a unique pair cannot be judged (unknown product, no product text), else null."""
    frame = pl.from_arrow(batch)
    text_cols = [c for c in ("title", "brand", "description") if c in frame.columns]
    has_text = pl.any_horizontal([pl.col(c).fill_null("").str.strip_chars() != "" for c in text_cols]) if text_cols else pl.lit(False)
    error = pl.when(~has_text).then(pl.lit("product has no text (title, brand and description are all empty)"))
    if "in_catalog" in frame.columns:
        error = pl.when(pl.col("in_catalog").is_null()).then(pl.lit("unknown product_id: not in the catalog")).when(~has_text).then(
            pl.lit("product has no text (title, brand and description are all empty)")
        )
    return frame.with_columns(error.otherwise(pl.lit(None, dtype=pl.String)).alias("pair_error")).to_arrow()


def guideline_id(query: str, model: str, prompt_version: str, scale: list[dict]) -> str:
    """Everything that decides a guideline, hashed."""
    key = json.dumps([normalize_query(query), model, prompt_version, scale], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def add_guideline_ids(batch: pa.Table, model: str, prompt_version: str, scale: list[dict]) -> pa.Table:
    """Add `guideline_id` to rows that carry a query."""
    ids = [guideline_id(q, model, prompt_version, scale) for q in batch.column("query").to_pylist()]
    return batch.append_column("guideline_id", pa.array(ids, pa.string()))
