"""Agreement between graders (LLM judge vs human, human vs human) and between rankings of rankers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import polars as pl

from rae_ray.metrics.evaluate import require_columns

__all__ = [
    "AGREEMENT_MEASURES",
    "RATER_AGREEMENT_SCHEMA",
    "agreement",
    "agreement_by_query",
    "agreement_from_confusion",
    "hard_disagreements",
    "kendall_tau",
    "rater_agreement",
]

RATER_AGREEMENT_SCHEMA = {
    "rater_a": pl.String,
    "rater_b": pl.String,
    "n": pl.Int64,
    "exact": pl.Float64,
    "cohen_kappa": pl.Float64,
    "quadratic_weighted_kappa": pl.Float64,
}


AGREEMENT_MEASURES = ("exact", "cohen_kappa", "quadratic_weighted_kappa")

# Resample rows x queries held at once by `agreement_by_query` (memory bound of one chunk of resamples).
_RESAMPLE_CHUNK = 2_000_000


def _kappa(confusion: np.ndarray, weights: np.ndarray) -> float:
    """1 - sum(w * observed) / sum(w * expected), expected = outer(row totals, column totals) / n; NaN if 0/0."""
    n = confusion.sum()
    expected = np.outer(confusion.sum(axis=1), confusion.sum(axis=0)) / n
    denominator = float(np.sum(weights * expected))
    if denominator == 0.0:
        return float("nan")
    return 1.0 - float(np.sum(weights * confusion)) / denominator


def agreement_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """exact, cohen_kappa and quadratic_weighted_kappa of a square confusion matrix of counts (grades in scale
    order); NaN for all three when it holds no count."""
    confusion = np.asarray(confusion)
    size = confusion.shape[0]
    if confusion.sum() == 0:
        return {m: float("nan") for m in AGREEMENT_MEASURES}
    positions = np.arange(size)
    return {
        "exact": float(np.trace(confusion)) / float(confusion.sum()),
        "cohen_kappa": _kappa(confusion, 1.0 - np.eye(size)),
        "quadratic_weighted_kappa": _kappa(confusion, ((positions[:, None] - positions[None, :]) / (size - 1)) ** 2),
    }


def agreement(a, b, grades: Sequence[int] = (0, 1, 2)) -> dict:
    """Agreement of grades `a` with reference grades `b` (same length, pairs where either is NaN are dropped).

    Returns n, exact (share equal), cohen_kappa, quadratic_weighted_kappa (weights ((i - j) / (K - 1))**2 over the
    positions of `grades`), confusion (rows a, columns b, in `grades` order) and per_grade
    {grade: {precision, recall, n_a, n_b}} of a against b. Kappas are NaN when chance agreement is total
    (e.g. both use one single grade); precision/recall NaN when their denominator is 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.size} and {b.size}")
    grades = list(grades)
    if len(grades) < 2 or len(set(grades)) != len(grades):
        raise ValueError(f"grades must be at least two distinct values, got {grades}")
    keep = ~np.isnan(a) & ~np.isnan(b)
    a, b = a[keep], b[keep]
    index = {float(g): i for i, g in enumerate(grades)}
    unknown = sorted({float(x) for x in np.concatenate([a, b])} - set(index))
    if unknown:
        raise ValueError(f"grades {unknown} are not on the scale {grades}")
    size = len(grades)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, ([index[x] for x in a.tolist()], [index[x] for x in b.tolist()]), 1)

    n = int(confusion.sum())
    measures = agreement_from_confusion(confusion)
    exact, cohen, quadratic = (measures[m] for m in AGREEMENT_MEASURES)
    per_grade = {}
    for i, g in enumerate(grades):
        n_a, n_b, both = int(confusion[i].sum()), int(confusion[:, i].sum()), int(confusion[i, i])
        per_grade[g] = {
            "precision": both / n_a if n_a else float("nan"),
            "recall": both / n_b if n_b else float("nan"),
            "n_a": n_a,
            "n_b": n_b,
        }
    return {
        "n": n,
        "exact": exact,
        "cohen_kappa": cohen,
        "quadratic_weighted_kappa": quadratic,
        "confusion": confusion.tolist(),
        "per_grade": per_grade,
    }


def _measures(confusions: np.ndarray) -> dict[str, np.ndarray]:
    """The AGREEMENT_MEASURES of a stack of (G x G) confusion matrices, one value per matrix (NaN where undefined)."""
    size = confusions.shape[-1]
    positions = np.arange(size)
    n = confusions.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"exact": np.trace(confusions, axis1=1, axis2=2) / n}
        expected = confusions.sum(axis=2)[:, :, None] * confusions.sum(axis=1)[:, None, :] / n[:, None, None]
        for name, weights in (("cohen_kappa", 1.0 - np.eye(size)),
                              ("quadratic_weighted_kappa", ((positions[:, None] - positions[None, :]) / (size - 1)) ** 2)):
            denominator = np.sum(weights * expected, axis=(1, 2))
            kappa = 1.0 - np.sum(weights * confusions, axis=(1, 2)) / denominator
            out[name] = np.where(denominator > 0, kappa, np.nan)
    return out


