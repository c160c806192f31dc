"""`LLMClient.structured` against simulated endpoints that refuse what real servers refuse (a child process each).

What is sent is read back from the endpoint (`/stats`, `GET /debug/requests`), not from the client.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from pydantic import SecretStr

from rae_ray.config import EndpointConfig, StageModelConfig
from rae_ray.llm import protocol
from rae_ray.llm.client import CallResult, LLMClient
from rae_ray.llm.prompts import annotation_messages, caption_messages, guideline_messages
from rae_ray.llm.schemas import (
    CAPTION_SCHEMA_NAME, GUIDELINE_SCHEMA_NAME, JUDGEMENT_SCHEMA_NAME, ImageCaption, QueryGuideline, RelevanceJudgement,
    judgement_format,
)
from rae_ray.sim.judge import DEFAULT_SCALE, make_guideline
from rae_ray.sim.process import SimProcess
from rae_ray.stages.annotate import AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.guidelines import GuidelineStage

SCALE = [dict(g) for g in DEFAULT_SCALE]
FIVE_GRADES = [{"grade": g, "name": f"level_{g}", "description": f"Level {g}."} for g in (4, 3, 2, 1, 0)]
PRODUCT = {"title": "Red ceramic mug 350 ml", "brand": "Acme"}


def red_square() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def start(**config: Any) -> Iterator[SimProcess]:
    with SimProcess(record_requests=50, **config) as sim:
        yield sim


@pytest.fixture(scope="module")
def blind_sim() -> Iterator[SimProcess]:
    yield from start(vision=False)


@pytest.fixture(scope="module")
def small_sim() -> Iterator[SimProcess]:
    yield from start(context_tokens=300)


@pytest.fixture(scope="module")
def plain_sim() -> Iterator[SimProcess]:
    yield from start()


@pytest.fixture(scope="module")
def reasoning_sim() -> Iterator[SimProcess]:
    yield from start(reasoning=True)


@pytest.fixture(scope="module")
def schemaless_sim() -> Iterator[SimProcess]:
    yield from start(json_schema=False)


def endpoint(sim: SimProcess, **fields: Any) -> EndpointConfig:
    return EndpointConfig(**{"base_url": sim.base_url, "api_key_required": False, "max_retries": 3,
                             "backoff_base_s": 0.01, "backoff_max_s": 0.05, **fields})


def recorded(sim: SimProcess) -> list[dict[str, Any]]:
    with urllib.request.urlopen(sim.root_url + "/debug/requests", timeout=10) as response:
        return [r["body"] for r in json.loads(response.read())["requests"]]


def fresh(sim: SimProcess) -> int:
    """Zero the counters; the number of bodies recorded so far (the next call's bodies come after it)."""
    sim.reset_stats()
    return len(recorded(sim))


def call(sim: SimProcess, messages: list[dict], output, schema_name: str, model: str | StageModelConfig,
         response_format: dict | None = None, **endpoint_fields: Any) -> CallResult:
    async def go() -> CallResult:
        client = LLMClient(endpoint(sim, **endpoint_fields), SecretStr("sim"))
        try:
            return await client.structured(messages, output, schema_name, model, response_format=response_format)
        finally:
            await client.close()

    return asyncio.run(go())


def stage_config(sim: SimProcess, model: StageModelConfig, scale: list[dict] = SCALE, **fields: Any) -> LLMStageConfig:
    return LLMStageConfig(endpoint=endpoint(sim, **fields), model=model, scale=scale)


def test_an_image_refusal_is_not_retried(blind_sim) -> None:
    fresh(blind_sim)
    result = call(blind_sim, caption_messages(red_square()), ImageCaption, CAPTION_SCHEMA_NAME, "sim-vision")
    assert result.value is None and result.error_kind == protocol.IMAGE_UNSUPPORTED
    assert result.error.startswith("the endpoint takes no images (model sim-vision): image input is not supported")
    assert result.calls == 1 and blind_sim.stats()["by_status"] == {"500": 1}  # max_retries 3, yet one request


def test_a_prompt_over_the_context_names_the_token_counts(small_sim) -> None:
    fresh(small_sim)
    messages = annotation_messages("red mug", make_guideline("red mug", SCALE), SCALE,
                                   {**PRODUCT, "description": "A sturdy mug. " * 100})
    result = call(small_sim, messages, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, "sim-judge")
    assert result.error_kind == protocol.CONTEXT_EXCEEDED and result.calls == 1
    found = re.fullmatch(r"prompt too long for the model's context: request \((\d+) tokens\) exceeds the available "
                         r"context size \(300 tokens\)", result.error)
    assert found and int(found.group(1)) > 300
    assert small_sim.stats()["by_status"] == {"400": 1}


def test_a_cut_reply_is_asked_again_once_with_the_larger_limit(plain_sim) -> None:
    messages = guideline_messages("red mug", SCALE)
    # Cut at 16 tokens, and again at 24: an error naming the limit, after exactly two requests.
    seen = fresh(plain_sim)
    model = StageModelConfig(model="sim-judge", max_output_tokens=16, max_output_tokens_retry=24)
    result = call(plain_sim, messages, QueryGuideline, GUIDELINE_SCHEMA_NAME, model)
    assert result.error_kind == protocol.CUT and result.calls == 2
    assert result.error == ("reply cut at 24 tokens (finish_reason length); raise llm.guidelines.max_output_tokens "
                            "and max_output_tokens_retry")
    bodies = recorded(plain_sim)[seen:]
    assert [b["max_tokens"] for b in bodies] == [16, 24]
    assert bodies[0]["messages"] == bodies[1]["messages"] == messages  # the same question, not a conversation
    # Room enough the second time: a guideline, from the second request.
    seen = fresh(plain_sim)
    result = call(plain_sim, messages, QueryGuideline, GUIDELINE_SCHEMA_NAME, model.model_copy(
        update={"max_output_tokens_retry": 3000}))
    assert result.value is not None and result.error is None and result.calls == 2
    assert [b["max_tokens"] for b in recorded(plain_sim)[seen:]] == [16, 3000]
    # A retry limit no larger than the first: no second request.
    fresh(plain_sim)
    result = call(plain_sim, messages, QueryGuideline, GUIDELINE_SCHEMA_NAME, model.model_copy(
        update={"max_output_tokens_retry": 16}))
    assert result.calls == 1 and result.error == ("reply cut at 16 tokens (finish_reason length); raise "
                                                  "llm.guidelines.max_output_tokens")


def test_reasoning_models_get_what_they_accept(reasoning_sim) -> None:
    queries = pa.table({"query": ["red mug", "usb c cable"]})
    seen = fresh(reasoning_sim)
    model = StageModelConfig(model="o-sim", reasoning=True, reasoning_effort="low")
    out = asyncio.run(GuidelineStage(stage_config(reasoning_sim, model))(queries))
    assert out.column("error").to_pylist() == [None, None]
    for body in recorded(reasoning_sim)[seen:]:
        assert "temperature" not in body and "max_tokens" not in body
        assert body["max_completion_tokens"] == 800 and body["reasoning_effort"] == "low"
    # The same model configured as a plain one: refused (400), and not retried.
    fresh(reasoning_sim)
    out = asyncio.run(GuidelineStage(stage_config(reasoning_sim, StageModelConfig(model="o-sim")))(queries))
    assert all(e.startswith("HTTP 400: Unsupported value: 'temperature'") for e in out.column("error").to_pylist())
    assert reasoning_sim.stats()["by_status"] == {"400": 2}


def test_without_json_schema_the_schema_goes_into_the_system_message(schemaless_sim) -> None:
    messages = guideline_messages("red mug", SCALE)
    seen = fresh(schemaless_sim)
    result = call(schemaless_sim, messages, QueryGuideline, GUIDELINE_SCHEMA_NAME, "sim-judge", json_schema=False)
    assert result.value is not None and result.calls == 1
    (body,) = recorded(schemaless_sim)[seen:]
    assert "response_format" not in body
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith(messages[0]["content"])
    schema = json.loads(system["content"].split("follows this JSON schema:\n", 1)[1])
    assert schema == QueryGuideline.model_json_schema()
    assert body["messages"][1:] == messages[1:]
    # Sent with response_format anyway, the server refuses it: once, no retry.
    fresh(schemaless_sim)
    result = call(schemaless_sim, messages, QueryGuideline, GUIDELINE_SCHEMA_NAME, "sim-judge")
    assert result.error_kind == protocol.REFUSED and result.calls == 1
    assert result.error == "HTTP 400: response_format type json_schema is not supported"


def test_the_judgement_schema_holds_the_run_scale(plain_sim, schemaless_sim) -> None:
    guideline = make_guideline("red mug", FIVE_GRADES)
    row = {"query": "red mug", "product_id": "p1", "product_hash": "h1", "pair_error": None, "guideline_id": "g1",
           "guideline": json.dumps(guideline), "guideline_error": None, **PRODUCT}
    for sim, json_schema in ((plain_sim, True), (schemaless_sim, False)):
        seen = fresh(sim)
        stage = AnnotateStage(stage_config(sim, StageModelConfig(model="sim-judge"), FIVE_GRADES, json_schema=json_schema))
        labels = asyncio.run(stage(pa.Table.from_pylist([row]))).to_pylist()
        assert labels[0]["error"] is None and labels[0]["grade"] in (4, 3, 2, 1, 0)
        (body,) = recorded(sim)[seen:]
        if json_schema:
            sent = body["response_format"]["json_schema"]
            assert sent["strict"] is True
            schema = sent["schema"]
        else:
            schema = json.loads(body["messages"][0]["content"].split("follows this JSON schema:\n", 1)[1])
        assert schema["properties"]["grade"]["enum"] == [4, 3, 2, 1, 0]
        assert schema["properties"]["label"]["enum"] == [f"level_{g}" for g in (4, 3, 2, 1, 0)]
        assert schema == judgement_format(FIVE_GRADES)["json_schema"]["schema"]
