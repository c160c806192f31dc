"""Run the metrics of `measures` over a search log and labels: per query, per ranker, per segment."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import polars as pl

from rae_ray.metrics.measures import MEASURES

__all__ = [
    "QUERY_METRICS_SCHEMA",
    "RANKER_METRICS_SCHEMA",
    "SEGMENT_METRICS_SCHEMA",
    "bootstrap_ci",
    "bootstrap_counts",
    "bootstrap_intervals",
    "query_metrics",
    "ranker_metrics",
    "ranker_order",
    "segment_metrics",
    "traffic_segments",
    "worst_queries",
]

QUERY_METRICS_SCHEMA = {
    "ranker": pl.String,
    "query": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "value": pl.Float64,
}
RANKER_METRICS_SCHEMA = {
    "ranker": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "n_queries": pl.Int64,
}
SEGMENT_METRICS_SCHEMA = {
    "ranker": pl.String,
    "segment_type": pl.String,
    "segment": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "value": pl.Float64,
    "n_queries": pl.Int64,
}

_BOOTSTRAP_CHUNK = 1 << 18  # resample counts held in memory at once (2 MiB of float64: the driver stays flat)


def require_columns(df: pl.DataFrame, name: str, columns: Iterable[str]) -> None:
    """Raise a ValueError naming the table and the columns it lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; it has {df.columns}")


def make_rng(seed: int, *key) -> np.random.Generator:
    """A Generator seeded by `seed` and a key (e.g. ranker, metric, k), independent of processing order."""
    return np.random.default_rng([int(seed), zlib.crc32(repr(key).encode())])


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return sorted({int(k) for k in ks})


def _check_metrics(metrics: Iterable[str] | None) -> list[str]:
    names = list(MEASURES) if metrics is None else list(metrics)
    unknown = [m for m in names if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(MEASURES)}")
    return names


def _grade_as_float(grade: pl.Expr) -> pl.Expr:
    """Grades as float64 with NaN for unlabelled (null or negative)."""
    g = grade.cast(pl.Float64)
    return pl.when(g.is_null() | (g < 0)).then(float("nan")).otherwise(g)


def query_metrics(
    run: pl.DataFrame,
    labels: pl.DataFrame,
    ks: Sequence[int] = (5, 10),
    top_grade: int = 2,
    metrics: Iterable[str] | None = None,
) -> pl.DataFrame:
    """One row per (ranker, query, metric, k) with the query's score.

    `run`: ranker, query, rank (1-based), product_id, no nulls; `labels`: query, product_id, grade (null or
    negative = unlabelled; at most one row per pair). Each ranking is sorted by rank (ties by product_id) and
    scored by position, so rank gaps do not matter. Returned products without a label have gain 0. The nDCG
    ideal pool is every labelled product of the query in `labels`, returned or not. Left out: queries with no
    labelled product in `labels` (nothing to judge them by, as trec_eval skips queries absent from the qrels),
    rankings that returned nothing, and undefined scores (share_irrelevant and mean_grade when no top-k product
    is labelled).
    """
    require_columns(run, "run", ("ranker", "query", "rank", "product_id"))
    require_columns(labels, "labels", ("query", "product_id", "grade"))
    ks = _check_ks(ks)
    names = _check_metrics(metrics)
    measures = [MEASURES[m] for m in names]

    labels = labels.select(
        pl.col("query").cast(pl.String),
        pl.col("product_id").cast(pl.String),
        _grade_as_float(pl.col("grade")).alias("grade"),
    )
    duplicated = labels.filter(pl.struct("query", "product_id").is_duplicated())
    if duplicated.height:
        example = duplicated.row(0, named=True)
        raise ValueError(
            f"labels has {duplicated.height} rows for duplicated (query, product_id) pairs, "
            f"e.g. ({example['query']!r}, {example['product_id']!r}); keep one label per pair"
        )
    pool = labels.filter(pl.col("grade").is_not_nan()).sort("query", "grade", descending=[False, True])
    pool_queries, pool_offsets = _contiguous_groups(pool, ["query"])
    pool_grades = pool["grade"].to_numpy()
    pools = {
        q: pool_grades[start:end]
        for q, start, end in zip(pool_queries["query"].to_list(), pool_offsets[:-1], pool_offsets[1:])
    }

    run = run.select(
        pl.col("ranker").cast(pl.String),
        pl.col("query").cast(pl.String),
        pl.col("rank"),
        pl.col("product_id").cast(pl.String),
    )
    nulls = {name: count for name, count in run.null_count().row(0, named=True).items() if count}
    if nulls:
        raise ValueError(f"run has null values (count by column: {nulls}); drop and report those rows first")
    ranked = (
        run.filter(pl.col("query").is_in(list(pools)))
        .join(labels, on=["query", "product_id"], how="left")
        .with_columns(pl.col("grade").fill_null(float("nan")))
        .sort("ranker", "query", "rank", "product_id")
    )
    keys, offsets = _contiguous_groups(ranked, ["ranker", "query"])
    grades = ranked["grade"].to_numpy()

    out = {name: [] for name in QUERY_METRICS_SCHEMA}
    for ranker, query, start, end in zip(
        keys["ranker"].to_list(), keys["query"].to_list(), offsets[:-1], offsets[1:]
    ):
        ranking, query_pool = grades[start:end], pools[query]
        for measure in measures:
            for k in ks:
                value = measure(ranking, query_pool, k, top_grade)
                if not math.isnan(value):
                    out["ranker"].append(ranker)
                    out["query"].append(query)
                    out["metric"].append(measure.name)
                    out["k"].append(k)
                    out["value"].append(value)
    return pl.DataFrame(out, schema=QUERY_METRICS_SCHEMA)


