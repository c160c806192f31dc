"""Annotation stage: one LLM judgement per unique (query, product) pair, against the query's guideline."""

from __future__ import annotations

import json

import pyarrow as pa

from rae_ray.inputs import PRODUCT_COLUMNS
from rae_ray.llm.prompts import ANNOTATION_PROMPT_VERSION, annotation_messages
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement
from rae_ray.stages.common import LLMStageConfig, gather_calls, make_client, missing_columns, usage_columns

# Longer product text is cut before it reaches a prompt (a 1 MB title must not become a 1 MB request).
MAX_FIELD_CHARS = {"title": 500, "brand": 200, "category": 300, "description": 2000, "attributes": 2000}

LABEL_COLUMNS = [
    "query", "product_id", "product_hash", "grade", "label", "reasoning", "model", "prompt_version",
    "guideline_id", "caption_id", "cache_hit", "error",
]


def product_for_prompt(row: dict) -> dict:
    """The product fields the judge sees, cut to size; attributes parsed from JSON text when they parse."""
    product = {}
    for column in PRODUCT_COLUMNS:
        value = row.get(column)
        if value in (None, "") or column == "image_url":
            continue
        text = value[: MAX_FIELD_CHARS[column]] if isinstance(value, str) else value
        if column == "attributes" and isinstance(text, str):
            try:
                text = json.loads(value) if len(value) <= MAX_FIELD_CHARS["attributes"] else text
            except json.JSONDecodeError:
                pass
        product[column] = text
    return product


class AnnotateStage:
    """Actor for `map_batches`: pairs with their guideline -> one label row per pair, with usage."""

    required_columns = ("query", "product_id", "product_hash", "pair_error", "guideline_id", "guideline", "guideline_error")

    def __init__(self, config: LLMStageConfig):
        self.config = config
        self.client = make_client(config)
        self.names = {g["grade"]: g["name"] for g in config.scale}

    def _check(self, judgement: RelevanceJudgement) -> None:
        if judgement.grade not in self.names:
            raise ValueError(f"grade {judgement.grade} is not on the scale {sorted(self.names)}")

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing_columns(batch, self.required_columns, "AnnotateStage")
        rows = batch.to_pylist()
        model = self.config.model
        calls = []
        for row in rows:
            if row["pair_error"] is not None or row["guideline"] is None:
                calls.append(None)
                continue
            messages = annotation_messages(
                row["query"], json.loads(row["guideline"]), self.config.scale, product_for_prompt(row)
            )
            calls.append(
                self.client.structured(
                    messages, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, model.model, model.temperature,
                    model.max_output_tokens, check=self._check,
                )
            )
        results = await gather_calls(calls)
        grades, errors = [], []
        for row, result in zip(rows, results):
            if result is None:
                grades.append(None)
                errors.append(row["pair_error"] or f"no guideline for this query: {row['guideline_error'] or 'unknown reason'}")
            else:
                grades.append(result.value.grade if result.value else None)
                errors.append(result.error)
        n = len(rows)
        return pa.table(
            {
                "query": batch.column("query"),
                "product_id": batch.column("product_id"),
                "product_hash": batch.column("product_hash"),
                "grade": pa.array(grades, pa.int16()),
                "label": pa.array([self.names.get(g) if g is not None else None for g in grades], pa.string()),
                "reasoning": pa.array([r.value.reasoning if r is not None and r.value else None for r in results], pa.string()),
                "model": pa.array([model.model] * n, pa.string()),
                "prompt_version": pa.array([ANNOTATION_PROMPT_VERSION] * n, pa.string()),
                "guideline_id": batch.column("guideline_id"),
                "caption_id": pa.nulls(n, pa.string()),
                "cache_hit": pa.array([False] * n, pa.bool_()),
                "error": pa.array(errors, pa.string()),
                **usage_columns(results),
            }
        )
