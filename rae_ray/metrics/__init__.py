"""Ranking metrics, ranker comparisons and grader agreement (pure Python / numpy / polars, no Ray)."""

from rae_ray.metrics.agreement import agreement, hard_disagreements, kendall_tau, rater_agreement
from rae_ray.metrics.compare import compare_rankers, holm, randomization_test
from rae_ray.metrics.evaluate import (
    bootstrap_ci,
    bootstrap_intervals,
    query_metrics,
    ranker_metrics,
    ranker_order,
    segment_metrics,
    traffic_segments,
    worst_queries,
)
from rae_ray.metrics.measures import MEASURES, Measure, dcg, judged, mean_grade, ndcg, precision, share_irrelevant
from rae_ray.metrics.trec import write_qrels, write_run

__all__ = [
    "MEASURES",
    "Measure",
    "agreement",
    "bootstrap_ci",
    "bootstrap_intervals",
    "compare_rankers",
    "dcg",
    "hard_disagreements",
    "holm",
    "judged",
    "kendall_tau",
    "mean_grade",
    "ndcg",
    "precision",
    "query_metrics",
    "randomization_test",
    "ranker_metrics",
    "ranker_order",
    "rater_agreement",
    "segment_metrics",
    "share_irrelevant",
    "traffic_segments",
    "worst_queries",
    "write_qrels",
    "write_run",
]