def agreement_by_query(
    a, b, queries, grades: Sequence[int] = (0, 1, 2), n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Agreement of grades `a` with reference grades `b` on all pairs pooled, with bootstrap intervals over queries.

    `queries` names each pair's query. A resample draws as many queries as there are, with replacement, and
    recomputes the measures on the pooled pairs of the drawn queries (a query drawn twice counts twice): the pairs
    of one query move together, as they are not independent. Pairs where a or b is NaN are dropped.
    Returns n, n_queries, and for each of exact, cohen_kappa, quadratic_weighted_kappa the value (as `agreement`)
    and the percentile interval `<name>_ci_low`, `<name>_ci_high`. Resamples where a kappa is undefined are left
    out of its interval; bounds are NaN with no pairs, n_bootstrap = 0, or no defined resample.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    queries = np.asarray(queries, dtype=object).reshape(-1)
    if not a.shape == b.shape == queries.shape:
        raise ValueError(f"a, b and queries must have the same length, got {a.size}, {b.size} and {queries.size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    keep = ~np.isnan(a) & ~np.isnan(b)
    a, b, queries = a[keep], b[keep], queries[keep]
    point = agreement(a, b, grades)  # checks the grades
    out = {"n": point["n"], "n_queries": 0}
    for name in AGREEMENT_MEASURES:
        out.update({name: point[name], f"{name}_ci_low": float("nan"), f"{name}_ci_high": float("nan")})
    if a.size == 0:
        return out
    names, query_index = np.unique(queries.astype(str), return_inverse=True)
    out["n_queries"] = n_queries = names.size
    if n_bootstrap == 0:
        return out
    index = {float(g): i for i, g in enumerate(grades)}
    size = len(index)
    per_query = np.zeros((n_queries, size, size), dtype=np.float64)
    np.add.at(per_query, (query_index, [index[x] for x in a.tolist()], [index[x] for x in b.tolist()]), 1.0)
    per_query = per_query.reshape(n_queries, size * size)
    rng = np.random.default_rng(seed)
    values = {name: np.empty(n_bootstrap) for name in AGREEMENT_MEASURES}
    rows = max(1, _RESAMPLE_CHUNK // n_queries)
    for start in range(0, n_bootstrap, rows):
        count = min(rows, n_bootstrap - start)
        picks = rng.integers(0, n_queries, size=(count, n_queries)) + (np.arange(count) * n_queries)[:, None]
        drawn = np.bincount(picks.reshape(-1), minlength=count * n_queries).reshape(count, n_queries)
        for name, value in _measures((drawn @ per_query).reshape(count, size, size)).items():
            values[name][start : start + count] = value
    alpha = 1.0 - confidence
    for name, value in values.items():
        defined = value[~np.isnan(value)]
        if defined.size:
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = (float(q) for q in np.quantile(defined, [alpha / 2, 1 - alpha / 2]))
    return out


def hard_disagreements(
    pairs: pl.DataFrame, judge_col: str, human_col: str, min_distance: int = 2
) -> pl.DataFrame:
    """Rows where judge and human grades are both set and at least min_distance apart, with a `distance` column.

    Sorted by distance, largest first; input order otherwise.
    """
    require_columns(pairs, "pairs", (judge_col, human_col))
    distance = (pl.col(judge_col).cast(pl.Float64) - pl.col(human_col).cast(pl.Float64)).abs()
    return (
        pairs.with_columns(distance.alias("distance"))
        .filter(pl.col("distance").is_not_null() & ~pl.col("distance").is_nan() & (pl.col("distance") >= min_distance))
        .sort("distance", descending=True, maintain_order=True)
    )


def rater_agreement(df: pl.DataFrame, rater_cols: Sequence[str], grades: Sequence[int] = (0, 1, 2)) -> pl.DataFrame:
    """Pairwise agreement of rater columns (in the given order), each pair on the rows where both are non-null."""
    rater_cols = list(rater_cols)
    require_columns(df, "df", rater_cols)
    out = {name: [] for name in RATER_AGREEMENT_SCHEMA}
    for col_a, col_b in itertools.combinations(rater_cols, 2):
        both = df.select(pl.col(col_a).cast(pl.Float64), pl.col(col_b).cast(pl.Float64)).drop_nulls().drop_nans()
        result = agreement(both[col_a].to_numpy(), both[col_b].to_numpy(), grades)
        out["rater_a"].append(col_a)
        out["rater_b"].append(col_b)
        for name in ("n", "exact", "cohen_kappa", "quadratic_weighted_kappa"):
            out[name].append(result[name])
    return pl.DataFrame(out, schema=RATER_AGREEMENT_SCHEMA)


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between two scorings of the same items (e.g. rankers' mean nDCG by two judges).

    (concordant - discordant) / sqrt((n0 - ties_x) * (n0 - ties_y)), n0 = n(n-1)/2; NaN if a side is constant.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    upper = np.triu_indices(x.size, k=1)
    sign_x = np.sign(x[:, None] - x[None, :])[upper]
    sign_y = np.sign(y[:, None] - y[None, :])[upper]
    n0 = sign_x.size
    denominator = np.sqrt(float(np.count_nonzero(sign_x)) * float(np.count_nonzero(sign_y)))
    if n0 == 0 or denominator == 0.0:
        return float("nan")
    return float(np.sum(sign_x * sign_y)) / denominator
