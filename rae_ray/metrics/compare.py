"""Paired comparisons of rankers over the queries they share: bootstrap intervals (`evaluate.bootstrap_intervals`),
randomization tests, Holm."""

from __future__ import annotations

import itertools
import zlib
from typing import Literal

import numpy as np
import polars as pl

from rae_ray.metrics.evaluate import _contiguous_groups, bootstrap_intervals, make_rng, require_columns
from rae_ray.metrics.measures import MEASURES

__all__ = [
    "ALPHA",
    "COMPARISONS_SCHEMA",
    "adjust_p_values",
    "bonferroni",
    "compare_rankers",
    "holm",
    "randomization_p_values",
    "randomization_test",
]

COMPARISONS_SCHEMA = {
    "ranker_a": pl.String,
    "ranker_b": pl.String,
    "metric": pl.String,
    "k": pl.Int32,
    "delta": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_value": pl.Float64,
    "p_adjusted": pl.Float64,
    "wins": pl.Int64,
    "ties": pl.Int64,
    "losses": pl.Int64,
    "n_queries": pl.Int64,
    "significant": pl.Boolean,
}

ALPHA = 0.05  # significance level of the `significant` column (on the adjusted p-value)
TIE_TOLERANCE = 1e-12
_SIGN_DRAW = 1 << 22  # random sign bits drawn per call (packed: 512 KiB); sets which patterns a seed gives
_SIGN_CHUNK = 1 << 20  # signs unpacked at once (8 MiB of float64, whatever the number of queries)


def holm(p_values) -> np.ndarray:
    """Holm step-down adjustment: sorted ascending, p_(i) -> max over j <= i of min(1, (m - j + 1) * p_(j)).

    NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def bonferroni(p_values) -> np.ndarray:
    """Bonferroni adjustment: min(1, m * p), m = number of non-NaN p-values."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    return np.minimum(1.0, np.count_nonzero(~np.isnan(p)) * p)


def adjust_p_values(p_values, method: Literal["holm", "bonferroni", "none"] = "holm") -> np.ndarray:
    """Adjust for multiple comparisons: "holm", "bonferroni" or "none"."""
    if method == "holm":
        return holm(p_values)
    if method == "bonferroni":
        return bonferroni(p_values)
    if method == "none":
        return np.asarray(p_values, dtype=np.float64).reshape(-1).copy()
    raise ValueError(f"adjust must be 'holm', 'bonferroni' or 'none', got {method!r}")


def randomization_p_values(
    diffs, n_permutations: int = 10000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """`randomization_test` of every column of an (n queries x m) matrix of differences, one p-value per column.

    The columns share the same sign patterns (one draw for all of them), which is what makes comparing many
    metrics of one ranker pair cheap: the test statistic is one matrix product per chunk of patterns.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"diffs must be an (n, m) matrix, got shape {d.shape}")
    n, m = d.shape
    missing = np.flatnonzero(np.isnan(d).any(axis=0))
    if missing.size:
        raise ValueError(f"diffs has NaN in column(s) {missing.tolist()}: a difference without a value cannot be tested")
    if n == 0:
        return np.full(m, np.nan)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    total = d.sum(axis=0)
    observed = np.abs(total)
    threshold = observed - 1e-12 * np.maximum(observed, np.abs(d).sum(axis=0))
    count = np.zeros(m, dtype=np.int64)
    rows = max(1, _SIGN_CHUNK // n)
    # A pattern's flipped set F gives sum = total - 2 * sum(d[F]); bits are 1 where a difference is flipped.
    if n < 63 and 2**n <= n_permutations:
        for start in range(0, 2**n, rows):
            patterns = np.arange(start, min(2**n, start + rows), dtype=np.int64)
            bits = ((patterns[:, None] >> np.arange(n)) & 1).astype(np.float64)
            count += np.count_nonzero(np.abs(total - 2.0 * (bits @ d)) >= threshold, axis=0)
        return count / 2**n
    rng = np.random.default_rng() if rng is None else rng
    width = (n + 7) // 8
    draw = max(1, _SIGN_DRAW // n)
    for start in range(0, n_permutations, draw):
        packed = rng.integers(0, 256, size=(min(draw, n_permutations - start), width), dtype=np.uint8)
        for first in range(0, packed.shape[0], rows):
            bits = np.unpackbits(packed[first:first + rows], axis=1, count=n).astype(np.float64)
            count += np.count_nonzero(np.abs(total - 2.0 * (bits @ d)) >= threshold, axis=0)
    return (count + 1) / (n_permutations + 1)


def randomization_test(diffs, n_permutations: int = 10000, rng: np.random.Generator | None = None) -> float:
    """Two-sided paired randomization test of mean(diffs) = 0 by random sign flips of the per-query differences.

    p = share of sign patterns whose |mean| is at least the observed |mean|. All 2**n patterns are enumerated
    when 2**n <= n_permutations (exact, as scipy.stats.permutation_test does); otherwise n_permutations random
    patterns give p = (count + 1) / (n_permutations + 1). NaN for no differences; 1.0 when all are 0; a NaN
    difference is a ValueError.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)
    return float(randomization_p_values(d[:, None], n_permutations, rng)[0])


