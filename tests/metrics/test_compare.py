"""Paired ranker comparisons: randomization test against scipy, Holm by hand, chorus significance."""

import numpy as np
import polars as pl
import pytest
from scipy import stats

from rae_ray.metrics.compare import (
    COMPARISONS_SCHEMA,
    bonferroni,
    compare_rankers,
    holm,
    randomization_p_values,
    randomization_test,
)
from rae_ray.metrics.evaluate import QUERY_METRICS_SCHEMA, bootstrap_ci, bootstrap_intervals


def scipy_p_value(a, b, n_resamples, seed):
    result = stats.permutation_test(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return result.pvalue


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    m = 4  # sorted: 0.005, 0.01, 0.03, 0.04
    first, second, third = m * 0.005, (m - 1) * 0.01, (m - 2) * 0.03
    fourth = max(third, (m - 3) * 0.04)  # step-down stays monotone
    np.testing.assert_allclose(holm(p), [second, fourth, third, first])
    np.testing.assert_allclose(holm([0.6, 0.5]), [max(min(1, 2 * 0.5), min(1, 1 * 0.6)), min(1, 2 * 0.5)])
    adjusted = holm([0.02, np.nan, 0.03])  # NaN kept, not counted in m
    assert np.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [2 * 0.02, max(2 * 0.02, 1 * 0.03)])
    np.testing.assert_allclose(bonferroni([0.01, 0.4]), [2 * 0.01, min(1, 2 * 0.4)])


def test_randomization_exact_by_hand():
    # 2**3 sign patterns of (1, 2, 3): |sum| = 6, 4, 2, 0 twice each; only the two extreme reach 6
    assert randomization_test([1.0, 2.0, 3.0], n_permutations=100) == pytest.approx(2 / 2**3)
    assert randomization_test([0.0, 0.0, 0.0], n_permutations=100) == 1.0
    assert np.isnan(randomization_test([], n_permutations=100))


@pytest.mark.parametrize("seed", range(4))
def test_randomization_exact_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=11) / 4  # ties and zero differences, as metric scores have
    b = np.clip(a + rng.integers(-1, 2, size=11) / 4 + 0.1 * rng.standard_normal(11).round(1), 0, 1)
    ours = randomization_test(a - b, n_permutations=10000)  # 2**11 <= 10000: exact
    assert ours == pytest.approx(scipy_p_value(a, b, n_resamples=10000, seed=seed), rel=1e-12)


@pytest.mark.parametrize("shift", [0.0, 0.03, 0.06, 0.1])  # p from ~0.97 down to ~0.003
def test_randomization_monte_carlo_matches_scipy(shift):
    rng = np.random.default_rng(42)
    a = rng.uniform(size=40)
    b = np.clip(a + rng.normal(-shift, 0.25, size=40), 0, 1)
    ours = randomization_test(a - b, n_permutations=20000, rng=np.random.default_rng(1))
    theirs = scipy_p_value(a, b, n_resamples=20000, seed=2)
    assert ours == pytest.approx(theirs, abs=0.01)


def test_paired_bootstrap_ci_covers_the_mean():
    diffs = np.random.default_rng(0).normal(0.1, 0.2, size=200)  # paired: the bootstrap of the per-query differences
    low, high = bootstrap_ci(diffs, n_bootstrap=2000, confidence=0.95, rng=np.random.default_rng(1))
    half_width = 1.96 * diffs.std() / np.sqrt(diffs.size)
    assert low == pytest.approx(diffs.mean() - half_width, abs=0.01)
    assert high == pytest.approx(diffs.mean() + half_width, abs=0.01)


def small_query_metrics():
    rows = [  # ranker, query, value (ndcg@10); "c" lacks q3
        ("a", "q1", 0.5), ("a", "q2", 0.7), ("a", "q3", 0.2), ("a", "q4", 0.9),
        ("b", "q1", 0.4), ("b", "q2", 0.7), ("b", "q3", 0.6), ("b", "q4", 0.1),
        ("c", "q1", 0.5), ("c", "q2", 0.1), ("c", "q4", 0.3),
    ]  # fmt: skip
    return pl.DataFrame(
        [(r, q, "ndcg", 10, v) for r, q, v in rows], schema=QUERY_METRICS_SCHEMA, orient="row"
    )


def test_compare_rankers_small():
    table = compare_rankers(small_query_metrics(), n_bootstrap=200, n_permutations=1000)
    assert table.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert table.select("ranker_a", "ranker_b").rows() == [("a", "b"), ("a", "c"), ("b", "c")]
    a_b = table.row(0, named=True)
    assert a_b["delta"] == pytest.approx(((0.5 - 0.4) + (0.7 - 0.7) + (0.2 - 0.6) + (0.9 - 0.1)) / 4)
    assert (a_b["wins"], a_b["ties"], a_b["losses"], a_b["n_queries"]) == (2, 1, 1, 4)
    a_c = table.row(1, named=True)  # only q1, q2, q4 are shared
    assert a_c["delta"] == pytest.approx(((0.5 - 0.5) + (0.7 - 0.1) + (0.9 - 0.3)) / 3)
    assert a_c["n_queries"] == 3
    # 2**3 patterns of (0, 0.6, 0.6): |sum| reaches 1.2 for the 2 x 2 patterns with equal signs on the 0.6s
    assert a_c["p_value"] == pytest.approx(4 / 2**3)
    np.testing.assert_allclose(table["p_adjusted"], holm(table["p_value"].to_numpy()))


