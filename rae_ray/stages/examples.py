"""People's graded examples for the judge's prompt (llm.annotate.examples): which ones, and the block they make.

Pure functions on small polars frames (the human-labelled pairs of the run's queries).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import polars as pl

from rae_ray.stages.annotate import product_for_prompt

EXAMPLES_SCHEMA = {"query": pl.String, "examples": pl.String, "examples_id": pl.String}


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pick_examples(candidates: pl.DataFrame, per_query: int) -> pl.DataFrame:
    """Up to `per_query` rows of each query, spread over the grades: the top grade's first product, then the next
    grade's, and so on round the grades again; within a grade by a hash of the product id (the same choice on every
    run, whatever the row order). candidates: query, product_id, grade and the product's fields."""
    if candidates.is_empty():
        return candidates
    ranked = candidates.with_columns(
        pl.col("product_id").map_elements(_stable_hash, return_dtype=pl.String).alias("_hash")
    ).with_columns(
        pl.col("_hash").rank("ordinal").over(["query", "grade"]).alias("_turn")
    )
    return (
        ranked.sort(["query", "_turn", "grade", "_hash"], descending=[False, False, True, False])
        .group_by("query", maintain_order=True).head(per_query)
        .drop("_hash", "_turn")
    )


def example_blocks(chosen: pl.DataFrame, names: Mapping[int, str]) -> pl.DataFrame:
    """One row per query: `examples`, the JSON text of its examples as the prompt shows them ({product, grade,
    label}), and `examples_id`, a hash of that text (part of the label key)."""
    rows = []
    for (query,), group in chosen.group_by("query", maintain_order=True):
        shown = [{"product": product_for_prompt(row), "grade": row["grade"], "label": names.get(row["grade"])}
                 for row in group.iter_rows(named=True)]
        text = json.dumps(shown, sort_keys=True, ensure_ascii=False)
        rows.append({"query": query, "examples": text, "examples_id": _stable_hash(text)[:20]})
    return pl.DataFrame(rows, schema=EXAMPLES_SCHEMA)
