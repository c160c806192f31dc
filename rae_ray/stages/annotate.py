"""Annotation stage: one LLM judgement per unique (query, product) pair, against the query's guideline."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import pyarrow as pa

from rae_ray.inputs import PRODUCT_COLUMNS
from rae_ray.llm.client import CallResult
from rae_ray.llm.prompts import annotation_messages, annotation_prompt_version
from rae_ray.llm.protocol import IMAGE_UNSUPPORTED
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement, judgement_format
from rae_ray.stages.common import LLMStageConfig, gather_calls, make_client, missing_columns, usage_columns
from rae_ray.stages.votes import vote_model

# Longer product text is cut before it reaches a prompt (a 1 MB title must not become a 1 MB request).
MAX_FIELD_CHARS = {"title": 500, "brand": 200, "category": 300, "description": 2000, "attributes": 2000}

# Input columns handed through unchanged (the label store's key).
PASSTHROUGH = ("label_key",)
VOTE_PASSTHROUGH = ("pair_key", "vote_judge", "vote_sample")

LABEL_COLUMNS = [
    "query", "product_id", "product_hash", "grade", "label", "reasoning", "model", "prompt_version",
    "guideline_id", "caption_id", "image_id", "image_status", "cache_hit", "error",
]
# image_status of a label: "none" (text mode, or the product has no image_url), "ok" (the judge saw the caption
# or the image), else why not and the pair was judged on text alone: a fetch status of `rae_ray.images`
# (missing, refused, too_large, not_image, timeout, error), "caption_failed" (caption mode: the vision call
# failed, e.g. the vision model takes no images), "image_rejected" (direct mode: the endpoint refused this image;
# judged again without it) or "no_vision" (direct mode: the endpoint said its model takes no images at all; from
# then on the actor sends no image, and judges each such pair on text without a failed call first).
NO_IMAGE = "none"
CAPTION_FAILED = "caption_failed"
IMAGE_REJECTED = "image_rejected"
NO_VISION = "no_vision"
# Errors of a call with an image that a call without it may not hit (the image was refused, not the endpoint down).
_IMAGE_REFUSAL = ("HTTP 400", "HTTP 413", "HTTP 415", "HTTP 422")


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
    """Actor for `map_batches`: pairs with their guideline -> one label row per pair, with usage.

    Optional image inputs, joined onto the pairs by `image_url`: `caption` (JSON text) with `caption_id` and
    `image_status` (caption mode: the description goes into the prompt), or `image_data_url` with `image_status`
    (direct mode: the request carries the image). Without them the pair is judged on its text (text mode).
    With `config.guidelines` false (the ablation) the pairs need no guideline columns and are judged without one.
    """

    required_columns = ("query", "product_id", "product_hash", "pair_error", "guideline_id", "guideline", "guideline_error")
    required_without_guidelines = ("query", "product_id", "product_hash", "pair_error")

    def __init__(self, config: LLMStageConfig):
        self.config = config
        self.client = make_client(config)
        self.names = {g["grade"]: g["name"] for g in config.scale}
        self.response_format = judgement_format(config.scale)
        self.no_vision: str | None = None  # the endpoint's refusal, once it said its model takes no images
        self.sample_models: dict[int, object] = {}

    def _model_for(self, sample: int):
        """The judge's settings for a vote's sample (sample i > 0: seed i), made once per sample."""
        if sample not in self.sample_models:
            self.sample_models[sample] = vote_model(self.config.model, sample)
        return self.sample_models[sample]

    def _stop_sending_images(self, error: str) -> None:
        if self.no_vision is None:
            self.no_vision = error
            logging.getLogger(__name__).warning(
                "annotate: %s; this actor judges every pair on text from now on (image_status no_vision)", error)

    def _check(self, judgement: RelevanceJudgement) -> None:
        if judgement.grade not in self.names:
            raise ValueError(f"grade {judgement.grade} is not on the scale {sorted(self.names)}")

    def _image_inputs(self, row: dict) -> tuple[dict | None, str | None, str]:
        """(caption, image data URL, image_status) of one pair; no optional image columns means text mode."""
        caption_mode, direct_mode = "caption" in row, "image_data_url" in row and "caption" not in row
        if not (caption_mode or direct_mode) or ("image_url" in row and not row["image_url"]):
            return None, None, NO_IMAGE
        status = row.get("image_status") or "error"  # an image_url that reached no image row: a wiring fault
        if status != "ok":
            return None, None, status
        if caption_mode:
            try:
                return json.loads(row["caption"]), None, "ok"
            except (TypeError, json.JSONDecodeError):
                return None, None, CAPTION_FAILED
        if not row["image_data_url"]:
            return None, None, "error"
        return (None, None, NO_VISION) if self.no_vision is not None else (None, row["image_data_url"], "ok")

    def _messages(self, row: dict, caption: dict | None, data_url: str | None) -> list[dict]:
        guideline = json.loads(row["guideline"]) if self.config.guidelines else None
        examples = json.loads(row["examples"]) if row.get("examples") else None  # llm.annotate.examples
        return annotation_messages(
            row["query"], guideline, self.config.scale, product_for_prompt(row), caption=caption, image_data_url=data_url,
            examples=examples,
        )

    async def _judge(self, rows: list[dict], messages: list[list[dict] | None]) -> list[CallResult | None]:
        """One result per row (None where there is nothing to send): online calls gathered under the client's
        semaphore, or, in batch mode, one provider batch per sample (a vote's sample i > 0 carries seed i)."""
        # A vote's sample i > 0 is sent with seed i (`stages.votes`); rows without vote_sample are sample 0.
        samples = [row.get("vote_sample") or 0 for row in rows]
        if not getattr(self.config.model, "batch", False):  # AnnotateModelConfig.batch
            return await gather_calls([
                None if m is None else self.client.structured(
                    m, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, self._model_for(s),
                    check=self._check, response_format=self.response_format)
                for m, s in zip(messages, samples)])
        results: list[CallResult | None] = [None] * len(rows)
        groups = {s: [i for i, x in enumerate(samples) if x == s] for s in sorted(set(samples))}
        answers = await asyncio.gather(*(
            self._judge_in_batch([rows[i] for i in rows_of], [messages[i] for i in rows_of],
                                 self._model_for(s))
            for s, rows_of in groups.items()))
        for rows_of, answer in zip(groups.values(), answers):
            for i, result in zip(rows_of, answer):
                results[i] = result
        return results

    async def _judge_in_batch(self, rows: list[dict], messages: list[list[dict] | None],
                              model) -> list[CallResult | None]:
        from rae_ray.io import Storage, join_uri
        from rae_ray.llm.batch import BatchRequest, BatchRunner

        ids = [_custom_id(row, m) if m is not None else None for row, m in zip(rows, messages)]
        requests = [BatchRequest(i, m) for i, m in zip(ids, messages) if m is not None]
        if not requests:
            return [None] * len(rows)
        # The same requests find the same state again (a rerun picks up the batch it submitted before).
        name = hashlib.sha256(json.dumps(sorted(r.custom_id for r in requests)).encode()).hexdigest()[:20]
        # Through the stage's client: its retries, its key (from this actor's environment) and the run's budget.
        runner = BatchRunner(
            self.client, join_uri(self.config.batch_state_uri, name),
            storage=Storage(self.config.s3_endpoint_url, self.config.s3_region), poll_interval_s=model.batch_poll_s,
            completion_window=model.batch_completion_window, metadata={"rae_ray_stage": "annotate"},
        )
        by_id = await runner.run(requests, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, model, check=self._check,
                                 response_format=self.response_format)
        return [by_id[i] if i is not None else None for i in ids]

    async def __call__(self, batch: pa.Table) -> pa.Table:
        required = self.required_columns if self.config.guidelines else self.required_without_guidelines
        missing_columns(batch, required, "AnnotateStage")
        rows = batch.to_pylist()
        model = self.config.model
        messages, statuses, images = [], [], []
        for row in rows:
            caption, data_url, status = self._image_inputs(row)
            statuses.append(status)
            images.append(data_url)
            if row["pair_error"] is not None or (self.config.guidelines and row["guideline"] is None):
                messages.append(None)
                continue
            messages.append(self._messages(row, caption, data_url))
        results = await self._judge(rows, messages)
        # Direct mode: an image the endpoint refuses must not cost the label: judge that pair on text alone. An
        # endpoint that takes no images at all gets none from this actor again.
        retry: dict[int, str] = {}
        for i, r in enumerate(results):
            if r is None or r.value is not None or not images[i]:
                continue
            if r.error_kind == IMAGE_UNSUPPORTED:
                self._stop_sending_images(r.error)
                retry[i] = NO_VISION
            elif (r.error or "").startswith(_IMAGE_REFUSAL):
                retry[i] = IMAGE_REJECTED
        if retry:
            again = await self._judge([rows[i] for i in retry], [
                self._messages(rows[i], None, None) for i in retry])
            for (i, status), result in zip(retry.items(), again):
                _add_usage(result, results[i])
                results[i], statuses[i] = result, status
        grades, errors = [], []
        for row, result in zip(rows, results):
            if result is None:
                grades.append(None)
                errors.append(row["pair_error"] or f"no guideline for this query: {row['guideline_error'] or 'unknown reason'}")
            else:
                grades.append(result.value.grade if result.value else None)
                errors.append(result.error)
        n = len(rows)
        caption_ids = [r.get("caption_id") if s == "ok" else None for r, s in zip(rows, statuses)]
        image_ids = [r.get("image_id") if s == "ok" else None for r, s in zip(rows, statuses)]
        return pa.table(
            {
                "query": batch.column("query"),
                "product_id": batch.column("product_id"),
                "product_hash": batch.column("product_hash"),
                "grade": pa.array(grades, pa.int16()),
                "label": pa.array([self.names.get(g) if g is not None else None for g in grades], pa.string()),
                "reasoning": pa.array([r.value.reasoning if r is not None and r.value else None for r in results], pa.string()),
                "model": pa.array([model.model] * n, pa.string()),
                "prompt_version": pa.array([annotation_prompt_version(self.config.guidelines, bool(r.get("examples")))
                                            for r in rows], pa.string()),
                "guideline_id": batch.column("guideline_id") if self.config.guidelines else pa.nulls(n, pa.string()),
                "caption_id": pa.array(caption_ids, pa.string()),
                "image_id": pa.array(image_ids, pa.string()),
                "image_status": pa.array(statuses, pa.string()),
                "cache_hit": pa.array([False] * n, pa.bool_()),
                "error": pa.array(errors, pa.string()),
                **usage_columns(results),
                # A vote's judge and sample (`stages.votes`), handed through.
                **{c: batch.column(c) for c in VOTE_PASSTHROUGH if c in batch.column_names},
            }
        )


def _custom_id(row: dict, messages: list[dict]) -> str:
    """A batch request's id: the pair's store key and a hash of what is sent (an image dropped on retry differs)."""
    sent = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]
    key = row.get("label_key") or hashlib.sha256(
        json.dumps([row["query"], row["product_id"], row.get("guideline_id")]).encode()).hexdigest()[:24]
    return f"{key}-{sent}"


def _add_usage(result: CallResult, earlier: CallResult) -> None:
    """Fold the usage of an earlier, failed call into `result` (both were paid for)."""
    result.calls += earlier.calls
    result.prompt_tokens += earlier.prompt_tokens
    result.completion_tokens += earlier.completion_tokens
    result.cached_tokens += earlier.cached_tokens
    result.seconds += earlier.seconds