def test_compare_rankers_baseline_and_adjust():
    table = compare_rankers(small_query_metrics(), baseline="b", n_bootstrap=0, adjust="none")
    assert table.select("ranker_a", "ranker_b").rows() == [("a", "b"), ("c", "b")]
    assert table["p_adjusted"].to_list() == table["p_value"].to_list()
    assert table["ci_low"].null_count() == 2
    bonf = compare_rankers(small_query_metrics(), baseline="b", n_bootstrap=0, adjust="bonferroni")
    np.testing.assert_allclose(bonf["p_adjusted"], np.minimum(1, 2 * bonf["p_value"].to_numpy()))
    with pytest.raises(ValueError, match="baseline"):
        compare_rankers(small_query_metrics(), baseline="z")
    with pytest.raises(ValueError, match="adjust"):
        compare_rankers(small_query_metrics(), adjust="fdr")


def test_significant_is_decided_on_the_adjusted_p_value():
    table = compare_rankers(small_query_metrics(), n_bootstrap=0, n_permutations=1000)
    assert table["significant"].to_list() == [p < 0.05 for p in table["p_adjusted"].to_list()]
    # alpha between the smallest and the largest p (no adjustment): some rows are significant, some not
    table = compare_rankers(small_query_metrics(), n_bootstrap=0, n_permutations=1000, adjust="none")
    alpha = float(np.mean([table["p_adjusted"].min(), table["p_adjusted"].max()]))
    split = compare_rankers(small_query_metrics(), n_bootstrap=0, n_permutations=1000, adjust="none", alpha=alpha)
    assert split["significant"].to_list() == [p < alpha for p in split["p_adjusted"].to_list()]
    assert 0 < split["significant"].sum() < split.height
    with pytest.raises(ValueError, match="alpha"):
        compare_rankers(small_query_metrics(), alpha=1.5)


def test_chorus_rankers_ordered_and_significant(chorus_query_metrics):
    table = compare_rankers(chorus_query_metrics)
    assert table.height == 3 * 5 * 2  # pairs x metrics x ks, Holm over all of them
    ndcg10 = {
        (row["ranker_a"], row["ranker_b"]): row
        for row in table.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10)).iter_rows(named=True)
    }
    assert set(ndcg10) == {("bm25-v1", "random-v0"), ("bm25-v1", "tuned-v2"), ("random-v0", "tuned-v2")}
    assert ndcg10[("bm25-v1", "random-v0")]["delta"] > 0  # bm25 > random
    assert ndcg10[("bm25-v1", "tuned-v2")]["delta"] < 0  # tuned > bm25
    assert ndcg10[("random-v0", "tuned-v2")]["delta"] < 0  # tuned > random
    for row in ndcg10.values():
        assert row["p_adjusted"] < 0.05 and row["significant"]
        assert row["ci_low"] <= row["delta"] <= row["ci_high"] and (row["ci_low"] > 0 or row["ci_high"] < 0)
        assert row["wins"] + row["ties"] + row["losses"] == row["n_queries"] == 135
    assert table.equals(compare_rankers(chorus_query_metrics))  # seeded


@pytest.mark.parametrize("n", [9, 40])  # exact enumeration, Monte Carlo
def test_matrix_tests_equal_column_by_column(n):
    diffs = np.random.default_rng(n).normal(0.05, 0.3, size=(n, 3)).round(2)
    p = randomization_p_values(diffs, n_permutations=2000, rng=np.random.default_rng(7))
    for j in range(3):  # the columns share sign patterns: the same draws as testing each alone
        assert p[j] == randomization_test(diffs[:, j], n_permutations=2000, rng=np.random.default_rng(7))
    low, high = bootstrap_intervals(diffs, n_bootstrap=300, rng=np.random.default_rng(3))
    for j in range(3):
        alone = bootstrap_ci(diffs[:, j], n_bootstrap=300, rng=np.random.default_rng(3))
        assert (low[j], high[j]) == pytest.approx(alone, rel=1e-12)  # same resamples; BLAS may sum in another order


def test_a_row_does_not_depend_on_the_other_rows(chorus_query_metrics):
    from polars.testing import assert_frame_equal

    columns = ["ranker_a", "ranker_b", "metric", "k", "delta", "ci_low", "ci_high", "p_value", "wins", "n_queries"]
    full = compare_rankers(chorus_query_metrics, n_bootstrap=200, n_permutations=2000)
    alone = compare_rankers(
        chorus_query_metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10)), n_bootstrap=200,
        n_permutations=2000,
    )
    in_full = full.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10)).select(columns)
    assert_frame_equal(in_full, alone.select(columns), check_exact=False, rel_tol=1e-12, abs_tol=1e-15)


def test_randomization_rejects_nan():
    """A NaN difference has no sign to flip: an error, not p = 0 (it made every |sum| comparison false)."""
    with pytest.raises(ValueError, match="NaN"):
        randomization_test([0.1, float("nan"), 0.2], n_permutations=100)
    with pytest.raises(ValueError, match="NaN"):
        randomization_test(np.random.default_rng(0).normal(size=80).tolist() + [float("nan")], n_permutations=100)
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        randomization_p_values(np.array([[0.1, 0.2], [0.3, np.nan]]), n_permutations=100)
