"""Evaluate: from per-query scores and a source of ranked lists and labels to every table of a run, without I/O.

sources   where ranked lists and judge labels come from (`EvaluationSource`, `FrameSource`)
findings  segments, worst queries, regressions (with the products behind them)
agreement the judge against people (`HumanLabels` -> `AgreementTables`), from `metrics.agreement`
review    the review queue
result    `evaluate(...)` -> `EvaluationResult`; `rae_ray.outputs` writes it, `rae_ray.report` renders it
"""

from rae_ray.evaluation.agreement import AgreementTables, HumanLabels, agreement_tables
from rae_ray.evaluation.findings import (
    REGRESSION_SCHEMA,
    WORST_SCHEMA,
    locale_segments,
    problem_queries,
    regression_pairs,
    regression_queries,
    regressions,
    segments_from_log,
)
from rae_ray.evaluation.result import SIMULATED_MARK, EvaluationResult, evaluate
from rae_ray.evaluation.review import REVIEW_SCHEMA, review_queue
from rae_ray.evaluation.sources import (
    LABEL_SCHEMA,
    QRELS,
    RUN,
    RUN_SCHEMA,
    EvaluationSource,
    FrameSource,
    conform_labels,
)

__all__ = [
    "LABEL_SCHEMA",
    "QRELS",
    "REGRESSION_SCHEMA",
    "REVIEW_SCHEMA",
    "RUN",
    "RUN_SCHEMA",
    "SIMULATED_MARK",
    "WORST_SCHEMA",
    "AgreementTables",
    "EvaluationResult",
    "EvaluationSource",
    "FrameSource",
    "HumanLabels",
    "agreement_tables",
    "conform_labels",
    "evaluate",
    "locale_segments",
    "problem_queries",
    "regression_pairs",
    "regression_queries",
    "regressions",
    "review_queue",
    "segments_from_log",
]
