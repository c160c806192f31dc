"""Structured outputs the LLM stages ask for, as pydantic models (sent as JSON schema)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GUIDELINE_SCHEMA_NAME = "query_guideline"
JUDGEMENT_SCHEMA_NAME = "relevance_judgement"
CAPTION_SCHEMA_NAME = "image_caption"
# The config section (llm.<stage>) whose model answers each schema, named in errors that need a setting changed.
STAGE_OF_SCHEMA = {GUIDELINE_SCHEMA_NAME: "guidelines", JUDGEMENT_SCHEMA_NAME: "annotate", CAPTION_SCHEMA_NAME: "captions"}


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


def judgement_format(grades: Sequence[Mapping[str, Any]]) -> dict:
    """`response_format` of a judgement on this scale: `grade` and `label` are enums of the scale's grades and
    names, so constrained decoding cannot leave the scale. Still valid in OpenAI's strict mode (every property
    required, no additional properties)."""
    fmt = response_format(RelevanceJudgement, JUDGEMENT_SCHEMA_NAME)
    schema = copy.deepcopy(fmt["json_schema"]["schema"])
    schema["properties"]["grade"]["enum"] = [int(g["grade"]) for g in grades]
    schema["properties"]["label"]["enum"] = [str(g["name"]) for g in grades]
    fmt["json_schema"]["schema"] = schema
    return fmt


# Length limits for servers that decode under the schema (llama.cpp, vLLM): a small model that loops inside a free
# text field or a list then ends its reply instead of running into max_tokens (SmolLM2-135M wrote 300 tokens of
# reasoning and was cut; with the limit it finished in about 100). OpenAI's strict mode rejects these keywords.
MAX_TEXT_CHARS = 600
MAX_LIST_ITEMS = 8


def with_length_limits(fmt: Mapping[str, Any]) -> dict:
    """`fmt` with maxLength on every free-text string and maxItems on every list of its JSON schema."""

    def limit(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: limit(value) for key, value in node.items()}
            if node.get("type") == "string" and "enum" not in node:
                node.setdefault("maxLength", MAX_TEXT_CHARS)
            if node.get("type") == "array":
                node.setdefault("maxItems", MAX_LIST_ITEMS)
            return node
        if isinstance(node, list):
            return [limit(item) for item in node]
        return node

    out = copy.deepcopy(dict(fmt))
    out["json_schema"] = {**out["json_schema"], "schema": limit(out["json_schema"]["schema"])}
    return out
