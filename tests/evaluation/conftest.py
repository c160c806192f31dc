"""Fixtures: a small hand-built evaluation case (every section of the report, hostile text) and the chorus CLI run."""

from __future__ import annotations

import polars as pl
import pytest

from rae_ray.cli import main
from rae_ray.config import MetricsConfig
from rae_ray.evaluation import FrameSource, HumanLabels, evaluate, segments_from_log
from rae_ray.io import RunLayout, Storage
from rae_ray.metrics.evaluate import query_metrics
from rae_ray.outputs import write_evaluation

XSS_QUERY = "<img src=x onerror=alert(2)>"
SCRIPT_TITLE = "<script>alert(1)</script>"
SIM = "[simulated judge] "
HUMAN_MAP = {3: 2, 2: 1, 1: 1, 0: 0}


def small_log() -> pl.DataFrame:
    rows = [  # ranker, query, rank, product_id; "new" regresses on red shoes and on the hostile query
        ("old", "red shoes", 1, "p1"), ("old", "red shoes", 2, "p2"), ("old", "red shoes", 3, "p3"),
        ("new", "red shoes", 1, "p3"), ("new", "red shoes", 2, "p4"), ("new", "red shoes", 3, "p1"),
        ("old", "tv", 1, "t1"), ("old", "tv", 2, "t2"), ("new", "tv", 1, "t1"), ("new", "tv", 2, "t2"),
        ("old", XSS_QUERY, 1, "x1"), ("old", XSS_QUERY, 2, "x2"), ("new", XSS_QUERY, 1, "x2"), ("new", XSS_QUERY, 2, "x1"),
    ]  # fmt: skip
    counts = {"red shoes": 100, "tv": 50, XSS_QUERY: 1}
    locales = {"red shoes": "de", "tv": "en", XSS_QUERY: "en"}
    log = pl.DataFrame(rows, schema=["ranker", "query", "rank", "product_id"], orient="row")
    return log.with_columns(
        pl.col("query").replace_strict(counts).alias("query_count"),
        pl.col("query").replace_strict(locales).alias("locale"),
    )


def small_labels() -> pl.DataFrame:
    rows = [  # query, product_id, grade, label, reasoning, error
        ("red shoes", "p1", 2, "highly_relevant", SIM + "red shoes, as asked", None),
        ("red shoes", "p2", 1, "acceptable_substitute", SIM + "shoes, but dark red", None),
        ("red shoes", "p3", 0, "irrelevant", SIM + "a shoe horn <b>not</b> shoes", None),
        ("red shoes", "p4", 0, "irrelevant", SIM + "a script, not shoes", None),
        ("tv", "t1", 2, "highly_relevant", SIM + "a television", None),
        ("tv", "t2", None, None, None, "HTTP 500 after 6 retries"),
        (XSS_QUERY, "x1", 1, "acceptable_substitute", SIM + "an image tag & more", None),
        (XSS_QUERY, "x2", 0, "irrelevant", SIM + "unrelated", None),
    ]
    return pl.DataFrame(rows, schema={"query": pl.String, "product_id": pl.String, "grade": pl.Int64, "label": pl.String,
                                      "reasoning": pl.String, "error": pl.String}, orient="row")


def small_products() -> pl.DataFrame:
    titles = {"p1": "Red sneaker", "p2": "Burgundy sneaker", "p3": "Shoe horn", "p4": SCRIPT_TITLE,
              "t1": "55 inch TV", "t2": "TV remote", "x1": "Picture frame", "x2": "Garden hose"}
    return pl.DataFrame({"product_id": list(titles), "title": list(titles.values())})


