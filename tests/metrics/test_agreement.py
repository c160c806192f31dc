"""Grader agreement: kappas by formula, Kendall's tau against scipy, chorus raters against the README."""

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from rae_ray.metrics.agreement import agreement, hard_disagreements, kendall_tau, rater_agreement

A = [0, 1, 2, 2, 1, 0, 2, 2]
B = [0, 2, 2, 1, 1, 0, 0, 2]


def test_agreement_by_formula():
    result = agreement(np.array(A), np.array(B))
    n = 8
    # confusion rows a, cols b:  a=0: b=0 x2 | a=1: b=1, b=2 | a=2: b=0, b=1, b=2 x2
    assert result["confusion"] == [[2, 0, 0], [0, 1, 1], [1, 1, 2]]
    assert result["n"] == n
    observed = (2 + 1 + 2) / n
    assert result["exact"] == pytest.approx(observed)
    rows, cols = [2, 2, 4], [3, 2, 3]
    chance = sum(r * c for r, c in zip(rows, cols)) / n**2
    assert result["cohen_kappa"] == pytest.approx((observed - chance) / (1 - chance))
    # quadratic weights w_ij = ((i - j) / 2)**2; kappa_w = 1 - sum(w O) / sum(w E), E_ij = rows_i * cols_j / n
    confusion = result["confusion"]
    w = lambda i, j: ((i - j) / 2) ** 2  # noqa: E731
    observed_w = sum(w(i, j) * confusion[i][j] for i in range(3) for j in range(3))
    expected_w = sum(w(i, j) * rows[i] * cols[j] / n for i in range(3) for j in range(3))
    assert result["quadratic_weighted_kappa"] == pytest.approx(1 - observed_w / expected_w)
    assert result["per_grade"][2] == {"precision": 2 / 4, "recall": 2 / 3, "n_a": 4, "n_b": 3}
    assert result["per_grade"][0] == {"precision": 2 / 2, "recall": 2 / 3, "n_a": 2, "n_b": 3}


