"""What a structured call sends, per kind of model and endpoint, and how refusals of real servers are read."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rae_ray.config import ConfigError, ScaleConfig, StageModelConfig, config_from_dict
from rae_ray.llm import protocol
from rae_ray.llm.schemas import (
    CAPTION_SCHEMA_NAME, GUIDELINE_SCHEMA_NAME, ImageCaption, QueryGuideline, judgement_format, response_format,
)

MESSAGES = [{"role": "system", "content": "Judge."}, {"role": "user", "content": "<data ...>"}]
FORMAT = response_format(QueryGuideline, GUIDELINE_SCHEMA_NAME)


def test_a_plain_model_gets_temperature_and_max_tokens() -> None:
    body = protocol.request_body(MESSAGES, StageModelConfig(model="m", temperature=0.2, max_output_tokens=300), FORMAT)
    assert body == {"model": "m", "temperature": 0.2, "max_tokens": 300, "messages": MESSAGES,
                    "response_format": FORMAT}


def test_a_reasoning_model_gets_max_completion_tokens_and_no_temperature() -> None:
    settings = StageModelConfig(model="o4-mini", reasoning=True, reasoning_effort="minimal", max_output_tokens=900)
    body = protocol.request_body(MESSAGES, settings, FORMAT, max_output_tokens=2000)
    assert body == {"model": "o4-mini", "max_completion_tokens": 2000, "reasoning_effort": "minimal",
                    "messages": MESSAGES, "response_format": FORMAT}
    no_effort = protocol.request_body(MESSAGES, StageModelConfig(model="o4-mini", reasoning=True), FORMAT)
    assert "reasoning_effort" not in no_effort and "temperature" not in no_effort


def test_reasoning_effort_needs_reasoning() -> None:
    with pytest.raises(ValueError, match="reasoning: true"):
        StageModelConfig(model="m", reasoning_effort="low")
    with pytest.raises(ValueError):
        StageModelConfig(model="m", reasoning=True, reasoning_effort="extreme")


def test_without_json_schema_the_schema_is_an_instruction_of_the_system_message() -> None:
    body = protocol.request_body(MESSAGES, StageModelConfig(model="m"), FORMAT, json_schema=False)
    assert "response_format" not in body and MESSAGES[0]["content"] == "Judge."  # the input is not changed
    system = body["messages"][0]["content"]
    assert system.startswith("Judge.\n\n") and body["messages"][1:] == MESSAGES[1:]
    assert json.loads(system.split("JSON schema:\n", 1)[1]) == FORMAT["json_schema"]["schema"]
    bare = protocol.with_schema_instruction(MESSAGES[1:], FORMAT)  # no system message: one is added
    assert bare[0]["role"] == "system" and bare[1:] == MESSAGES[1:]


@pytest.mark.parametrize("fields", [
    {"code": 500, "type": "server_error",
     "message": "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"},
    {"code": None, "type": "invalid_request_error", "param": None,
     "message": "Invalid content type. image_url is only supported by certain models."},
    {"code": 400, "type": "BadRequestError",
     "message": "Qwen/Qwen2.5-7B-Instruct is not a multimodal model None"},
])
def test_the_ways_servers_say_a_model_takes_no_images(fields: dict[str, Any]) -> None:
    assert protocol.refusal_kind(fields) == protocol.IMAGE_UNSUPPORTED
    assert protocol.refusal_kind({"error": fields}) is None  # the error object itself, as error_fields gives it
    assert protocol.refusal_kind(protocol.error_fields({"error": fields})) == protocol.IMAGE_UNSUPPORTED
    assert protocol.refusal_message(protocol.IMAGE_UNSUPPORTED, fields, "m1") == (
        f"the endpoint takes no images (model m1): {fields['message']}")


def test_the_ways_servers_say_a_prompt_is_over_the_context() -> None:
    llama = {"code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 2630, "n_ctx": 2048,
             "message": "request (2630 tokens) exceeds the available context size (2048 tokens), try increasing it"}
    openai_ = {"code": "context_length_exceeded", "type": "invalid_request_error", "param": "messages",
               "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                          "130000 tokens. Please reduce the length of the messages."}
    vllm = {"code": 400, "type": "BadRequestError",
            "message": "This model's maximum context length is 2048 tokens. However, you requested 3000 tokens "
                       "(2000 in the messages, 1000 in the completion)."}
    for fields in (llama, openai_, vllm):
        assert protocol.refusal_kind(fields) == protocol.CONTEXT_EXCEEDED
    assert protocol.refusal_message(protocol.CONTEXT_EXCEEDED, llama, "m") == (
        "prompt too long for the model's context: request (2630 tokens) exceeds the available context size "
        "(2048 tokens)")
    assert "130000 tokens" in protocol.refusal_message(protocol.CONTEXT_EXCEEDED, openai_, "m")
    assert protocol.refusal_kind({"message": "Unsupported parameter: 'max_tokens'", "code": "unsupported_parameter"}) is None


def _objects(node: Any):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


@pytest.mark.parametrize("fmt", [
    response_format(QueryGuideline, GUIDELINE_SCHEMA_NAME), response_format(ImageCaption, CAPTION_SCHEMA_NAME),
    judgement_format(ScaleConfig().as_dicts()),
])
def test_every_format_is_valid_in_strict_mode(fmt: dict) -> None:
    """OpenAI's strict mode: every object closed (additionalProperties false) and every property required."""
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    objects = list(_objects(fmt["json_schema"]["schema"]))
    assert objects
    for node in objects:
        assert node["additionalProperties"] is False and sorted(node["required"]) == sorted(node["properties"])


