"""Metric definitions, each checked against its formula written out."""

import math

import numpy as np
import pytest

from rae_ray.metrics.measures import MEASURES, dcg, judged, mean_grade, ndcg, precision, share_irrelevant

NAN = float("nan")
log2 = math.log2


def test_dcg_formula():
    grades = np.array([2, 0, 1, 2])
    expected = (2**2 - 1) / log2(2) + 0 / log2(3) + (2**1 - 1) / log2(4) + (2**2 - 1) / log2(5)
    assert dcg(grades, 10) == pytest.approx(expected)
    assert dcg(grades, 2) == pytest.approx((2**2 - 1) / log2(2))


def test_dcg_unlabelled_is_gain_zero():
    expected = (2**1 - 1) / log2(3)
    assert dcg(np.array([NAN, 1]), 2) == pytest.approx(expected)
    assert dcg(np.array([-1, 1]), 2) == pytest.approx(expected)


def test_dcg_empty_and_bad_k():
    assert dcg(np.array([]), 5) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        dcg(np.array([1]), 0)


def test_ndcg_ideal_from_pool_not_ranking():
    ranked = np.array([1, 0])
    pool = np.array([0, 2, 1, 1, NAN])  # product graded 2 was not returned
    expected = ((2**1 - 1) / log2(2)) / ((2**2 - 1) / log2(2) + (2**1 - 1) / log2(3))
    assert ndcg(ranked, pool, 2) == pytest.approx(expected)


def test_ndcg_ideal_cut_at_k():
    ranked = np.array([2, 2, 0])
    pool = np.array([2, 2, 2, 0])
    expected = (3 / log2(2) + 3 / log2(3)) / (3 / log2(2) + 3 / log2(3))
    assert ndcg(ranked, pool, 2) == pytest.approx(expected)
    expected3 = (3 / log2(2) + 3 / log2(3)) / (3 / log2(2) + 3 / log2(3) + 3 / log2(4))
    assert ndcg(ranked, pool, 3) == pytest.approx(expected3)


def test_ndcg_zero_ideal_is_zero():
    assert ndcg(np.array([0, 0]), np.array([0, 0, NAN]), 10) == 0.0
    assert ndcg(np.array([NAN]), np.array([]), 10) == 0.0


def test_precision_denominator_is_k():
    ranked = np.array([2, 0, 1, NAN])
    assert precision(ranked, 10) == pytest.approx(2 / 10)
    assert precision(ranked, 2) == pytest.approx(1 / 2)
    assert precision(ranked, 10, min_grade=2) == pytest.approx(1 / 10)


def test_share_irrelevant_denominator_is_labelled_top_k():
    ranked = np.array([0, NAN, 2, 0, -1, 1])
    assert share_irrelevant(ranked, 5) == pytest.approx(2 / 3)  # labelled in top 5: 0, 2, 0
    assert share_irrelevant(ranked, 10) == pytest.approx(2 / 4)
    assert math.isnan(share_irrelevant(np.array([NAN, -1]), 10))


def test_mean_grade():
    ranked = np.array([2, NAN, 1, 0])
    assert mean_grade(ranked, 3) == pytest.approx((2 + 1) / 2)
    assert mean_grade(ranked, 4) == pytest.approx((2 + 1 + 0) / 3)
    assert math.isnan(mean_grade(np.array([NAN]), 3))


def test_registry_names_and_calls():
    assert list(MEASURES) == ["ndcg", "precision", "precision_top", "share_irrelevant", "mean_grade", "judged"]
    ranked, pool = np.array([1, 2, 0]), np.array([2, 1, 0])
    assert MEASURES["ndcg"](ranked, pool, 3) == pytest.approx(ndcg(ranked, pool, 3))
    assert MEASURES["precision"](ranked, pool, 3) == pytest.approx(2 / 3)
    assert MEASURES["precision_top"](ranked, pool, 3, top_grade=2) == pytest.approx(1 / 3)
    assert MEASURES["precision_top"](ranked, pool, 3, top_grade=1) == pytest.approx(2 / 3)
    assert MEASURES["share_irrelevant"](ranked, pool, 3) == pytest.approx(1 / 3)
    assert MEASURES["mean_grade"](ranked, pool, 3) == pytest.approx((1 + 2 + 0) / 3)
    assert MEASURES["judged"](ranked, pool, 3) == 1.0
    assert not MEASURES["share_irrelevant"].higher_is_better
    assert MEASURES["ndcg"].higher_is_better
    assert [m for m in MEASURES if not MEASURES[m].compared] == ["judged"]


def test_judged_is_the_labelled_share_of_the_top_k():
    ranked = np.array([2, NAN, 0, -1, 1])  # NaN and negative: unlabelled
    assert judged(ranked, 1) == 1.0
    assert judged(ranked, 2) == pytest.approx(1 / 2)
    assert judged(ranked, 4) == pytest.approx(2 / 4)
    assert judged(ranked, 5) == pytest.approx(3 / 5)
    assert judged(ranked, 10) == pytest.approx(3 / 5)  # denominator: the products returned in the top k
    assert math.isnan(judged(np.array([]), 5))


def test_ndcg_with_a_store_pool_is_independent_of_the_other_rankings():
    # A ranking scored against the run's pool moves when another ranker adds a relevant product to the pool;
    # against the store's pool (every label of the query under the judge) it does not.
    ranking = np.array([1, 0, 2])
    run_1 = np.array([1, 0, 2])  # the products A and B returned
    run_2 = np.array([1, 0, 2, 2])  # C surfaced one more highly relevant product
    store = np.array([1, 0, 2, 2, 0])  # every product ever judged for the query under this judge
    ideal = lambda pool: sum((2**g - 1) / log2(i + 2) for i, g in enumerate(sorted(pool, reverse=True)[:3]))  # noqa: E731
    actual = (2**1 - 1) / log2(2) + 0 + (2**2 - 1) / log2(4)
    assert ndcg(ranking, run_1, 3) == pytest.approx(actual / ideal(run_1))
    assert ndcg(ranking, run_2, 3) == pytest.approx(actual / ideal(run_2))
    assert ndcg(ranking, run_1, 3) != pytest.approx(ndcg(ranking, run_2, 3))
    assert MEASURES["ndcg"](ranking, store, 3) == pytest.approx(actual / ideal(store))
