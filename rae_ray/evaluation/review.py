"""The review queue: pairs for people to check, most doubtful first.

Priority (lower first; a pair appears once, under its first reason):
    1 hard_disagreement  judge and human grades two or more grades apart
    2 disagreement       one grade apart (within it, pairs where more individual raters differ from the judge first)
    3 stage_error        the judge gave no grade (the label row carries an error)
    4 boundary           the judge gave a middle grade (neither the lowest nor the top one, e.g. "acceptable
                         substitute": where judges and people disagree most) to a product that a reported finding
                         rests on: the top k of a worst query or of a regression
    5 low_confidence     the judge's votes disagreed (llm.annotate.samples or panel: confidence below 1)

With votes, labels of confidence below 1 come first, least confident first, whatever their reason; the others
follow in priority order. `confidence` and `votes` ("model#sample=grade ...") are null without votes.

Pairs a person already graded (label source "human") are not queued again.

People fill `human_grade` (and optionally `note`, `reviewer`, `reviewed_at`); `rae-ray review import` reads the
file back (`rae_ray.review_import`) by query, product_hash and scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from rae_ray.evaluation.agreement import AgreementTables
from rae_ray.evaluation.sources import LABEL_SCHEMA, OPTIONAL_LABEL_COLUMNS, conform, conform_labels
from rae_ray.metrics.agreement import hard_disagreements

__all__ = ["REVIEW_REASONS", "REVIEW_SCHEMA", "review_queue"]

REVIEW_SCHEMA = {
    "priority": pl.Int64, "review_reason": pl.String, "query": pl.String, "product_id": pl.String,
    "product_hash": pl.String, "title": pl.String, "judge_grade": pl.Int64, "judge_label": pl.String,
    "reasoning": pl.String, "error": pl.String, "known_human_grade": pl.Int64, "scale": pl.String,
    "human_grade": pl.Int64, "note": pl.String, "reviewer": pl.String, "reviewed_at": pl.String,
    "confidence": pl.Float64, "votes": pl.String,
}  # fmt: skip
REVIEW_REASONS = {"hard_disagreement": 1, "disagreement": 2, "stage_error": 3, "boundary": 4, "low_confidence": 5}
VOTE_COLUMNS = ("confidence", "votes")


def _disagreements(agreement: AgreementTables) -> pl.DataFrame:
    """Pairs where judge and human differ by a grade or more, with how many individual raters differ too."""
    matched = agreement.matched
    raters = [c for c in matched.columns
              if c not in (*LABEL_SCHEMA, *OPTIONAL_LABEL_COLUMNS, "judge_grade", "human_grade", *VOTE_COLUMNS)]
    disagreeing_raters = pl.sum_horizontal(
        [(pl.col(c).is_not_null() & (pl.col(c) != pl.col("judge_grade"))).cast(pl.Int64) for c in raters]
    ) if raters else pl.lit(0)
    apart = hard_disagreements(matched, "judge_grade", "human_grade", min_distance=1)
    return apart.with_columns(
        pl.when(pl.col("distance") >= 2).then(pl.lit("hard_disagreement")).otherwise(pl.lit("disagreement"))
        .alias("review_reason"),
        pl.col("distance").cast(pl.Int64).alias("_distance"), disagreeing_raters.alias("_raters"),
        pl.col("human_grade").alias("known_human_grade"),
    ).drop("distance")


def _not_by_people(labels: pl.DataFrame) -> pl.DataFrame:
    """Labels without the pairs a person graded already (source "human")."""
    if "source" not in labels.columns:
        return labels
    return labels.filter(pl.col("source").is_null() | (pl.col("source") != "human"))


def review_queue(
    *,
    agreement: AgreementTables | None,
    failed: pl.DataFrame,
    finding_labels: pl.DataFrame,
    grades: Sequence[int] = (0, 1, 2),
    limit: int = 2000,
    scale: str | None = None,
    uncertain: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Pairs for human review, most doubtful first (see the module docstring for the priority); REVIEW_SCHEMA.

    finding_labels: the judge's labels of the top-k products behind the worst queries and regressions; scale: the
    `scale` column ("2=highly_relevant;1=...", `labelstore.human.scale_text`; default the grades alone).
    """
    grades = sorted(grades)
    scale = scale or ";".join(str(g) for g in reversed(grades))
    failed, finding_labels = (_not_by_people(f) for f in (failed, finding_labels))
    parts = []
    if agreement is not None:
        parts.append(_disagreements(agreement))
    if failed.height:
        parts.append(conform_labels(failed).rename({"grade": "judge_grade"}).with_columns(
            pl.lit("stage_error").alias("review_reason"), pl.lit(0).alias("_distance"), pl.lit(0).alias("_raters"),
        ))
    middle = [g for g in grades if g not in (grades[0], grades[-1])]
    if finding_labels.height and middle:
        parts.append(
            conform_labels(finding_labels).rename({"grade": "judge_grade"})
            .filter(pl.col("judge_grade").is_in(middle))
            .with_columns(pl.lit("boundary").alias("review_reason"), pl.lit(0).alias("_distance"), pl.lit(0).alias("_raters"))
        )
    if uncertain is not None and uncertain.height:
        parts.append(conform_labels(uncertain).rename({"grade": "judge_grade"}).with_columns(
            pl.lit("low_confidence").alias("review_reason"), pl.lit(0).alias("_distance"), pl.lit(0).alias("_raters"),
        ))
    if not parts:
        return pl.DataFrame(schema=REVIEW_SCHEMA)
    common = ["query", "product_id", "judge_grade", "label", "reasoning", "error", "review_reason", "_distance", "_raters"]
    optional = {"title": pl.String, "product_hash": pl.String, "known_human_grade": pl.Int64,
                "confidence": pl.Float64, "votes": pl.String}
    frames = [
        p.select(
            *[pl.col(c) for c in common],
            *[(pl.col(c) if c in p.columns else pl.lit(None)).cast(t).alias(c) for c, t in optional.items()],
        ).with_columns(pl.col("judge_grade").cast(pl.Int64), pl.col("_distance").cast(pl.Int64), pl.col("_raters").cast(pl.Int64))
        for p in parts
    ]
    queue = (
        pl.concat(frames, how="vertical_relaxed")
        .with_columns(pl.col("review_reason").replace_strict(REVIEW_REASONS, return_dtype=pl.Int64).alias("priority"),
                      # Votes that disagreed first, least confident first; every other label ranks as confident.
                      pl.when(pl.col("confidence") < 1).then(pl.col("confidence")).otherwise(1.0).alias("_doubt"))
        .sort(["_doubt", "priority", "_distance", "_raters", "query", "product_id"],
              descending=[False, False, True, True, False, False])
        .unique(subset=["query", "product_id"], keep="first", maintain_order=True)
        .head(limit)
    )
    # Titles known for a pair under another reason fill in where this row lacks one.
    titles = pl.concat(
        [f.select("query", "product_id", "title") for f in frames], how="vertical_relaxed"
    ).drop_nulls("title").unique(subset=["query", "product_id"], keep="first")
    queue = queue.drop("title").join(titles, on=["query", "product_id"], how="left", maintain_order="left")
    queue = queue.rename({"label": "judge_label"}).with_columns(
        pl.lit(scale).alias("scale"), pl.lit(None, dtype=pl.Int64).alias("human_grade"),
        *(pl.lit(None, dtype=pl.String).alias(c) for c in ("note", "reviewer", "reviewed_at")),
    )
    return conform(queue, REVIEW_SCHEMA)
