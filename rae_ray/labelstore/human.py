"""People's grades in the label store (kind "human"): a reviewer's decision on a (query, product content) pair.

A human record is keyed by the normalized query, the product's content hash and the scale's grades only: a
person's decision holds whatever the judge, its model, prompt or guideline, so a run takes it over any LLM label
of that pair and sends the pair to no LLM. It changes when the product's content changes (its hash) or the scale
does. `rae_ray.review_import` writes the records; the judge step (`steps.judge`) looks them up first.

Records are only added: a pair imported again is stored again, and a lookup takes the newest import (the store
keeps one record per key by the largest packed record, whose first field is `accepted_at`, the import time).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import pyarrow as pa

from rae_ray.labelstore.keys import normalize_query

HUMAN_KIND = "human"
HUMAN_KEY = "human_key"
# Columns of a stored human record besides its key. `accepted_at` (UTC ISO time of the import) sorts first of
# the stored names, so the store's one-record-per-key lookup (max of the record's JSON) takes the newest import.
HUMAN_RECORD = {
    "accepted_at": pa.string(), "query": pa.string(), "product_id": pa.string(), "product_hash": pa.string(),
    "grade": pa.int16(), "label": pa.string(), "note": pa.string(), "reviewer": pa.string(),
    "reviewed_at": pa.string(), "scale": pa.string(), "source_file": pa.string(),
}  # fmt: skip
# What the judge step reads back.
HUMAN_LOOKUP = {name: HUMAN_RECORD[name] for name in ("accepted_at", "grade", "label", "note", "reviewer", "reviewed_at")}
HUMAN_PREFIX = "human_"


def human_key(query: str, product_hash: str, grades: Sequence[int]) -> str:
    """What decides a person's grade: the normalized query, the product's content hash and the scale's grades."""
    key = json.dumps(["human", normalize_query(query), product_hash, sorted(int(g) for g in grades)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def add_human_keys(batch: pa.Table, grades: list[int]) -> pa.Table:
    """Add `human_key` to pairs that carry query and product_hash (null where either is missing)."""
    keys = [human_key(q, h, grades) if q is not None and h is not None else None
            for q, h in zip(batch.column("query").to_pylist(), batch.column("product_hash").to_pylist())]
    return batch.append_column(HUMAN_KEY, pa.array(keys, pa.string()))


def scale_text(scale: Sequence[dict]) -> str:
    """The scale as a review queue shows it to people: "2=highly_relevant;1=acceptable_substitute;0=irrelevant"."""
    return ";".join(f"{g['grade']}={g['name']}" for g in sorted(scale, key=lambda g: -g["grade"]))


def parse_scale_text(text: str) -> dict[int, str | None]:
    """Grade -> name of a `scale_text` ("2=a;1=b;0=c", or just "2;1;0": names None); ValueError when it is not one."""
    grades: dict[int, str | None] = {}
    for item in (text or "").split(";"):
        grade, _, name = item.strip().partition("=")
        value = int(grade.strip())
        if value in grades:
            raise ValueError(f"grade {value} twice")
        grades[value] = name.strip() or None
    if len(grades) < 2:
        raise ValueError("a scale needs at least two grades")
    return grades


def human_labels(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Pairs a person graded (looked up with HUMAN_PREFIX) as label rows of `schema` (the judge's output layout)
    plus `source` "human": the person's grade and label, their note as the reasoning, no model, no call, no error."""
    n = batch.num_rows
    given = {
        "grade": batch.column(HUMAN_PREFIX + "grade"), "label": batch.column(HUMAN_PREFIX + "label"),
        "reasoning": batch.column(HUMAN_PREFIX + "note"), "cache_hit": pa.array([True] * n, pa.bool_()),
        "image_status": pa.array(["none"] * n, pa.string()),
        "confidence": pa.nulls(n, pa.float64()),  # a person's decision, not a share of votes
    }
    columns = {}
    for field in schema:
        if field.name in given:
            column = given[field.name].cast(field.type)
        elif field.name in batch.column_names:
            column = batch.column(field.name).cast(field.type)  # as the store's hits hand it through
        elif pa.types.is_integer(field.type) or pa.types.is_floating(field.type):
            column = pa.array([0] * n, field.type)  # usage: no call was made
        else:
            column = pa.nulls(n, field.type)
        columns[field.name] = column
    columns["source"] = pa.array(["human"] * n, pa.string())
    return pa.table(columns)


def with_source(batch: pa.Table, source: str) -> pa.Table:
    """Add the `source` column (llm or human) to label rows."""
    return batch.append_column("source", pa.array([source] * batch.num_rows, pa.string()))
