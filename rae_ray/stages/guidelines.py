"""Guideline stage: one LLM call per unique query writes that query's annotation guideline."""

from __future__ import annotations

import pyarrow as pa

from rae_ray.llm.prompts import GUIDELINE_PROMPT_VERSION, guideline_messages
from rae_ray.llm.schemas import GUIDELINE_SCHEMA_NAME, QueryGuideline
from rae_ray.stages.common import LLMStageConfig, gather_calls, make_client, missing_columns, usage_columns
from rae_ray.labelstore.keys import guideline_id

GUIDELINE_COLUMNS = ["query", "guideline_id", "guideline", "model", "prompt_version", "cache_hit", "error"]


class GuidelineStage:
    """Actor for `map_batches`: batch of unique queries -> batch of guidelines (JSON text) with usage."""

    required_columns = ("query",)

    def __init__(self, config: LLMStageConfig):
        self.config = config
        self.client = make_client(config)

    def _check(self, guideline: QueryGuideline) -> None:
        wanted = {g["grade"] for g in self.config.scale}
        got = {d.grade for d in guideline.grade_definitions}
        if not wanted <= got:
            raise ValueError(f"grade_definitions must define every grade of the scale {sorted(wanted)}, got {sorted(got)}")

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing_columns(batch, self.required_columns, "GuidelineStage")
        queries = batch.column("query").to_pylist()
        model = self.config.model
        results = await gather_calls(
            [
                self.client.structured(
                    guideline_messages(query, self.config.scale),
                    QueryGuideline,
                    GUIDELINE_SCHEMA_NAME,
                    model,
                    check=self._check,
                )
                for query in queries
            ]
        )
        return pa.table(
            {
                "query": pa.array(queries, pa.string()),
                "guideline_id": batch.column("guideline_id") if "guideline_id" in batch.column_names else pa.array(
                    [guideline_id(q, model.model, GUIDELINE_PROMPT_VERSION, self.config.scale) for q in queries], pa.string()
                ),
                "guideline": pa.array([r.value.model_dump_json() if r.value else None for r in results], pa.string()),
                "model": pa.array([model.model] * len(queries), pa.string()),
                "prompt_version": pa.array([GUIDELINE_PROMPT_VERSION] * len(queries), pa.string()),
                "cache_hit": pa.array([False] * len(queries), pa.bool_()),
                "error": pa.array([r.error for r in results], pa.string()),
                **usage_columns(results),
            }
        )