def compare_rankers(
    query_metrics: pl.DataFrame,
    baseline: str | None = None,
    n_bootstrap: int = 1000,
    n_permutations: int = 10000,
    seed: int = 0,
    adjust: Literal["holm", "bonferroni", "none"] = "holm",
    confidence: float = 0.95,
    family: Literal["table", "metric"] = "table",
    alpha: float = ALPHA,
) -> pl.DataFrame:
    """Paired comparison of rankers per (metric, k) on the queries both have: delta = mean of a - b.

    Pairs: with a baseline, every other ranker (by name) as ranker_a against the baseline as ranker_b; without,
    every unordered pair with ranker_a < ranker_b by name. wins/ties/losses count queries with a > b, |a - b| <=
    1e-12, a < b (literal values: for share_irrelevant a "win" is worse). p_value from `randomization_test`,
    p_adjusted over every row of the table (family="table") or within each (metric, k) (family="metric");
    `significant` is p_adjusted < alpha, decided here once so every reader (the report too) shows the same.
    The rows of one ranker pair that cover the same queries share their bootstrap resamples and sign patterns,
    drawn from Generators seeded by (seed, ranker_a, ranker_b, the query set), so a row's figures do not depend
    on which other rows are in the table, and many metrics cost about as much as one. Pairs without a common
    query are left out, and so are measures not `compared` (coverage: judged).
    """
    require_columns(query_metrics, "query_metrics", ("ranker", "query", "metric", "k", "value"))
    if family not in ("table", "metric"):
        raise ValueError(f"family must be 'table' or 'metric', got {family!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    adjust_p_values([], adjust)  # validate early
    duplicated = query_metrics.select("ranker", "query", "metric", "k").is_duplicated()
    if duplicated.any():
        row = query_metrics.filter(duplicated).row(0, named=True)
        raise ValueError(
            f"query_metrics has several rows for {row['ranker']!r}, {row['query']!r}, {row['metric']}@{row['k']}"
        )
    coverage = [name for name, measure in MEASURES.items() if not measure.compared]
    query_metrics = query_metrics.filter(~pl.col("metric").is_in(coverage))
    rankers = sorted(query_metrics["ranker"].unique().to_list())
    if baseline is None:
        pairs = list(itertools.combinations(rankers, 2))
    elif baseline not in rankers:
        raise ValueError(f"baseline {baseline!r} is not among the rankers {rankers}")
    else:
        pairs = [(r, baseline) for r in rankers if r != baseline]

    # Queries as their rank in byte order (UTF-8 byte order is code-point order, as Python sorts strings): the
    # pairs' common queries are found on integers, and a query's text is looked up once per set of queries.
    names = query_metrics["query"].unique().sort()
    coded = query_metrics.select(
        "metric", "k", "ranker",
        pl.col("query").replace_strict(names, pl.int_range(names.len(), eager=True), return_dtype=pl.Int64),
        pl.col("value").cast(pl.Float64),
    ).sort("metric", "k", "ranker", "query")
    keys, offsets = _contiguous_groups(coded.select("metric", "k", "ranker"), ["metric", "k", "ranker"])
    all_queries, all_values = coded["query"].to_numpy(), coded["value"].to_numpy()
    del coded
    scores: dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (metric, k, ranker), start, end in zip(keys.iter_rows(), offsets[:-1], offsets[1:]):
        scores.setdefault((metric, int(k)), {})[ranker] = (all_queries[start:end], all_values[start:end])

    # Rows of one ranker pair over the same queries form one (queries x rows) matrix of differences, tested at once.
    blocks: dict[tuple[str, str, bytes], dict] = {}
    for (metric, k), by_ranker in scores.items():
        for a, b in pairs:
            if a not in by_ranker or b not in by_ranker:
                continue
            (queries_a, values_a), (queries_b, values_b) = by_ranker[a], by_ranker[b]
            common, index_a, index_b = np.intersect1d(queries_a, queries_b, assume_unique=True, return_indices=True)
            if index_a.size == 0:
                continue
            block = blocks.setdefault((a, b, common.tobytes()), {"n": common.size, "common": common, "rows": [],
                                                                 "diffs": []})
            block["rows"].append((metric, k))
            block["diffs"].append(values_a[index_a] - values_b[index_b])

    results = []
    for (a, b, _), block in blocks.items():
        diffs = np.column_stack(block["diffs"])
        queries_key = "\x1f".join(names.gather(block["common"]).to_list()).encode()
        fingerprint = (block["n"], zlib.crc32(queries_key))
        low, high = bootstrap_intervals(
            diffs, n_bootstrap, confidence, make_rng(seed, a, b, "bootstrap", *fingerprint)
        )
        p_values = randomization_p_values(diffs, n_permutations, make_rng(seed, a, b, "permutation", *fingerprint))
        for column, (metric, k) in enumerate(block["rows"]):
            d = diffs[:, column]
            results.append({
                "ranker_a": a,
                "ranker_b": b,
                "metric": metric,
                "k": k,
                "delta": float(d.mean()),
                "ci_low": None if np.isnan(low[column]) else float(low[column]),
                "ci_high": None if np.isnan(high[column]) else float(high[column]),
                "p_value": float(p_values[column]),
                "wins": int(np.count_nonzero(d > TIE_TOLERANCE)),
                "ties": int(np.count_nonzero(np.abs(d) <= TIE_TOLERANCE)),
                "losses": int(np.count_nonzero(d < -TIE_TOLERANCE)),
                "n_queries": int(d.size),
            })
    order = {pair: i for i, pair in enumerate(pairs)}
    results.sort(key=lambda row: (row["metric"], row["k"], order[(row["ranker_a"], row["ranker_b"])]))
    computed = {n: t for n, t in COMPARISONS_SCHEMA.items() if n not in ("p_adjusted", "significant")}
    table = pl.DataFrame({name: [row[name] for row in results] for name in computed}, schema=computed)
    p = table["p_value"].to_numpy()
    if family == "table":
        adjusted = adjust_p_values(p, adjust)
    else:
        adjusted = np.empty_like(p)
        family_keys = list(zip(table["metric"].to_list(), table["k"].to_list()))
        for key in set(family_keys):
            mask = np.array([family_key == key for family_key in family_keys])
            adjusted[mask] = adjust_p_values(p[mask], adjust)
    return (
        table.with_columns(pl.Series("p_adjusted", adjusted, dtype=pl.Float64))
        .with_columns((pl.col("p_adjusted").fill_nan(None) < alpha).fill_null(False).alias("significant"))
        .select(list(COMPARISONS_SCHEMA))
    )