def test_agreement_edge_cases():
    perfect = agreement(np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert perfect["exact"] == 1.0 and perfect["cohen_kappa"] == pytest.approx(1.0)
    one_grade = agreement(np.array([1, 1]), np.array([1, 1]))
    assert one_grade["exact"] == 1.0 and math.isnan(one_grade["cohen_kappa"])  # chance agreement is total
    assert math.isnan(one_grade["per_grade"][0]["precision"])
    dropped = agreement(np.array([0, np.nan, 2]), np.array([0, 1, np.nan]))
    assert dropped["n"] == 1
    assert agreement(np.array([]), np.array([]))["n"] == 0
    with pytest.raises(ValueError, match="not on the scale"):
        agreement(np.array([3]), np.array([2]))
    with pytest.raises(ValueError, match="same length"):
        agreement(np.array([1, 2]), np.array([2]))


def test_hard_disagreements():
    pairs = pl.DataFrame({"query": list("abcde"), "judge": [0, 2, 1, None, 2], "human": [2, 0, 2, 0, 2]})
    hard = hard_disagreements(pairs, "judge", "human")
    assert hard["query"].to_list() == ["a", "b"] and hard["distance"].to_list() == [2.0, 2.0]
    assert hard_disagreements(pairs, "judge", "human", min_distance=1)["query"].to_list() == ["a", "b", "c"]
    with pytest.raises(ValueError, match="llm"):
        hard_disagreements(pairs, "llm", "human")


def test_rater_agreement_pairs_on_common_rows():
    df = pl.DataFrame({"r1": A, "r2": B, "r3": [None, 1, 2, 2, None, 0, 2, 1]})
    table = rater_agreement(df, ["r1", "r2", "r3"])
    assert table.columns == ["rater_a", "rater_b", "n", "exact", "cohen_kappa", "quadratic_weighted_kappa"]
    assert table.select("rater_a", "rater_b").rows() == [("r1", "r2"), ("r1", "r3"), ("r2", "r3")]
    assert table["n"].to_list() == [8, 6, 6]
    assert table["exact"][0] == pytest.approx(agreement(np.array(A), np.array(B))["exact"])
    assert table["exact"][1] == pytest.approx(5 / 6)  # r1 vs r3 on rows 1,2,3,5,6,7: all equal but the last


def test_chorus_rater_agreement_matches_readme(chorus_judgments):
    table = rater_agreement(chorus_judgments, ["rater_1", "rater_2", "rater_3"])
    assert table["n"].to_list() == [3188, 3188, 3188]
    for row in table.iter_rows(named=True):  # README: 78-83% exact, kappa 0.61-0.69 (rounded)
        assert 0.78 <= round(row["exact"], 2) <= 0.83
        assert 0.61 <= round(row["cohen_kappa"], 2) <= 0.69


@pytest.mark.parametrize(
    "x, y",
    [
        ([0.54, 0.72, 0.85], [0.50, 0.70, 0.90]),
        ([0.54, 0.72, 0.85, 0.60], [0.50, 0.90, 0.70, 0.50]),
        ([1, 2, 2, 3, 5, 5], [1, 3, 2, 2, 4, 6]),
    ],
)
def test_kendall_tau_b_matches_scipy(x, y):
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_kendall_tau_by_formula_and_constant():
    # (1,1),(2,3),(3,2): pairs 12 concordant, 13 concordant, 23 discordant; no ties
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx((2 - 1) / math.sqrt(3 * 3))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


# --- agreement_by_query: pooled pairs, bootstrap over queries ------------------------------------------------


def test_agreement_by_query_pools_the_pairs_and_resamples_whole_queries():
    from rae_ray.metrics.agreement import agreement_by_query

    # q1: three pairs, all agree; q2: one pair, two grades apart.
    a = [2, 1, 0, 2]
    b = [2, 1, 0, 0]
    result = agreement_by_query(a, b, ["q1", "q1", "q1", "q2"], n_bootstrap=2000, seed=3)
    assert (result["n"], result["n_queries"]) == (4, 2)
    assert result["exact"] == pytest.approx(3 / 4)  # pooled; the mean of the queries' shares would be 1/2
    # confusion rows a [1, 1, 2], columns b [2, 1, 1]: chance (1*2 + 1*1 + 2*1) / 16
    chance = 5 / 16
    assert result["cohen_kappa"] == pytest.approx((3 / 4 - chance) / (1 - chance))
    # Resamples of two queries: {q1, q1} (p 1/4) exact 1, kappa 1; {q1, q2} (p 1/2) as above; {q2, q2} (p 1/4) exact 0,
    # kappa 0 (observed and expected disagreement are equal). Each end holds 1/4 of the resamples, more than 2.5%.
    assert (result["exact_ci_low"], result["exact_ci_high"]) == (0.0, 1.0)
    assert result["cohen_kappa_ci_low"] == pytest.approx(0.0) and result["cohen_kappa_ci_high"] == pytest.approx(1.0)


def test_one_query_gives_no_spread_where_resampling_pairs_would():
    from rae_ray.metrics.agreement import agreement_by_query

    result = agreement_by_query([0, 1, 2, 2], [0, 1, 1, 2], ["q"] * 4, n_bootstrap=500, seed=0)
    assert result["exact"] == pytest.approx(3 / 4)
    for name in ("exact", "cohen_kappa", "quadratic_weighted_kappa"):
        assert result[f"{name}_ci_low"] == pytest.approx(result[name])
        assert result[f"{name}_ci_high"] == pytest.approx(result[name])


def test_undefined_resamples_are_left_out_and_edge_cases():
    from rae_ray.metrics.agreement import agreement_by_query

    # q1 uses one grade only: a resample of q1 twice has an undefined kappa (chance agreement is total).
    result = agreement_by_query([1, 1, 0, 2], [1, 1, 0, 2], ["q1", "q1", "q2", "q2"], n_bootstrap=400, seed=1)
    assert result["cohen_kappa"] == pytest.approx(1.0)
    assert (result["cohen_kappa_ci_low"], result["cohen_kappa_ci_high"]) == (pytest.approx(1.0), pytest.approx(1.0))

    nan = float("nan")
    dropped = agreement_by_query([1, nan, 0], [1, 0, nan], ["q1", "q2", "q3"], n_bootstrap=0)
    assert (dropped["n"], dropped["n_queries"], dropped["exact"]) == (1, 1, 1.0)
    assert math.isnan(dropped["exact_ci_low"]) and math.isnan(dropped["exact_ci_high"])
    empty = agreement_by_query([], [], [], n_bootstrap=100)
    assert empty["n"] == 0 and math.isnan(empty["exact"]) and math.isnan(empty["exact_ci_high"])
    same = [agreement_by_query(A, B, list("aabbccdd"), n_bootstrap=300, seed=7) for _ in range(2)]
    assert same[0] == same[1]
    with pytest.raises(ValueError, match="same length"):
        agreement_by_query([0, 1], [0, 1], ["q"])
    with pytest.raises(ValueError, match="not on the scale"):
        agreement_by_query([0, 5], [0, 1], ["q", "q"])
