"""Which queries to evaluate: all of them, or N drawn from head/torso/tail strata by query_count, seeded."""

from __future__ import annotations

import numpy as np
import polars as pl

from rae_ray.config import SamplingConfig
from rae_ray.metrics.evaluate import traffic_segments

STRATA = ("head", "torso", "tail")


def assign_strata(query_counts: pl.DataFrame, head_share: float = 0.2, torso_share: float = 0.3) -> pl.DataFrame:
    """(query, query_count) -> (query, query_count, stratum), by the rule of `metrics.evaluate.traffic_segments`.

    Queries sorted by query_count descending (ties by query text): the first `head_share` of them are head,
    the next `torso_share` torso, the rest tail. A null count sorts last (tail).
    """
    segments = traffic_segments(query_counts, head_share, torso_share).select("query", pl.col("segment").alias("stratum"))
    return query_counts.join(segments, on="query").sort(["query_count", "query"], descending=[True, False], nulls_last=True)


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Split n draws over strata in proportion to their sizes (largest remainder), never more than a stratum has."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    raw = {s: n * size / total for s, size in sizes.items()}
    take = {s: int(np.floor(v)) for s, v in raw.items()}
    for s in sorted(raw, key=lambda s: (take[s] - raw[s], s))[: n - sum(take.values())]:
        take[s] += 1
    return {s: min(take[s], sizes[s]) for s in sizes}


def sample_queries(query_counts: pl.DataFrame, config: SamplingConfig) -> pl.DataFrame:
    """The chosen queries with their stratum: (query, query_count, stratum)."""
    strata = assign_strata(query_counts, config.head_share, config.torso_share)
    if config.mode == "all":
        return strata
    sizes = {s: strata.filter(pl.col("stratum") == s).height for s in STRATA}
    quotas = allocate(sizes, config.n_queries)
    rng = np.random.default_rng(config.seed)
    chosen = []
    for stratum in STRATA:
        members = strata.filter(pl.col("stratum") == stratum).sort("query")
        if quotas[stratum]:
            picks = rng.choice(members.height, size=quotas[stratum], replace=False)
            chosen.append(members[np.sort(picks)])
    return pl.concat(chosen) if chosen else strata.clear()
