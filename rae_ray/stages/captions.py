"""Caption stage: one vision-model call per unique fetched image -> a structured description (JSON text)."""

from __future__ import annotations

import logging

import pyarrow as pa

from rae_ray.images import image_id
from rae_ray.labelstore.keys import add_caption_ids
from rae_ray.llm.client import CallResult
from rae_ray.llm.protocol import IMAGE_UNSUPPORTED
from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION, caption_messages
from rae_ray.llm.schemas import CAPTION_SCHEMA_NAME, ImageCaption
from rae_ray.stages.common import LLMStageConfig, gather_calls, make_client, missing_columns, usage_columns

CAPTION_COLUMNS = [
    "image_url", "image_id", "caption_id", "caption", "image_status", "model", "prompt_version", "cache_hit", "error",
]


class CaptionStage:
    """Actor for `map_batches`: ImageStage rows -> one caption row per image, with usage.

    Rows whose fetch failed pass through with their status, their fetch error and no call; `caption_id` is set
    only where there is a caption. Optional input
    column `caption` (JSON text, e.g. joined from a store by `caption_id`): where it is set, it is reused
    without a call and the row says `cache_hit`. Images with the same content inside a batch share one call.
    Once the endpoint says its model takes no images, the actor calls it no more: the rest get that error.
    """

    required_columns = ("image_url", "image_status", "image_data_url")

    def __init__(self, config: LLMStageConfig):
        self.config = config
        self.client = make_client(config)
        self.no_vision: str | None = None  # the endpoint's refusal, once it said its model takes no images

    async def _no_call(self) -> CallResult:
        return CallResult(error=self.no_vision, error_kind=IMAGE_UNSUPPORTED)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        missing_columns(batch, self.required_columns, "CaptionStage")
        model = self.config.model
        rows = add_caption_ids(batch, model.model).to_pylist()
        cached = [row.get("caption") for row in rows]
        calls: dict[str, object] = {}
        for row, known in zip(rows, cached):
            key = row["caption_id"]
            if key is not None and known is None and key not in calls:
                calls[key] = self._no_call() if self.no_vision is not None else self.client.structured(
                    caption_messages(row["image_data_url"]), ImageCaption, CAPTION_SCHEMA_NAME, model)
        done = dict(zip(calls, await gather_calls(list(calls.values()))))
        refusal = next((r.error for r in done.values() if r.error_kind == IMAGE_UNSUPPORTED), None)
        if refusal is not None and self.no_vision is None:
            self.no_vision = refusal
            logging.getLogger(__name__).warning(
                "captions: %s; this actor sends no more images (those pairs are judged on text)", refusal)
        # Usage is counted once, on the first row of each image.
        results, captions, errors, hits, counted = [], [], [], [], set()
        for row, known in zip(rows, cached):
            key = row["caption_id"]
            result = done.get(key) if known is None else None
            results.append(result if key not in counted else None)
            if result is not None:
                counted.add(key)
            if known is not None:
                captions.append(known)
                errors.append(None)
            elif result is not None:
                captions.append(result.value.model_dump_json() if result.value else None)
                errors.append(result.error)
            else:
                captions.append(None)
                errors.append(row.get("image_error") or (None if row["image_status"] == "ok" else row["image_status"]))
            hits.append(known is not None)
        n = len(rows)
        return pa.table(
            {
                "image_url": batch.column("image_url"),
                "image_id": (batch.column("image_id").cast(pa.string()) if "image_id" in batch.column_names
                             else pa.array([image_id(r["image_data_url"]) if r["image_data_url"] else None
                                            for r in rows], pa.string())),
                # Null where there is no caption: a label keyed by caption_id then always had that caption.
                "caption_id": pa.array([r["caption_id"] if c is not None else None for r, c in zip(rows, captions)],
                                       pa.string()),
                "caption": pa.array(captions, pa.string()),
                "image_status": batch.column("image_status"),
                "model": pa.array([model.model] * n, pa.string()),
                "prompt_version": pa.array([CAPTION_PROMPT_VERSION] * n, pa.string()),
                "cache_hit": pa.array(hits, pa.bool_()),
                "error": pa.array(errors, pa.string()),
                **usage_columns(results),
            }
        )