def test_the_judgement_format_is_the_scale() -> None:
    grades = [{"grade": 3, "name": "exact", "description": "d"}, {"grade": 1, "name": "near", "description": "d"},
              {"grade": 0, "name": "off", "description": "d"}]
    properties = judgement_format(grades)["json_schema"]["schema"]["properties"]
    assert properties["grade"] == {"title": "Grade", "type": "integer", "enum": [3, 1, 0]}
    assert properties["label"] == {"title": "Label", "type": "string", "enum": ["exact", "near", "off"]}
    # The model's own schema is not changed by it.
    assert "enum" not in response_format(QueryGuideline, GUIDELINE_SCHEMA_NAME)["json_schema"]["schema"]["properties"][
        "query_intent"]


def test_the_new_model_keys_load_from_a_config() -> None:
    base = {"input": {"log": "x.parquet"}, "llm": {"endpoints": {"default": {"base_url": "http://h/v1"}},
                                                   "guidelines": {"model": "g"}, "annotate": {"model": "a"}}}
    config = config_from_dict(base, ["llm.annotate.reasoning=true", "llm.annotate.reasoning_effort=high",
                                     "llm.annotate.max_output_tokens_retry=4000"])
    assert (config.llm.annotate.reasoning, config.llm.annotate.reasoning_effort) == (True, "high")
    assert config.llm.annotate.max_output_tokens_retry == 4000 and config.llm.guidelines.max_output_tokens_retry == 2000
    with pytest.raises(ConfigError, match="llm.annotate.max_output_tokens_retry"):
        config_from_dict(base, ["llm.annotate.max_output_tokens_retry=-1"])


def test_length_limits_bound_free_text_and_lists_but_not_enums():
    from rae_ray.config import PAPER_SCALE
    from rae_ray.llm.schemas import (
        GUIDELINE_SCHEMA_NAME, MAX_LIST_ITEMS, MAX_TEXT_CHARS, QueryGuideline, judgement_format, response_format,
        with_length_limits,
    )

    judgement = with_length_limits(judgement_format([g.model_dump() for g in PAPER_SCALE]))["json_schema"]["schema"]
    assert judgement["properties"]["reasoning"]["maxLength"] == MAX_TEXT_CHARS
    assert "maxLength" not in judgement["properties"]["label"]  # an enum: already bounded
    assert "maxLength" not in judgement["properties"]["grade"]
    guideline = with_length_limits(response_format(QueryGuideline, GUIDELINE_SCHEMA_NAME))["json_schema"]["schema"]
    assert guideline["properties"]["requirements"]["maxItems"] == MAX_LIST_ITEMS
    requirement = guideline["$defs"]["Requirement"]["properties"]
    assert requirement["value"]["maxLength"] == MAX_TEXT_CHARS
    # the original format is left as it was
    assert "maxLength" not in response_format(QueryGuideline, GUIDELINE_SCHEMA_NAME)["json_schema"]["schema"][
        "properties"]["query_intent"]