def _contiguous_groups(df: pl.DataFrame, by: list[str]) -> tuple[pl.DataFrame, np.ndarray]:
    """Keys and row offsets of the runs of equal `by` values in a frame sorted by `by`."""
    if df.height == 0:
        return df.select(by), np.zeros(1, dtype=np.int64)
    boundary = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by])
    starts = df.select(boundary.fill_null(True).arg_true())[:, 0].to_numpy()
    return df.select(by)[starts.tolist()], np.append(starts, df.height).astype(np.int64)


def bootstrap_counts(
    n: int, n_bootstrap: int, rng: np.random.Generator, chunk: int = _BOOTSTRAP_CHUNK
) -> Iterator[np.ndarray]:
    """The bootstrap's resamples of n rows (drawn with replacement) as counts: (resamples x n) float matrices of
    how often each row was drawn, about `chunk` entries at a time. A resample's statistic is counts @ per-row
    values (a sum), so one draw serves many columns and any statistic built from sums."""
    rows = max(1, chunk // n)
    for start in range(0, n_bootstrap, rows):
        size = min(rows, n_bootstrap - start)
        picks = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        yield np.bincount(picks.reshape(-1), minlength=size * n).reshape(size, n).astype(np.float64)


def bootstrap_intervals(
    values,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap intervals of the mean of every column of an (n x m) matrix, resampling rows.

    The one bootstrap of the package: rankers' intervals (one column) and paired comparisons (a column of
    per-query differences per metric) both use it. The columns share the resampled rows (a paired bootstrap
    across columns); means come from `bootstrap_counts` times the matrix. NaN bounds for no rows or
    n_bootstrap = 0.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be an (n, m) matrix, got shape {v.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    n, m = v.shape
    if n == 0 or n_bootstrap == 0:
        return np.full(m, np.nan), np.full(m, np.nan)
    rng = np.random.default_rng() if rng is None else rng
    means = np.concatenate([counts @ v / n for counts in bootstrap_counts(n, n_bootstrap, rng)])
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=0)
    return low, high


def bootstrap_ci(
    values,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """`bootstrap_intervals` of one vector (e.g. per-query differences of two rankers); (nan, nan) for none."""
    column = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    low, high = bootstrap_intervals(column, n_bootstrap, confidence, rng)
    return float(low[0]), float(high[0])


def ranker_metrics(
    query_metrics: pl.DataFrame,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pl.DataFrame:
    """Mean over queries per (ranker, metric, k), with a percentile bootstrap interval over queries.

    Each (ranker, metric, k) draws from its own Generator seeded by (seed, ranker, metric, k), so a figure does
    not depend on the other rows of the table. n_bootstrap = 0 gives null intervals.
    """
    require_columns(query_metrics, "query_metrics", ("ranker", "query", "metric", "k", "value"))
    # One sorted value column and the offsets of its groups: no per-query Python objects on the driver.
    ordered = query_metrics.select("ranker", "metric", "k", "query", "value").sort("ranker", "metric", "k", "query")
    keys, offsets = _contiguous_groups(ordered.drop("query", "value"), ["ranker", "metric", "k"])
    all_values = ordered["value"].cast(pl.Float64).to_numpy()
    del ordered
    out = {name: [] for name in RANKER_METRICS_SCHEMA}
    for (ranker, metric, k), start, end in zip(keys.iter_rows(), offsets[:-1], offsets[1:]):
        values = all_values[start:end]
        low, high = bootstrap_ci(values, n_bootstrap, confidence, make_rng(seed, ranker, metric, int(k)))
        out["ranker"].append(ranker)
        out["metric"].append(metric)
        out["k"].append(k)
        out["value"].append(float(values.mean()))
        out["ci_low"].append(None if math.isnan(low) else low)
        out["ci_high"].append(None if math.isnan(high) else high)
        out["n_queries"].append(values.size)
    return pl.DataFrame(out, schema=RANKER_METRICS_SCHEMA)


def ranker_order(rankers: pl.DataFrame, k: int, metric: str = "ndcg") -> list[str]:
    """Ranker names of a `ranker_metrics` table, best metric@k first (ties by name); rankers without it last, by
    name. The one order of the printed table and the report."""
    require_columns(rankers, "rankers", ("ranker", "metric", "k", "value"))
    best_first = MEASURES[metric].higher_is_better if metric in MEASURES else True
    at_k = rankers.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    ordered = at_k.sort(["value", "ranker"], descending=[best_first, False])["ranker"].to_list()
    return ordered + sorted(set(rankers["ranker"].to_list()) - set(ordered))


def segment_metrics(query_metrics: pl.DataFrame, segments: pl.DataFrame) -> pl.DataFrame:
    """Mean over the queries of each segment, per (ranker, segment_type, segment, metric, k).

    `segments`: query, segment_type, segment; a query may sit in one segment of each type (or several).
    Queries without a segment are left out.
    """
    require_columns(query_metrics, "query_metrics", ("ranker", "query", "metric", "k", "value"))
    require_columns(segments, "segments", ("query", "segment_type", "segment"))
    segments = segments.select(
        pl.col("query").cast(pl.String), pl.col("segment_type").cast(pl.String), pl.col("segment").cast(pl.String)
    ).unique()
    return (
        query_metrics.join(segments, on="query", how="inner")
        .group_by("ranker", "segment_type", "segment", "metric", "k")
        .agg(pl.col("value").mean(), pl.len().alias("n_queries"))
        .sort("ranker", "segment_type", "segment", "metric", "k")
        .select(pl.col(name).cast(dtype) for name, dtype in SEGMENT_METRICS_SCHEMA.items())
    )


def traffic_segments(query_counts: pl.DataFrame, head: float = 0.2, torso: float = 0.3) -> pl.DataFrame:
    """Split queries into head / torso / tail by frequency.

    Queries are sorted by query_count descending, ties by query text ascending. Of n queries, the first
    ceil(head * n) are "head", the next up to ceil((head + torso) * n) are "torso", the rest "tail"; null counts
    sort last. Repeated rows of a query (e.g. a search log) are fine if they carry the same count.
    """
    require_columns(query_counts, "query_counts", ("query", "query_count"))
    if not (0 <= head <= 1 and 0 <= torso <= 1 and head + torso <= 1):
        raise ValueError(f"head and torso must be shares in [0, 1] summing to at most 1, got {head}, {torso}")
    counts = query_counts.select(pl.col("query").cast(pl.String), pl.col("query_count")).unique()
    repeated = counts.filter(pl.col("query").is_duplicated())
    if repeated.height:
        raise ValueError(f"query_counts gives several counts for query {repeated['query'][0]!r}")
    n = counts.height
    n_head = math.ceil(round(head * n, 9))
    n_head_torso = math.ceil(round((head + torso) * n, 9))
    return (
        counts.sort(["query_count", "query"], descending=[True, False], nulls_last=True)
        .with_row_index("position")
        .select(
            "query",
            pl.lit("traffic").alias("segment_type"),
            pl.when(pl.col("position") < n_head)
            .then(pl.lit("head"))
            .when(pl.col("position") < n_head_torso)
            .then(pl.lit("torso"))
            .otherwise(pl.lit("tail"))
            .alias("segment"),
        )
    )


def worst_queries(
    query_metrics: pl.DataFrame,
    metric: str = "share_irrelevant",
    k: int = 10,
    n: int = 10,
    tie_metric: str | None = None,
) -> pl.DataFrame:
    """The n worst queries of each ranker on one metric@k: highest value when lower is better, else lowest.

    Ties by `tie_metric`@k when given (worst first; a query without it sorts last), then by query text.
    Columns: ranker, position (1 = worst), query, metric, k, value.
    """
    require_columns(query_metrics, "query_metrics", ("ranker", "query", "metric", "k", "value"))
    for name in (metric, tie_metric):
        if name is not None and name not in MEASURES:
            raise ValueError(f"unknown metric {name!r}; known: {list(MEASURES)}")
    worst_first = not MEASURES[metric].higher_is_better
    table = query_metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    by, descending = ["ranker", "value"], [False, worst_first]
    if tie_metric is not None:
        tie = query_metrics.filter((pl.col("metric") == tie_metric) & (pl.col("k") == k)).select(
            "ranker", "query", pl.col("value").alias("_tie")
        )
        table = table.join(tie, on=["ranker", "query"], how="left")
        by, descending = by + ["_tie"], descending + [not MEASURES[tie_metric].higher_is_better]
    return (
        table.sort(by + ["query"], descending=descending + [False], nulls_last=True)
        .with_columns((pl.int_range(pl.len()).over("ranker") + 1).cast(pl.Int64).alias("position"))
        .filter(pl.col("position") <= n)
        .select("ranker", "position", "query", "metric", pl.col("k").cast(pl.Int32), "value")
    )
