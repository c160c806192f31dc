"""What a real server refuses or cuts, and what rae-ray does with it: llama.cpp's `llama-server` with
SmolLM2-135M-Instruct (no vision projector, 2,048 tokens of context per slot). Client and stages over real
HTTP, no Ray; the server's own /metrics counters say what it processed."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pyarrow as pa
from PIL import Image
from pydantic import SecretStr

from rae_ray.config import EndpointConfig, StageModelConfig
from rae_ray.llm import protocol
from rae_ray.llm.client import LLMClient
from rae_ray.llm.prompts import annotation_messages
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement, judgement_format
from rae_ray.sim.judge import DEFAULT_SCALE
from rae_ray.stages.annotate import AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from tests.real.conftest import CONTEXT, SLOTS

SCALE = [dict(g) for g in DEFAULT_SCALE]
GUIDELINE = {"query_intent": "a bag to carry a camera",
             "requirements": [{"aspect": "product type", "value": "camera bag", "importance": "must"}],
             "grade_definitions": [{"grade": 2, "name": "highly_relevant", "definition": "a camera bag"},
                                   {"grade": 1, "name": "acceptable_substitute", "definition": "another bag"},
                                   {"grade": 0, "name": "irrelevant", "definition": "anything else"}]}
PRODUCT = {"title": "Lowepro Adventura 140 camera shoulder bag, black", "brand": "Lowepro"}


def endpoint(llama, **settings) -> EndpointConfig:
    return EndpointConfig(base_url=llama.base_url, api_key_required=False, timeout_s=300, max_retries=3,
                          backoff_base_s=0.05, backoff_max_s=0.2, **settings)


def call(llama, messages, model: StageModelConfig, fmt=None, **settings):
    async def go():
        client = LLMClient(endpoint(llama, **settings), SecretStr("no-key"), 4)
        try:
            return await client.structured(messages, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, model,
                                           response_format=fmt or judgement_format(SCALE))
        finally:
            await client.close()

    return asyncio.run(go())


def counters(llama) -> dict[str, float]:
    metrics = llama.metrics()
    return {name: metrics[f"llamacpp:{name}"] for name in ("prompt_tokens_total", "tokens_predicted_total")}


def test_a_prompt_over_the_context_is_one_call_and_a_row_error_with_the_token_counts(llama):
    long_product = {"title": "camera bag", "description": "a padded bag with many pockets " * 400}
    before = counters(llama)

    result = call(llama, annotation_messages("camera bag", GUIDELINE, SCALE, long_product),
                  StageModelConfig(model=llama.alias, max_output_tokens=64))

    assert result.value is None and result.error_kind == protocol.CONTEXT_EXCEEDED
    assert result.calls == 1  # a 400 is not retried
    slot = CONTEXT // SLOTS
    assert f"exceeds the available context size ({slot} tokens)" in result.error
    assert result.error.startswith("prompt too long for the model's context: request (")
    assert counters(llama) == before  # the server refused it before processing any token


def test_a_reply_cut_at_the_limit_is_asked_once_more_with_the_larger_limit_then_is_a_row_error(llama):
    messages = annotation_messages("camera bag", GUIDELINE, SCALE, PRODUCT)
    before = counters(llama)

    # Greedy decoding: this model's judgement of this pair takes more than 30 tokens (about 40).
    cut = call(llama, messages, StageModelConfig(model=llama.alias, max_output_tokens=16, max_output_tokens_retry=30))

    assert cut.value is None and cut.error_kind == protocol.CUT
    assert cut.calls == 2
    assert cut.error.startswith("reply cut at 30 tokens (finish_reason length)")
    # Token counts are the server's: 16 tokens the first time, 30 the second.
    assert cut.completion_tokens == 16 + 30
    assert counters(llama)["tokens_predicted_total"] - before["tokens_predicted_total"] == 16 + 30

    # With room to finish, the one re-ask gives the judgement.
    rescued = call(llama, messages, StageModelConfig(model=llama.alias, max_output_tokens=16,
                                                     max_output_tokens_retry=400))
    assert rescued.value is not None and rescued.error is None
    assert rescued.calls == 2 and 16 < rescued.completion_tokens <= 16 + 400


def test_the_schema_keeps_grammar_constrained_grades_on_a_custom_scale(llama):
    scale = [{"grade": 7, "name": "fits", "description": "Serves the query."},
             {"grade": 3, "name": "does_not_fit", "description": "Does not serve the query."}]
    products = [PRODUCT, {"title": "AAA batteries, 4 pack"}, {"title": "Canon EOS 250D camera"}]

    async def go():
        client = LLMClient(endpoint(llama, length_limits=True), SecretStr("no-key"), 4)
        model = StageModelConfig(model=llama.alias, max_output_tokens=400, max_output_tokens_retry=0)
        try:
            return await asyncio.gather(*(client.structured(
                annotation_messages("camera bag", GUIDELINE, scale, product), RelevanceJudgement,
                JUDGEMENT_SCHEMA_NAME, model, response_format=judgement_format(scale)) for product in products))
        finally:
            await client.close()

    results = asyncio.run(go())
    replies = [r for r in results if r.value is not None]
    assert replies, [r.error for r in results]
    # A 135M model left alone answers on the paper's 0-2 scale; the grammar holds it to this one.
    assert {r.value.grade for r in replies} <= {7, 3}
    assert {r.value.label for r in replies} <= {"fits", "does_not_fit"}


def photo_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_a_model_without_vision_is_asked_once_and_the_pairs_are_judged_on_text(llama):
    config = LLMStageConfig(endpoint=endpoint(llama, length_limits=True),
                            model=StageModelConfig(model=llama.alias, max_output_tokens=300),
                            scale=SCALE, max_concurrent_requests=2)
    rows = [{"query": "camera bag", "product_id": f"p{i}", "product_hash": f"h{i}", "pair_error": None,
             "guideline_id": "g", "guideline": json.dumps(GUIDELINE), "guideline_error": None, "title": title,
             "image_url": f"http://shop.test/{i}.png", "image_data_url": photo_data_url(), "image_status": "ok"}
            for i, title in enumerate(["Lowepro camera bag", "Camera strap"])]

    async def go():
        stage = AnnotateStage(config)
        first = await stage(pa.Table.from_pylist(rows[:1]))
        second = await stage(pa.Table.from_pylist(rows[1:]))
        return first.to_pylist() + second.to_pylist()

    labels = asyncio.run(go())
    # The 500 "image input is not supported" is not retried (max_retries 3): one refused call, then the text one;
    # the next batch sends no image at all.
    assert [r["llm_calls"] for r in labels] == [2, 1]
    assert [r["image_status"] for r in labels] == ["no_vision", "no_vision"]
    for label in labels:
        assert label["image_id"] is None
        assert label["grade"] is not None or label["error"], label  # judged on text, or a row error saying why
