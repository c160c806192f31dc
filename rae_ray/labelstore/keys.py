"""Every key of the label store, made here: what decides a guideline, a caption and a label, hashed.

A key changes exactly when something the result depends on changes, so a rerun reuses what is unchanged and
asks again for what is not.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Sequence

import pyarrow as pa

from rae_ray.images import image_id
from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION


def normalize_query(query: str) -> str:
    """Case-folded, NFKC, single-spaced: the form under which two queries are the same query."""
    return " ".join(unicodedata.normalize("NFKC", query).casefold().split())


def guideline_id(query: str, model: str, prompt_version: str, scale: list[dict]) -> str:
    """Everything that decides a guideline, hashed."""
    key = json.dumps([normalize_query(query), model, prompt_version, scale], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def add_guideline_ids(batch: pa.Table, model: str | None, prompt_version: str, scale: list[dict]) -> pa.Table:
    """Add `guideline_id` to rows that carry a query; null for all when model is None (guidelines off)."""
    if model is None:
        return batch.append_column("guideline_id", pa.nulls(batch.num_rows, pa.string()))
    ids = [guideline_id(q, model, prompt_version, scale) for q in batch.column("query").to_pylist()]
    return batch.append_column("guideline_id", pa.array(ids, pa.string()))


def caption_id(image: str, model: str, prompt_version: str = CAPTION_PROMPT_VERSION) -> str:
    """Everything that decides a caption, hashed: the image's content id (see `images.image_id`), model, prompt."""
    key = json.dumps([image, model, prompt_version])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def add_caption_ids(batch: pa.Table, model: str) -> pa.Table:
    """Add `caption_id` to ImageStage rows (null unless the fetch succeeded), e.g. to look captions up in a store."""
    ids = [
        caption_id(iid or image_id(data_url), model) if status == "ok" and data_url else None
        for status, data_url, iid in zip(
            batch.column("image_status").to_pylist(),
            batch.column("image_data_url").to_pylist(),
            batch.column("image_id").to_pylist() if "image_id" in batch.column_names else [None] * batch.num_rows,
        )
    ]
    if "caption_id" in batch.column_names:
        batch = batch.drop_columns(["caption_id"])
    return batch.append_column("caption_id", pa.array(ids, pa.string()))


def label_key(guideline_id: str | None, product_hash: str, model: str, prompt_version: str, scale: Sequence[dict],
              image_mode: str = "text", caption_id: str | None = None, query: str | None = None,
              examples_id: str | None = None) -> str:
    """Everything that decides a label: guideline (query, its model and prompt), product content, judge, scale, and
    the people's examples shown (`examples_id`, a hash of them; None: no examples, the key of a run without them).

    Without a guideline (llm.guidelines.enabled false) the normalized query takes its place.
    """
    decided_by = guideline_id if guideline_id is not None else ["query", normalize_query(query or "")]
    parts = [decided_by, product_hash, model, prompt_version, list(scale), image_mode, caption_id]
    if examples_id is not None:
        parts.append(["examples", examples_id])
    key = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def vote_key(label_key: str, sample: int) -> str:
    """The store key of one vote: sample 0 is the label's own key (a store from before votes still answers it),
    sample i > 0 that key and i, hashed. The judge model is in `label_key` already."""
    if sample == 0:
        return label_key
    return hashlib.sha256(json.dumps([label_key, "sample", sample]).encode()).hexdigest()[:32]


def add_label_keys(batch: pa.Table, model: str, prompt_version: str, scale: list[dict], image_mode: str,
                   examples_prompt_version: str | None = None) -> pa.Table:
    """Add `label_key` to pairs that carry query, guideline_id and product_hash, and the image's caption or content id.

    Pairs with an `examples_id` (people's examples in the prompt) are keyed with it and `examples_prompt_version`.
    """
    guideline_ids = batch.column("guideline_id").to_pylist()
    hashes = batch.column("product_hash").to_pylist()
    queries = batch.column("query").to_pylist()
    image_column = next((c for c in ("caption_id", "image_id") if c in batch.column_names), None)
    captions = batch.column(image_column).to_pylist() if image_column else [None] * batch.num_rows
    examples = batch.column("examples_id").to_pylist() if "examples_id" in batch.column_names else [None] * batch.num_rows
    keys = [label_key(g, h, model, prompt_version if e is None else examples_prompt_version, scale, image_mode, c, q, e)
            for g, h, c, q, e in zip(guideline_ids, hashes, captions, queries, examples)]
    return batch.append_column("label_key", pa.array(keys, pa.string()))


def judge_context(model: str, prompt_version: str, scale: Sequence[dict], image_mode: str,
                  guideline: tuple[str, str] | None, caption: tuple[str, str] | None) -> str:
    """Everything in a label key that is not the pair's own, hashed: labels with the same context differ only by
    query, product content and image, so they were judged alike (the pool of `metrics.ideal: store`).

    `guideline` and `caption`: (model, prompt version) of the guideline and caption stages, None when off.
    """
    key = json.dumps([model, prompt_version, list(scale), image_mode, guideline, caption], sort_keys=True,
                     default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def add_judge_context(batch: pa.Table, context: str) -> pa.Table:
    """Add `query_key` (the normalized query) and `judge_context` to pairs: what the label store is asked by."""
    queries = [normalize_query(q) if q is not None else None for q in batch.column("query").to_pylist()]
    return batch.append_column("query_key", pa.array(queries, pa.string())).append_column(
        "judge_context", pa.array([context] * batch.num_rows, pa.string()))