def small_human() -> HumanLabels:
    rows = [  # query, product_id, final, rater_1, rater_2 on the people's 0-3 scale
        ("red shoes", "p1", 3, 3, 3), ("red shoes", "p2", 1, 1, 0), ("red shoes", "p3", 3, 3, 2),
        ("red shoes", "p4", 0, 0, None), ("tv", "t1", 2, 2, 3), ("tv", "t2", 0, 0, 0), ("tv", "t9", 3, 3, 3),
        (XSS_QUERY, "x1", 0, 0, 0), (XSS_QUERY, "x2", 0, 0, 0),
    ]  # fmt: skip
    frame = pl.DataFrame(rows, schema=["query", "product_id", "grade", "rater_1", "rater_2"], orient="row")
    frame = frame.with_columns(
        pl.col(c).replace_strict(HUMAN_MAP, default=None, return_dtype=pl.Int64) for c in ("grade", "rater_1", "rater_2")
    )
    return HumanLabels(frame=frame, rater_columns=("rater_1", "rater_2"), source="people.parquet")


SMALL_MANIFEST = {
    "run_id": "small-run", "status": "succeeded", "started_at": "2026-01-01T10:00:00+00:00",
    "finished_at": "2026-01-01T10:01:05+00:00", "pairs_in_log": 14, "pairs_unique": 8, "queries": 3,
    "llm_calls": {"guidelines": 3, "annotate": 8}, "cache_hits": {"guidelines": 0, "annotate": 2},
    "errors": {"input": 0, "guidelines": 0, "annotate": 1},
    "tokens": {"guidelines": {"prompt": 900, "completion": 300, "cached": 0},
               "annotate": {"prompt": 4000, "completion": 400, "cached": 1000}},
    "cost_usd": {"guidelines": 0.0003, "annotate": 0.0012, "total": 0.0015},
    "seconds": {"prepare": 2.5, "guidelines": 3.0, "annotate": 7.25, "metrics": 1.0, "total": 65.0},
    "config": {"llm": {"annotate": {"model": "sim-judge"}, "guidelines": {"model": "sim-judge"}}},
}  # fmt: skip

WRITTEN = [  # every file of the small case but report.html
    "metrics/rankers.parquet", "metrics/queries.parquet", "metrics/comparisons.parquet", "metrics/segments.parquet",
    "metrics/worst_queries.parquet", "metrics/regressions.parquet", "agreement/summary.parquet",
    "agreement/confusion.parquet", "agreement/per_grade.parquet", "agreement/hard_disagreements.parquet",
    "agreement/rankers.parquet", "agreement/system.parquet", "agreement/coverage.parquet", "review/queue.parquet",
    "review/queue.csv", "trec/qrels.txt", "trec/old.run", "trec/new.run", "trec/queries.parquet",
]  # fmt: skip

SMALL_CONFIG = MetricsConfig(ks=[3], bootstrap=200, permutations=1000, baseline="old", worst_n=3)


def evaluate_small(human: bool | HumanLabels = True, **overrides):
    """(evaluate's result, its source) for the small case; nothing written."""
    log = small_log()
    labels = small_labels()
    by_query = query_metrics(log, labels, ks=[3])
    source = FrameSource(log, labels, small_products())
    result = evaluate(
        query_metrics=by_query, source=source, config=overrides.pop("config", SMALL_CONFIG),
        segments=segments_from_log(log), human=small_human() if human is True else (human or None), **overrides,
    )
    return result, source


def run_small(root: str, storage: Storage | None = None, human: bool | HumanLabels = True, **overrides):
    """The small case evaluated and written under root."""
    result, source = evaluate_small(human, **overrides)
    return write_evaluation(result, source, storage or Storage(), RunLayout(root))


@pytest.fixture(scope="session")
def small_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-run")
    return run_small(str(root))


@pytest.fixture(scope="session")
def chorus_run(chorus, tmp_path_factory):
    """`rae-ray metrics` on chorus with the human final_rating as the labels and the three raters as people."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("chorus-metrics")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([
            "metrics", "--log", str(chorus / "search_log.parquet"), "--labels", str(chorus / "judgments.parquet"),
            "--label-column", "final_rating", "--grade-map", "3=2,2=1,1=1,0=0",
            "--human", str(chorus / "judgments.parquet"), "--human-column", "final_rating",
            "--rater-columns", "rater_1,rater_2,rater_3", "--catalog", str(chorus / "products.parquet"),
            "--out", str(out),
        ])
    assert code == 0
    return out, printed.getvalue()
