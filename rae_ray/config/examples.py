"""`llm.annotate.examples`: products of the same query graded by people, shown to the judge in its prompt."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ExamplesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    uri: str = Field(
        description="Human labels (Parquet file or folder, or CSV; local, s3:// or sample:) with query, product_id "
        "and the grade column; the examples of a query are chosen among its pairs there that the run has product "
        "data for (pairs of the run's log). Pairs shown as examples are held out of every agreement figure."
    )
    column: str = Field(default="label", description="The grade column of `uri`.")
    grade_map: dict[int, int] = Field(
        default_factory=dict, description="Value of `column` -> project grade; empty means they are grades already."
    )
    per_query: int = Field(
        default=3, ge=1, le=20,
        description="At most this many graded products of the query go into each judgement's prompt, chosen "
        "deterministically (by a hash of the product id) and spread over the grades (the top grade first).",
    )
