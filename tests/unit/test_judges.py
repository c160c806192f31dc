"""The judges table of a sweep, assembled from hand-built matched pairs and manifests (no Ray)."""

import polars as pl
import pytest

from rae_ray.judges import HUMAN_VS_HUMAN, JUDGE, JUDGES_SCHEMA, JudgeRun, best_judge, judges_lines, judges_table

# People's grades of five pairs in two queries: the label column (human_grade) and two raters.
PEOPLE = pl.DataFrame({
    "query": ["q1", "q1", "q1", "q2", "q2"],
    "product_id": ["p1", "p2", "p3", "p4", "p5"],
    "human_grade": [2, 1, 0, 2, 0],
    "r1": [2, 1, 0, 2, 0],
    "r2": [2, 0, 0, 1, 2],  # p5: the raters are two grades apart, but no judge saw p5
})


def matched(judge_grades: list) -> pl.DataFrame:
    return PEOPLE.with_columns(pl.Series("judge_grade", judge_grades, dtype=pl.Int64))


def manifest(annotate_calls: int, guideline_calls: int, cost: float | None) -> dict:
    return {
        "llm_calls": {"guidelines": guideline_calls, "annotate": annotate_calls},
        "tokens": {"guidelines": {"prompt": 100, "completion": 20, "cached": 0},
                   "annotate": {"prompt": 1000, "completion": 50, "cached": 400}},
        "cost_usd": {"guidelines": None, "annotate": None, "total": cost},
        "seconds": {"annotate": 3.0, "total": 12.5},
    }


RUNS = [
    # judges p1-p3 exactly as people do, p4 one grade off; did not judge p5
    JudgeRun("careful", "s-careful", "model-a", "model-g", matched([2, 1, 0, 1, None]), 1.0, manifest(4, 2, 0.0125)),
    # judges p1, p2 and p4 wrongly; p3 right; no guidelines, tau undefined
    JudgeRun("sloppy", "s-sloppy", "model-b", "none", matched([0, 2, 0, 0, None]), float("nan"), manifest(4, 0, None)),
]


def test_judge_rows_by_hand():
    table = judges_table(RUNS, {"r1": "r1", "r2": "r2"}, grades=[0, 1, 2], n_bootstrap=200, seed=0)
    assert table.schema == pl.Schema(JUDGES_SCHEMA)
    assert table["kind"].to_list() == [JUDGE, JUDGE, HUMAN_VS_HUMAN]
    careful, sloppy, people = table.iter_rows(named=True)
    assert (careful["variant"], careful["run_id"], careful["annotate_model"], careful["guidelines_model"]) == (
        "careful", "s-careful", "model-a", "model-g")
    assert (careful["n_pairs"], careful["n_queries"]) == (4, 2)  # p5 was not judged
    assert careful["exact"] == pytest.approx(3 / 4)
    # careful: confusion rows judge [1, 2, 1] (grades 0, 1, 2), columns people [1, 1, 2]; chance (1 + 2 + 2) / 16
    chance = 5 / 16
    assert careful["cohen_kappa"] == pytest.approx((3 / 4 - chance) / (1 - chance))
    assert sloppy["exact"] == pytest.approx(1 / 4) and sloppy["guidelines_model"] == "none"
    for row in (careful, sloppy, people):
        for name in ("exact", "cohen_kappa", "quadratic_weighted_kappa"):
            assert row[f"{name}_ci_low"] <= row[name] + 1e-12 <= row[f"{name}_ci_high"] + 2e-12
    assert careful["kendall_tau"] == 1.0 and sloppy["kendall_tau"] is None  # NaN becomes null
    # usage sums the stages of the manifest
    assert (careful["llm_calls"], careful["prompt_tokens"], careful["completion_tokens"], careful["cached_tokens"]) == (
        6, 1100, 70, 400)
    assert careful["cost_usd"] == 0.0125 and sloppy["cost_usd"] is None and careful["seconds"] == 12.5


def test_people_are_compared_on_the_pairs_a_judge_saw():
    table = judges_table(RUNS, {"r1": "r1", "r2": "r2"}, n_bootstrap=0)
    people = table.filter(kind=HUMAN_VS_HUMAN).row(0, named=True)
    assert (people["rater_a"], people["rater_b"], people["variant"], people["llm_calls"]) == ("r1", "r2", None, None)
    # p1-p4 (p5, judged by nobody, is left out): r1 2,1,0,2 vs r2 2,0,0,1 -> 2 of 4 equal
    assert (people["n_pairs"], people["exact"]) == (4, 0.5)
    assert people["exact_ci_low"] is None  # no resamples: no interval
    three = judges_table(RUNS[:1], {"human": "human_grade", "r1": "r1", "r2": "r2"}, n_bootstrap=0)
    assert three.filter(kind=HUMAN_VS_HUMAN).select("rater_a", "rater_b").rows() == [
        ("human", "r1"), ("human", "r2"), ("r1", "r2")]


def test_printed_table_marks_the_best_judge():
    table = judges_table(RUNS, {"r1": "r1", "r2": "r2"}, n_bootstrap=100)
    assert best_judge(table) == "careful"
    lines = judges_lines(table)
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 2 and "careful" in marked[0] and marked[1].startswith("* best judge by Cohen's kappa: careful")
    assert any(line.startswith("  sloppy") or line.lstrip().startswith("sloppy") for line in lines)
    assert any("people: r1 vs r2" in line for line in lines)
    # fixed width: in the agreement block every row ends its `pairs` column at the header's position
    header = next(line for line in lines if "pairs" in line and "queries" in line)
    end = header.index("pairs") + len("pairs")
    rows = [line for line in lines[lines.index(header) + 1:] if line.strip()][:3]
    assert all(line[end - 1].isdigit() and line[end] == " " for line in rows)
    assert best_judge(table.filter(kind=HUMAN_VS_HUMAN)) is None
