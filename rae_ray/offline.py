"""The metrics step alone: metrics from any labels (human or LLM) and a search log, without Ray or an LLM."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rae_ray.io import InputError, RunLayout, Storage, join_uri, resolve_uri
from rae_ray.metrics.evaluate import query_metrics, ranker_metrics


def parse_grade_map(text: str | None) -> dict[int, int]:
    """'3=2,2=1,1=1,0=0' -> {3: 2, 2: 1, 1: 1, 0: 0}."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        source, sep, target = item.partition("=")
        try:
            mapping[int(source)] = int(target)
        except ValueError:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE with integers") from None
        if not sep:
            raise InputError(f"--grade-map: {item!r} is not of the form LABEL=GRADE")
    return mapping


def read_table(uri: str, storage: Storage, role: str) -> pl.DataFrame:
    """A whole Parquet (file or folder) or CSV input as a polars frame."""
    resolved = resolve_uri(uri)
    fs, path = storage.fs(resolved)
    if resolved.endswith(".csv"):
        with fs.open_input_stream(path) as stream:
            return pl.from_arrow(pacsv.read_csv(stream))
    tables = []
    for file in storage.parquet_files(resolved):
        try:
            tables.append(pq.read_table(file, filesystem=fs))
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad input file
            raise InputError(f"{role} file {file}: not a readable Parquet file ({error})") from None
    return pl.concat([pl.from_arrow(t) for t in tables], how="diagonal_relaxed")


def map_grades(labels: pl.DataFrame, column: str, grade_map: dict[int, int], source: str) -> pl.DataFrame:
    """(query, product_id, grade) from a label column, mapped onto the project's grades."""
    for needed in ("query", "product_id", column):
        if needed not in labels.columns:
            raise InputError(f"labels {source}: missing column '{needed}' (has: {', '.join(labels.columns)})")
    raw = labels[column]
    if not raw.dtype.is_integer():
        try:
            raw = raw.cast(pl.Int64, strict=True)
        except pl.exceptions.InvalidOperationError:
            raise InputError(f"labels {source}: column '{column}' has type {labels[column].dtype}, expected integers") from None
    if grade_map:
        unknown = sorted(set(raw.drop_nulls().unique().to_list()) - set(grade_map))
        if unknown:
            raise InputError(f"labels {source}: column '{column}' has values {unknown} that --grade-map does not map")
        raw = raw.replace_strict(grade_map, return_dtype=pl.Int64, default=None)
    return labels.select(
        pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), raw.alias("grade").cast(pl.Int64)
    ).unique(subset=["query", "product_id"], keep="first")


@dataclass
class MetricsResult:
    root: str
    rankers: pl.DataFrame
    queries: pl.DataFrame


def run_metrics(
    log_uri: str, labels_uri: str, label_column: str, grade_map: dict[int, int], out: str,
    ks: list[int] = (5, 10), k: int | None = None, top_grade: int | None = None, n_bootstrap: int = 1000, seed: int = 0,
    storage: Storage | None = None,
) -> MetricsResult:
    storage = storage or Storage()
    log = read_table(log_uri, storage, "search log")
    for needed in ("query", "ranker", "rank", "product_id"):
        if needed not in log.columns:
            raise InputError(f"search log {log_uri}: missing column '{needed}'")
    cut = k or max(ks)
    run = log.select(
        pl.col("ranker").cast(pl.String), pl.col("query").cast(pl.String), pl.col("rank").cast(pl.Int64),
        pl.col("product_id").cast(pl.String),
    ).filter(pl.col("rank") <= cut)
    labels = map_grades(read_table(labels_uri, storage, "labels"), label_column, grade_map, labels_uri)
    top = top_grade if top_grade is not None else int(labels["grade"].max())
    by_query = query_metrics(run, labels, ks=list(ks), top_grade=top)
    by_ranker = ranker_metrics(by_query, n_bootstrap=n_bootstrap, seed=seed)
    layout = RunLayout(resolve_uri(out))
    storage.write_table(join_uri(layout.metrics, "rankers.parquet"), by_ranker.to_arrow())
    storage.write_table(join_uri(layout.metrics, "queries.parquet"), by_query.to_arrow())
    return MetricsResult(root=layout.root, rankers=by_ranker, queries=by_query)
