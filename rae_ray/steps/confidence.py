"""What a run's votes say, for the manifest's `confidence` section: confidence histogram, agreement between
samples and between judges, and each judge's calls, tokens and cost. Counted on Ray; only sums reach the driver."""

from __future__ import annotations

from typing import Any

import polars as pl

from rae_ray.runtime import Job, to_polars
from rae_ray.stages.votes import HISTOGRAM_BINS, confidence_counts, vote_agreement, vote_confusions

USAGE = ("llm_calls", "prompt_tokens", "completion_tokens", "cached_tokens")


def usage_by_judge(votes) -> dict[str, dict[str, int]]:
    """Calls and tokens of each judge model (votes' `model` column), and its votes answered by the store."""
    from ray.data.aggregate import Count, Sum

    frame = to_polars(votes.groupby("model").aggregate(
        Count(alias_name="votes"), *(Sum(c, alias_name=c) for c in USAGE)))
    hits = to_polars(votes.filter(expr=_is_hit()).groupby("model").count())
    hit_counts = dict(zip(hits["model"].to_list(), hits["count()"].to_list())) if hits.height else {}
    return {row["model"]: {**{c: int(row[c] or 0) for c in ("votes", *USAGE)},
                           "cache_hits": int(hit_counts.get(row["model"], 0))}
            for row in frame.iter_rows(named=True)}


def _is_hit():
    from ray.data.expressions import col

    return col("cache_hit") == True  # noqa: E712


def confidence_summary(job: Job, labels, votes) -> dict[str, Any]:
    config = job.config
    annotate = config.llm.annotate
    by_bin = to_polars(labels.select_columns(["confidence"]).map_batches(confidence_counts, batch_format="pyarrow"))
    by_bin = by_bin.group_by("bin").agg(pl.col("pairs", "confidence_sum", "unanimous").sum()).sort("bin")
    graded = int(by_bin["pairs"].sum()) if by_bin.height else 0
    confusions = to_polars(labels.select_columns(["votes"]).map_batches(vote_confusions, batch_format="pyarrow"),
                           schema={"slot_a": pl.String, "slot_b": pl.String, "grade_a": pl.Int64, "grade_b": pl.Int64,
                                   "n": pl.Int64})
    confusions = confusions.group_by("slot_a", "slot_b", "grade_a", "grade_b").agg(pl.col("n").sum())
    failed = labels.filter(expr=_has_failed_votes()).count()
    usage = usage_by_judge(votes)
    judges = {}
    for model, _ in annotate.judges:
        figures = usage.get(model, {"votes": 0, **{c: 0 for c in USAGE}, "cache_hits": 0})
        price = config.pricing.get(model)
        cost = None if price is None else price.cost(figures["prompt_tokens"], figures["cached_tokens"],
                                                     figures["completion_tokens"], batch=annotate.batch)
        judges[model] = {**figures, "cost_usd": round(cost, 6) if cost is not None else None}
    bins = {int(b): int(n) for b, n in zip(by_bin["bin"], by_bin["pairs"])} if by_bin.height else {}
    return {
        "samples": annotate.samples,
        "judges": judges,
        "votes_per_pair": annotate.votes_per_pair,
        "pairs_graded": graded,
        "pairs_with_failed_votes": failed,
        "mean_confidence": round(float(by_bin["confidence_sum"].sum()) / graded, 4) if graded else None,
        "unanimous_share": round(float(by_bin["unanimous"].sum()) / graded, 4) if graded else None,
        "histogram": [{"low": b / HISTOGRAM_BINS, "high": (b + 1) / HISTOGRAM_BINS, "pairs": bins.get(b, 0)}
                      for b in range(HISTOGRAM_BINS)],
        "agreement": vote_agreement(confusions, [g.grade for g in config.scale.grades]),
    }


def _has_failed_votes():
    from ray.data.expressions import col

    return col("votes_failed") > 0
