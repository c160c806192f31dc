"""Structured outputs the LLM stages ask for, as pydantic models (sent as JSON schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GUIDELINE_SCHEMA_NAME = "query_guideline"
JUDGEMENT_SCHEMA_NAME = "relevance_judgement"
CAPTION_SCHEMA_NAME = "image_caption"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Requirement(_Strict):
    aspect: str = Field(description="What the requirement is about: product type, brand, colour, size, ...")
    value: str = Field(description="What the query asks for on that aspect.")
    importance: Literal["must", "high", "medium", "low"]


class GradeDefinition(_Strict):
    grade: int
    name: str
    definition: str = Field(description="What this grade means for this query.")


class QueryGuideline(_Strict):
    """Query-specific annotation guideline (the paper's step 2)."""

    query_intent: str
    requirements: list[Requirement]
    grade_definitions: list[GradeDefinition]


class RelevanceJudgement(_Strict):
    """One (query, product) judgement: reasoning first, then the grade."""

    reasoning: str
    grade: int
    label: str


class ImageCaption(_Strict):
    """Structured description of one product image."""

    product_type: str
    colours: list[str]
    pattern: str
    material: str
    visible_text: str
    details: str


def response_format(model: type[BaseModel], name: str) -> dict:
    """OpenAI `response_format` for strict JSON-schema output of `model`."""
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": model.model_json_schema(), "strict": True},
    }
