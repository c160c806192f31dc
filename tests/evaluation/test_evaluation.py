"""`evaluate` on a hand-built case: every table worked out by hand (the files: test_outputs.py)."""

import math
from pathlib import Path

import polars as pl
import pytest

from rae_ray.config import HumanLabelsConfig
from rae_ray.evaluation import REVIEW_SCHEMA, FrameSource, HumanLabels
from rae_ray.label_files import load_human_labels

from .conftest import SCRIPT_TITLE, WRITTEN, XSS_QUERY, run_small, small_human, small_labels, small_log


def test_files_and_comparisons(small_result):
    for name in WRITTEN:
        assert Path(small_result.files[name]) == Path(small_result.root, name) and Path(small_result.root, name).exists()
    comparisons = pl.read_parquet(small_result.files["metrics/comparisons.parquet"])
    assert comparisons.columns == ["ranker_a", "ranker_b", "metric", "k", "delta", "ci_low", "ci_high", "p_value",
                                   "p_adjusted", "wins", "ties", "losses", "n_queries", "significant"]
    ndcg = comparisons.filter(metric="ndcg").row(0, named=True)
    assert (ndcg["ranker_a"], ndcg["ranker_b"]) == ("new", "old")  # baseline on the right
    old_red = 1.0  # p1 (2), p2 (1), p3 (0) is the ideal order of the pool {2, 1, 0, 0}
    new_red = (2**2 - 1) / math.log2(4) / ((2**2 - 1) + (2**1 - 1) / math.log2(3))  # p3 (0), p4 (0), p1 (2)
    new_xss = (2**1 - 1) / math.log2(3)  # x2 (0), x1 (1) against x1 (1), x2 (0)
    assert ndcg["delta"] == pytest.approx(((new_red - old_red) + 0.0 + (new_xss - 1.0)) / 3)
    assert (ndcg["wins"], ndcg["ties"], ndcg["losses"]) == (0, 1, 2)
    # exact over 2**3 sign patterns: |sum| is reached when the two non-zero diffs share a sign (2 x 2 of the 8)
    assert ndcg["p_value"] == pytest.approx(4 / 2**3)
    segments = pl.read_parquet(small_result.files["metrics/segments.parquet"])
    assert set(segments.select("segment_type", "segment").unique().rows()) == {
        ("traffic", "head"), ("traffic", "torso"), ("traffic", "tail"), ("locale", "de"), ("locale", "en")}
    en = segments.filter(ranker="new", segment="en", metric="ndcg")
    assert en["n_queries"][0] == 2 and en["value"][0] == pytest.approx((1.0 + new_xss) / 2)


def test_worst_queries_carry_products_and_reasoning(small_result):
    worst = small_result.worst_queries
    new = worst.filter(ranker="new")
    # share irrelevant@3: red shoes 2/3, hostile query 1/2, tv 0 (t2 has no grade, so it is not counted)
    assert new.select("position", "query").unique(maintain_order=True).rows() == [(1, "red shoes"), (2, XSS_QUERY), (3, "tv")]
    red = new.filter(query="red shoes")
    assert red["product_id"].to_list() == ["p3", "p4"] and red["rank"].to_list() == [1, 2]
    assert red["title"].to_list() == ["Shoe horn", SCRIPT_TITLE]
    assert red["reasoning"][0].startswith("[simulated judge]")
    tv = new.filter(query="tv")
    assert tv["product_id"].to_list() == ["t2"] and tv["grade"][0] is None and tv["error"][0].startswith("HTTP 500")


def test_regressions_name_what_changed(small_result):
    regressions = small_result.regressions
    assert set(regressions.select("ranker", "baseline").unique().rows()) == {("new", "old")}
    red = regressions.filter(query="red shoes")
    assert red["position"][0] == 1 and red["delta"][0] == pytest.approx(red["value"][0] - red["baseline_value"][0])
    changes = dict(zip(red["product_id"], red["change"]))
    assert changes == {"p4": "added_irrelevant", "p3": "promoted_irrelevant", "p2": "dropped_relevant"}
    p2 = red.filter(product_id="p2").row(0, named=True)
    assert p2["rank"] is None and p2["baseline_rank"] == 2 and p2["reasoning"].endswith("dark red")
    xss = regressions.filter(query=XSS_QUERY)
    assert xss["position"][0] == 2 and xss["product_id"].to_list() == ["x2"]
    assert regressions.filter(query="tv").height == 0  # same list: no regression


