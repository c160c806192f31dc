"""Ranking metric definitions: pure functions of one query's grades, and the `MEASURES` registry.

Grades come as numpy arrays in rank order (position 1 first). A grade that is NaN or negative (e.g. -1) means
"unlabelled": it has gain 0 and is not relevant in every metric, and it is left out of the denominators of the
metrics defined over labelled products only (`share_irrelevant`, `mean_grade`) and of the nDCG ideal pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MEASURES",
    "Measure",
    "dcg",
    "judged",
    "mean_grade",
    "ndcg",
    "precision",
    "share_irrelevant",
]


def _as_grades(grades) -> np.ndarray:
    return np.asarray(grades, dtype=np.float64).reshape(-1)


def _labelled(grades: np.ndarray) -> np.ndarray:
    return ~np.isnan(grades) & (grades >= 0)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def dcg(grades, k: int) -> float:
    """DCG@k: sum over the top k of (2**grade - 1) / log2(rank + 1); unlabelled grades give 0."""
    top = _as_grades(grades)[: _check_k(k)]
    gains = np.where(_labelled(top), np.exp2(np.where(_labelled(top), top, 0.0)) - 1.0, 0.0)
    return float(np.sum(gains / np.log2(np.arange(2, top.size + 2))))


def ndcg(ranked_grades, pool_grades, k: int) -> float:
    """nDCG@k: DCG@k of the ranking over DCG@k of the labelled pool sorted by grade, descending.

    The pool is every labelled product of the query, returned or not (`metrics.ideal` decides which labels). When the ideal DCG is 0 (no product of the
    pool has grade > 0) the result is 0.0, as trec_eval's ndcg_cut (and so ir_measures' nDCG) reports.
    """
    pool = _as_grades(pool_grades)
    ideal = dcg(np.sort(pool[_labelled(pool)])[::-1], k)
    if ideal <= 0.0:
        return 0.0
    return dcg(ranked_grades, k) / ideal


def precision(ranked_grades, k: int, min_grade: float = 1) -> float:
    """P@k: number of the top k with grade >= min_grade, over k (trec_eval's denominator, even if fewer returned)."""
    k = _check_k(k)
    top = _as_grades(ranked_grades)[:k]
    return float(np.sum(_labelled(top) & (top >= min_grade))) / k


def share_irrelevant(ranked_grades, k: int) -> float:
    """Share of the labelled products in the top k with grade 0; denominator = labelled products in the top k.

    NaN when no product of the top k is labelled.
    """
    top = _as_grades(ranked_grades)[: _check_k(k)]
    labelled = top[_labelled(top)]
    if labelled.size == 0:
        return float("nan")
    return float(np.mean(labelled == 0))


def judged(ranked_grades, k: int) -> float:
    """Share of the top k that is labelled (coverage); denominator = products in the top k (k, or fewer returned)."""
    top = _as_grades(ranked_grades)[: _check_k(k)]
    if top.size == 0:
        return float("nan")
    return float(np.mean(_labelled(top)))


def mean_grade(ranked_grades, k: int) -> float:
    """Mean grade of the labelled products in the top k; NaN when none of them is labelled."""
    top = _as_grades(ranked_grades)[: _check_k(k)]
    labelled = top[_labelled(top)]
    if labelled.size == 0:
        return float("nan")
    return float(np.mean(labelled))


@dataclass(frozen=True)
class Measure:
    """A named metric: `measure(ranked_grades, pool_grades, k, top_grade)` gives one query's score (NaN = undefined).

    `label` is the name people read (tables, the report): "nDCG", "P", ...; `at(k)` adds the cut-off.
    `compared`: rankers are compared on it (false for coverage, which says how far the scores can be trusted,
    not which ranker is better).
    """

    name: str
    label: str
    description: str
    higher_is_better: bool
    function: Callable[[np.ndarray, np.ndarray, int, int], float]
    compared: bool = True

    def __call__(self, ranked_grades, pool_grades, k: int, top_grade: int = 2) -> float:
        return self.function(ranked_grades, pool_grades, k, top_grade)

    def at(self, k: int) -> str:
        """The display name at a cut-off: "nDCG@10"."""
        return f"{self.label}@{k}"


def _ndcg(ranked, pool, k, top_grade):
    return ndcg(ranked, pool, k)


def _precision(ranked, pool, k, top_grade):
    return precision(ranked, k, min_grade=1)


def _precision_top(ranked, pool, k, top_grade):
    return precision(ranked, k, min_grade=top_grade)


def _share_irrelevant(ranked, pool, k, top_grade):
    return share_irrelevant(ranked, k)


def _mean_grade(ranked, pool, k, top_grade):
    return mean_grade(ranked, k)


def _judged(ranked, pool, k, top_grade):
    return judged(ranked, k)


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("ndcg", "nDCG", "nDCG@k, gain 2^g-1, log2 discount, ideal from all labelled products", True, _ndcg),
        Measure("precision", "P", "P@k, relevant = grade >= 1, denominator k", True, _precision),
        Measure("precision_top", "P(top grade)", "P@k, relevant = top grade of the scale, denominator k", True,
                _precision_top),
        Measure("share_irrelevant", "irrelevant", "share of labelled top-k products with grade 0", False,
                _share_irrelevant),
        Measure("mean_grade", "mean grade", "mean grade of labelled top-k products", True, _mean_grade),
        Measure("judged", "judged", "share of top-k products with a label (judged or reused)", True, _judged,
                compared=False),
    )
}
