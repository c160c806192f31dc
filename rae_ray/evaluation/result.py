"""`evaluate`: everything after per-query metrics, for the Ray job and the offline `rae-ray metrics` alike.

Pure: it asks the source for what it needs and returns an `EvaluationResult`; `rae_ray.outputs` writes it and
`rae_ray.report` renders it. The main cut-off of the finding tables is max(config.ks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from rae_ray.config import MetricsConfig
from rae_ray.evaluation.agreement import AgreementTables, HumanLabels, agreement_tables
from rae_ray.evaluation.findings import (
    finding_evidence,
    problem_queries,
    regression_pairs,
    regression_queries,
    regressions,
)
from rae_ray.evaluation.review import review_queue
from rae_ray.evaluation.sources import RUN_SCHEMA, EvaluationSource, conform_labels, empty_labels
from rae_ray.metrics.compare import compare_rankers
from rae_ray.metrics.evaluate import (
    QUERY_METRICS_SCHEMA,
    SEGMENT_METRICS_SCHEMA,
    ranker_metrics,
    require_columns,
    segment_metrics,
    worst_queries,
)

__all__ = ["SIMULATED_MARK", "EvaluationResult", "evaluate"]

SIMULATED_MARK = "[simulated judge]"  # how the simulated endpoint's reasoning starts (rae_ray.sim.judge)


@dataclass
class EvaluationResult:
    """What `evaluate` computed. `root` and `files` (relative name -> URI) are set by the writer
    (`rae_ray.outputs.write_evaluation`); `simulated`: some judge reasoning carries the simulated judge's mark;
    `ideal`: where nDCG's ideal came from (`mode` run or store, and with store its judging context and counts)."""

    k: int
    config: MetricsConfig
    rankers: pl.DataFrame
    queries: pl.DataFrame
    comparisons: pl.DataFrame
    segments: pl.DataFrame
    worst_queries: pl.DataFrame
    regressions: pl.DataFrame
    review_queue: pl.DataFrame
    agreement: AgreementTables | None = None
    human_source: str | None = None
    simulated: bool = False
    grades: tuple[int, ...] = (0, 1, 2)
    root: str = ""
    files: dict[str, str] = field(default_factory=dict)
    ideal: dict = field(default_factory=lambda: {"mode": "run"})

    @property
    def ranker_names(self) -> list[str]:
        """Every ranker with a per-query score, by name."""
        return sorted(self.queries["ranker"].unique().to_list())


def _is_simulated(*label_frames: pl.DataFrame | None) -> bool:
    for frame in label_frames:
        if frame is not None and "reasoning" in frame.columns and frame.height:
            if frame["reasoning"].str.starts_with(SIMULATED_MARK).any():
                return True
    return False


def evaluate(
    *,
    query_metrics: pl.DataFrame,
    source: EvaluationSource,
    config: MetricsConfig,
    segments: pl.DataFrame | None = None,
    human: HumanLabels | None = None,
    grades: Sequence[int] = (0, 1, 2),
    review_limit: int = 2000,
    ideal: dict | None = None,
    held_out: pl.DataFrame | None = None,
    scale: str | None = None,
) -> EvaluationResult:
    """Ranker table, comparisons, segments, worst queries, regressions, agreement and review queue.

    query_metrics: per-query scores (QUERY_METRICS_SCHEMA); segments: (query, segment_type, segment) rows;
    grades: the label scale (for agreement and the "boundary" review reason); ideal: how the per-query scores'
    nDCG ideal was built (default: from the labels of this run,
    `{"mode": config.ideal}`); held_out: (query, product_id) pairs
    shown to the judge as examples, never scored for agreement; scale: the scale as the review queue shows it
    (`labelstore.human.scale_text`; default the grades alone).
    """
    require_columns(query_metrics, "query_metrics", tuple(QUERY_METRICS_SCHEMA))
    query_metrics = query_metrics.select(pl.col(n).cast(t) for n, t in QUERY_METRICS_SCHEMA.items())
    grades = tuple(sorted(grades))
    k = max(config.ks)

    by_ranker = ranker_metrics(query_metrics, n_bootstrap=config.bootstrap, seed=config.seed)
    comparisons = compare_rankers(
        query_metrics, baseline=config.baseline, n_bootstrap=config.bootstrap, n_permutations=config.permutations,
        seed=config.seed, adjust=config.adjust,
    )
    if segments is not None and segments.height:
        by_segment = segment_metrics(query_metrics, segments)
    else:
        by_segment = pl.DataFrame(schema=SEGMENT_METRICS_SCHEMA)

    rankers = sorted(query_metrics["ranker"].unique().to_list())
    worst_keys = worst_queries(query_metrics, "share_irrelevant", k, config.worst_n, tie_metric="ndcg")
    pairs = regression_pairs(rankers, config.baseline)
    regression_keys = regression_queries(query_metrics, pairs, k, config.worst_n)
    finding_queries = sorted(set(worst_keys["query"].to_list()) | set(regression_keys["query"].to_list()))
    ranked = source.ranked_lists(finding_queries) if finding_queries else pl.DataFrame(schema=RUN_SCHEMA)
    labels = conform_labels(source.labels_for(finding_queries) if finding_queries else empty_labels())
    worst = problem_queries(query_metrics, ranked, labels, k, config.worst_n)
    regressed = regressions(query_metrics, ranked, labels, pairs, k, config.worst_n)

    tables = judge_matched = None
    if human is not None:
        pairs_frame = human.frame.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        judge_matched = source.labels_matching(pairs_frame)
        human_queries = sorted(pairs_frame["query"].unique().to_list())
        tables = agreement_tables(human, judge_matched, query_metrics, source.ranked_lists(human_queries), grades, k,
                                  held_out=held_out)

    failed = conform_labels(source.failed_labels(review_limit))
    evidence = finding_evidence(ranked, worst_keys, regression_keys, k)
    finding_labels = labels.join(evidence, on=["query", "product_id"], how="semi")
    # Labels whose votes disagreed (sources with votes; `least_confident` is optional in a source).
    uncertain = getattr(source, "least_confident", None)
    queue = review_queue(agreement=tables, failed=failed, finding_labels=finding_labels, grades=grades,
                         limit=review_limit, scale=scale,
                         uncertain=conform_labels(uncertain(review_limit)) if uncertain else None)
    return EvaluationResult(
        k=k, config=config, rankers=by_ranker, queries=query_metrics, comparisons=comparisons, segments=by_segment,
        worst_queries=worst, regressions=regressed, review_queue=queue, agreement=tables,
        human_source=human.source if human is not None else None,
        simulated=_is_simulated(labels, failed, judge_matched), grades=grades,
        ideal=dict(ideal) if ideal is not None else {"mode": config.ideal},
    )