def test_agreement_by_hand(small_result):
    tables = small_result.agreement
    # judge vs human on the pairs both graded: p1 2/2, p2 1/1, p3 0/2, p4 0/0, t1 2/1, x1 1/0, x2 0/0
    judge = tables.summary.filter(kind="judge_vs_human").row(0, named=True)
    assert judge["n"] == 7 and judge["exact"] == pytest.approx(4 / 7)
    confusion = {(r["judge_grade"], r["human_grade"]): r["n"] for r in tables.confusion.iter_rows(named=True)}
    assert confusion[(0, 0)] == 2 and confusion[(0, 2)] == 1 and confusion[(1, 0)] == 1 and confusion[(2, 1)] == 1
    assert sum(confusion.values()) == 7
    top = tables.per_grade.filter(grade=2).row(0, named=True)
    assert (top["precision"], top["recall"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2))
    # raters (mapped): p1 2/2, p2 1/0, p3 2/1, t1 1/2, t2 0/0, t9 2/2, x1 0/0, x2 0/0; p4 lacks rater_2
    people = tables.summary.filter(kind="human_vs_human").row(0, named=True)
    assert (people["rater_a"], people["rater_b"], people["n"]) == ("rater_1", "rater_2", 8)
    assert people["exact"] == pytest.approx(5 / 8)
    assert tables.summary.filter(kind="judge_vs_rater")["rater_b"].to_list() == ["rater_1", "rater_2"]
    hard = tables.hard_disagreements
    assert hard.select("query", "product_id", "judge_grade", "human_grade").rows() == [("red shoes", "p3", 0, 2)]
    assert "shoe horn" in hard["reasoning"][0]
    assert tables.coverage == {"human_pairs": 9, "examples_held_out": 0, "human_overridden": 0, "judged_pairs": 7,
                               "judge_errors": 1, "not_judged": 1}
    system = tables.system.row(0, named=True)
    assert system["n_rankers"] == 2 and system["n_queries"] == 3 and -1 <= system["kendall_tau"] <= 1


def test_system_counts_the_queries_compared(tmp_path):
    """agreement/system.parquet: n_queries are the human-labelled queries the run scored, not the human file's."""
    human = small_human()
    elsewhere = pl.DataFrame(  # two queries people labelled that this run never saw
        {"query": ["lamp", "lamp", "sofa"], "product_id": ["l1", "l2", "s1"], "grade": [2, 0, 1], "rater_1": [2, 0, 1],
         "rater_2": [2, 1, 1]},
        schema=human.frame.schema,
    )
    wider = HumanLabels(frame=pl.concat([human.frame, elsewhere]), rater_columns=human.rater_columns, source="people")
    result = run_small(str(tmp_path), human=wider)
    system = result.agreement.system.row(0, named=True)
    assert system["n_queries"] == small_log()["query"].n_unique() == 3
    written = pl.read_parquet(tmp_path / "agreement" / "system.parquet")
    assert written["n_queries"].to_list() == [3]


def test_review_queue_priority(small_result):
    queue = small_result.review_queue
    assert queue.schema == pl.Schema(REVIEW_SCHEMA)
    assert queue.select("review_reason", "product_id").rows() == [
        ("hard_disagreement", "p3"),
        ("disagreement", "x1"),  # both raters differ from the judge
        ("disagreement", "t1"),  # one rater differs
        ("stage_error", "t2"),
        ("boundary", "p2"),  # middle grade on a product a finding rests on
    ]
    assert queue["priority"].to_list() == [1, 2, 2, 3, 4]
    assert queue["human_grade"].null_count() == queue.height
    assert queue.filter(product_id="p3")["known_human_grade"][0] == 2
    assert queue.filter(product_id="p3")["title"][0] == "Shoe horn"
    csv = pl.read_csv(small_result.files["review/queue.csv"])
    assert csv.columns == list(REVIEW_SCHEMA) and csv.height == queue.height


def test_without_human_labels(tmp_path):
    result = run_small(str(tmp_path), human=False)
    assert result.agreement is None and not (tmp_path / "agreement").exists()
    assert result.review_queue["review_reason"].to_list() == ["stage_error", "boundary", "boundary"]
    assert result.simulated


def test_frame_source_and_human_loader(tmp_path):
    source = FrameSource(small_log(), small_labels())
    assert source.ranked_lists(["tv"])["product_id"].to_list() == ["t1", "t2", "t1", "t2"]
    pairs = pl.DataFrame({"query": ["tv", "tv"], "product_id": ["t1", "nope"]})
    assert source.labels_matching(pairs)["product_id"].to_list() == ["t1"]
    assert source.failed_labels(5)["product_id"].to_list() == ["t2"]
    assert source.failed_labels(0).height == 0

    path = tmp_path / "people.csv"
    pl.DataFrame({"query": ["a", "a"], "product_id": ["1", "2"], "final": [3, 1], "r1": [2, 0]}).write_csv(path)
    human = load_human_labels(HumanLabelsConfig(uri=str(path), column="final", rater_columns=["r1"],
                                                grade_map={3: 2, 2: 1, 1: 1, 0: 0}))
    assert isinstance(human, HumanLabels) and human.rater_columns == ("r1",)
    assert human.frame.select("grade", "r1").rows() == [(2, 1), (1, 0)]
