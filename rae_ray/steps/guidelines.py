"""Guidelines: one per unique query, from the label store or else written by the LLM."""

from __future__ import annotations

from typing import Any

from rae_ray.labelstore.cached import GUIDELINE_SPEC, cached_stage
from rae_ray.runtime import Job, write
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.guidelines import GuidelineStage


def write_guidelines(job: Job, pairs, stage_config: LLMStageConfig | None) -> tuple[Any, dict[str, int]]:
    """One guideline per unique query (store first, then the LLM); written to guidelines/. No stage config
    (llm.guidelines.enabled false): no guideline and no call, (None, counts)."""
    from ray.data.aggregate import Max
    from ray.data.expressions import col

    judgeable = pairs.filter(expr=col("pair_error").is_null())
    if stage_config is None:
        return None, {"queries": judgeable.groupby("query", num_partitions=job.parts).count().count()}
    queries = judgeable.groupby("query", num_partitions=job.parts).aggregate(Max("guideline_id", alias_name="guideline_id"))
    guidelines = cached_stage(queries, GUIDELINE_SPEC, GuidelineStage, stage_config, job.config.compute.guidelines,
                              store=job.store, run_id=job.run_id, parts=job.parts)
    counts = {"queries": guidelines.count()}
    write(guidelines, job.layout.guidelines, job.storage, "guidelines")
    return guidelines, counts
