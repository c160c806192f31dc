"""Stateless transforms from log rows to unique (query, product) pairs: row checks, selection, dedup."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import polars as pl
import pyarrow as pa

from rae_ray.inputs import PRODUCT_COLUMNS

LOG_KEY_COLUMNS = ["query", "ranker", "rank", "product_id"]
# Longer "queries" are not searches (pasted text, logging faults): they would become huge prompts.
MAX_QUERY_CHARS = 1000
_UTF8_CHECKED = ("query", "ranker", "product_id")


def set_ranker(batch: pa.Table, ranker: str) -> pa.Table:
    """Rows of a per-ranker log: all belong to `ranker`."""
    if "ranker" in batch.column_names:
        batch = batch.drop_columns(["ranker"])
    return batch.append_column("ranker", pa.array([ranker] * batch.num_rows, pa.string()))


def _is_text(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def repair_utf8(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array | pa.ChunkedArray, list[bool] | None]:
    """A string column with invalid UTF-8 bytes replaced by U+FFFD, and which rows had them (None: all valid).

    Parquet readers do not validate UTF-8, and invalid bytes crash polars (and Python) far from their cause.
    """
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not _is_text(column.type):
        return column, None
    try:
        column.validate(full=True)
        return column, None
    except pa.ArrowInvalid:
        pass
    values, bad = [], []
    for raw in column.cast(pa.large_binary()).to_pylist():
        if raw is None:
            values.append(None)
            bad.append(False)
            continue
        try:
            values.append(raw.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            values.append(raw.decode("utf-8", errors="replace"))
            bad.append(True)
    return pa.array(values, pa.string()), bad


def _repaired(batch: pa.Table) -> tuple[pa.Table, dict[str, list[bool]]]:
    """Every string column of `batch` repaired; the rows that were invalid, by column."""
    invalid = {}
    for index, name in enumerate(batch.column_names):
        column, bad = repair_utf8(batch.column(name))
        if bad is not None:
            batch = batch.set_column(index, name, column)
            invalid[name] = bad
    return batch, invalid


def check_log_rows(batch: pa.Table) -> pa.Table:
    """Add `input_error`: why a log row cannot be evaluated (null if it can). Casts key columns to canonical types.

    Invalid UTF-8 is replaced by U+FFFD in every string column; in query, ranker or product_id it makes the row bad.
    """
    batch, invalid = _repaired(batch)
    frame = pl.from_arrow(batch)
    frame = frame.with_columns(
        pl.col("query").cast(pl.String),
        pl.col("ranker").cast(pl.String),
        pl.col("product_id").cast(pl.String),
        pl.col("rank").cast(pl.Int64),
    )
    reasons: list[str | None] = [None] * frame.height
    for name in _UTF8_CHECKED:
        for i, bad in enumerate(invalid.get(name, ())):
            if bad and reasons[i] is None:
                reasons[i] = f"invalid UTF-8 in {name}"
    encoding = pl.Series(reasons, dtype=pl.String)
    error = (
        pl.when(encoding.is_not_null()).then(encoding)
        .when(pl.col("query").is_null()).then(pl.lit("null query"))
        .when(pl.col("query").str.strip_chars() == "").then(pl.lit("empty query"))
        .when(pl.col("query").str.len_chars() > MAX_QUERY_CHARS)
        .then(pl.lit(f"query longer than {MAX_QUERY_CHARS} characters"))
        .when(pl.col("product_id").is_null()).then(pl.lit("null product_id"))
        .when(pl.col("product_id").str.strip_chars() == "").then(pl.lit("empty product_id"))
        .when(pl.col("ranker").is_null()).then(pl.lit("null ranker"))
        .when(pl.col("ranker").str.strip_chars() == "").then(pl.lit("empty ranker"))
        .when(pl.col("rank").is_null()).then(pl.lit("null rank"))
        .when(pl.col("rank") < 1).then(pl.lit("rank below 1"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    ordered = LOG_KEY_COLUMNS + sorted(c for c in frame.columns if c not in LOG_KEY_COLUMNS)
    return frame.select(ordered).with_columns(error.alias("input_error")).to_arrow()


def mark_duplicate_rows(group: pa.Table) -> pa.Table:
    """Checked rows of whole queries: a product that a ranker lists again (at the same or another rank) gets
    `input_error`, so it is reported instead of counted twice by the metrics (a relevant product listed twice
    pushes nDCG above 1). The row at the product's best rank is kept."""
    frame = pl.from_arrow(group).with_row_index("_row")
    kept = (
        frame.filter(pl.col("input_error").is_null())
        .sort("rank", "_row")
        .group_by(["query", "ranker", "product_id"], maintain_order=True)
        .agg(pl.col("_row").first().alias("_kept"), pl.col("rank").first().alias("_kept_rank"))
    )
    duplicate = pl.col("input_error").is_null() & pl.col("_kept").is_not_null() & (pl.col("_row") != pl.col("_kept"))
    return (
        frame.join(kept, on=["query", "ranker", "product_id"], how="left", maintain_order="left")
        .with_columns(
            pl.when(duplicate)
            .then(pl.format("duplicate: the ranker lists this product already at rank {}", pl.col("_kept_rank")))
            .otherwise(pl.col("input_error"))
            .alias("input_error")
        )
        .drop("_row", "_kept", "_kept_rank")
        .to_arrow()
    )


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
    """Product columns as strings (attributes as JSON text, invalid UTF-8 replaced by U+FFFD); with `mark_catalog`,
    add `in_catalog` = true."""
    batch, _ = _repaired(batch)
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
    """Log rows of whole queries -> one row per (query, product_id): product fields, rankers, best rank, hash.

    When a pair comes with several product records (a catalog listing a product_id twice, or log rows whose
    product text differs), the record at the best rank wins, ties broken by content hash: the same record on
    every run, whatever order the rows arrive in. `product_variants` counts the distinct records (above 1: the
    input holds conflicting duplicates).
    """
    products = group.select([c for c in PRODUCT_COLUMNS if c in group.column_names]).to_pylist()
    frame = pl.from_arrow(group).with_columns(
        pl.Series("product_hash", [product_hash(p) for p in products], dtype=pl.String))
    carried = [c for c in (*PRODUCT_COLUMNS, "in_catalog", "query_count", "locale") if c in frame.columns]
    pairs = (
        frame.sort("rank", "product_hash")
        .group_by(["query", "product_id"], maintain_order=True)
        .agg(
            pl.col("ranker").n_unique().alias("n_rankers"),
            pl.col("rank").min().alias("best_rank"),
            *[pl.col(c).first() for c in carried],
            pl.col("product_hash").first(),
            pl.col("product_hash").n_unique().cast(pl.Int32).alias("product_variants"),
        )
    )
    return pairs.to_arrow()


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
