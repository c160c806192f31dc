"""Export labels and runs in TREC format, for trec_eval / ir_measures cross-checks (local paths)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from rae_ray.metrics.evaluate import require_columns

__all__ = ["doc_ids", "qrels_lines", "qrels_text", "query_id", "query_ids", "run_text", "write_qrels", "write_run"]


def query_id(query: str) -> str:
    """Stable TREC query id of a query text: "q" + the first 16 hex digits of its SHA-1 (UTF-8)."""
    return "q" + hashlib.sha1(query.encode("utf-8")).hexdigest()[:16]


def query_ids(queries: pl.Series | list[str]) -> pl.DataFrame:
    """The (query_id, query) table of the distinct queries, sorted by query; same ids in every file and run."""
    texts = sorted(set(pl.Series(queries, dtype=pl.String).drop_nulls().to_list()))
    mapping = pl.DataFrame(
        {"query_id": [query_id(q) for q in texts], "query": texts}, schema={"query_id": pl.String, "query": pl.String}
    )
    if mapping["query_id"].n_unique() != mapping.height:
        raise ValueError("two queries share a query id (SHA-1 prefix collision)")
    return mapping


def doc_ids(product_ids: pl.Expr) -> pl.Expr:
    """TREC doc ids: the product_id, with "%" and whitespace percent-encoded ("SKU 12" -> "SKU%2012"), the same
    in qrels and runs: TREC files split lines on whitespace, and a product id may hold some."""
    encoded = product_ids.str.replace_all("%", "%25", literal=True)
    for char in (" ", "\t", "\n", "\r", "\x0b", "\x0c"):
        encoded = encoded.str.replace_all(char, f"%{ord(char):02X}", literal=True)
    return encoded


def _check_doc_ids(product_ids: pl.Series) -> None:
    empty = product_ids.filter(product_ids.str.len_chars() == 0)
    if empty.len():
        raise ValueError("a product_id is empty; TREC files cannot hold it")


def qrels_text(labels: pl.DataFrame, gains: Mapping[int, int] | None = None) -> tuple[str, pl.DataFrame]:
    """("query_id 0 doc_id grade" lines of the labelled pairs, the query id table); see `write_qrels`."""
    require_columns(labels, "labels", ("query", "product_id", "grade"))
    rows = (
        labels.select(
            pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), pl.col("grade").cast(pl.Int64)
        )
        .filter(pl.col("grade").is_not_null() & (pl.col("grade") >= 0))
        .sort("query", "product_id")
    )
    _check_doc_ids(rows["product_id"])
    if gains is not None:
        rows = rows.with_columns(pl.col("grade").replace_strict(dict(gains), return_dtype=pl.Int64))
    mapping = query_ids(rows["query"])
    lines = rows.join(mapping, on="query", how="left", maintain_order="left").select(
        pl.format("{} 0 {} {}", "query_id", doc_ids(pl.col("product_id")), "grade")
    )
    return "".join(line + "\n" for line in lines.to_series().to_list()), mapping


def qrels_lines(labels: pl.DataFrame) -> str:
    """qrels lines of the graded pairs of `labels` with relevance 2**g - 1, so trec_eval's nDCG, which uses the
    relevance as the gain, equals this project's nDCG ("" when no pair is graded)."""
    graded = labels.filter(pl.col("grade").is_not_null() & (pl.col("grade") >= 0))
    if graded.is_empty():
        return ""
    return qrels_text(graded, {g: 2**g - 1 for g in graded["grade"].unique().to_list()})[0]


def write_qrels(
    labels: pl.DataFrame,
    path: str | Path,
    gains: Mapping[int, int] | None = None,
    mapping_path: str | Path | None = None,
) -> pl.DataFrame:
    """Write "query_id 0 doc_id grade" lines for the labelled pairs (null or negative grades are skipped).

    `gains` maps grades to the relevance written (e.g. {0: 0, 1: 1, 2: 3} so that trec_eval's ndcg, which uses
    the relevance as gain, matches our 2**g - 1). The query id table is written as Parquet to mapping_path
    (default: path with suffix ".queries.parquet") and returned.
    """
    text, mapping = qrels_text(labels, gains)
    path = Path(path)
    path.write_text(text)
    mapping.write_parquet(Path(mapping_path) if mapping_path is not None else path.with_suffix(".queries.parquet"))
    return mapping


def run_text(run: pl.DataFrame, ranker: str, tag: str | None = None) -> str:
    """One ranker's "query_id Q0 doc_id rank score tag" lines; see `write_run`."""
    require_columns(run, "run", ("ranker", "query", "rank", "product_id"))
    rows = (
        run.filter(pl.col("ranker") == ranker)
        .select(pl.col("query").cast(pl.String), pl.col("rank"), pl.col("product_id").cast(pl.String))
        .sort("query", "rank", "product_id")
    )
    if rows.height == 0:
        raise ValueError(f"run has no rows for ranker {ranker!r}")
    _check_doc_ids(rows["product_id"])
    tag = "_".join((tag if tag is not None else ranker).split()) or "run"
    lines = (
        rows.join(query_ids(rows["query"]), on="query", how="left", maintain_order="left")
        .with_columns(
            (pl.int_range(pl.len()).over("query") + 1).alias("position"),
            pl.len().over("query").alias("n"),
        )
        .with_columns((pl.col("n") + 1 - pl.col("position")).alias("score"))
        .select(pl.format("{} Q0 {} {} {} {}", "query_id", doc_ids(pl.col("product_id")), "position", "score",
                          pl.lit(tag)))
    )
    return "".join(line + "\n" for line in lines.to_series().to_list())


def write_run(run: pl.DataFrame, path: str | Path, ranker: str, tag: str | None = None) -> None:
    """Write one ranker's rankings as "query_id Q0 doc_id rank score tag" lines.

    Rankings are sorted by rank (ties by product_id) and renumbered 1..n; score = n + 1 - rank, so the order
    survives tools that sort by score. tag defaults to the ranker name with whitespace replaced by "_".
    """
    Path(path).write_text(run_text(run, ranker, tag))
