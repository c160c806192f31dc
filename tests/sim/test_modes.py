"""The endpoint's modes refuse what real servers refuse, with their status codes and error shapes (real HTTP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from rae_ray.llm import prompts, schemas
from rae_ray.sim.__main__ import config_from_args
from rae_ray.sim.config import SimConfig

GUIDELINE_FORMAT = schemas.response_format(schemas.QueryGuideline, schemas.GUIDELINE_SCHEMA_NAME)


def post(sim: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /v1/chat/completions; (status, parsed JSON body), errors included."""
    request = urllib.request.Request(sim.base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def guideline_body(scale: list[dict], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": prompts.guideline_messages("red mug", scale), **fields}


def test_without_vision_an_image_is_answered_500_as_llama_cpp_does(start_sim, image_url, scale) -> None:
    sim = start_sim(vision=False)
    caption = {"model": "sim-vision", "messages": prompts.caption_messages(image_url("red"))}
    status, body = post(sim, caption)
    assert status == 500
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == 500
    assert body["error"]["message"].startswith("image input is not supported - hint: ")
    assert post(sim, guideline_body(scale))[0] == 200  # text is answered as ever
    assert post(start_sim(), caption)[0] == 200  # the default endpoint sees images
    assert sim.stats()["by_status"] == {"200": 1, "500": 1}


def test_a_prompt_over_the_context_is_answered_400_with_the_token_counts(start_sim, scale) -> None:
    small = start_sim(context_tokens=100)
    status, body = post(small, guideline_body(scale))
    assert status == 400
    error = body["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == 100 and error["n_prompt_tokens"] > 100
    assert error["message"] == (f"request ({error['n_prompt_tokens']} tokens) exceeds the available context size "
                                "(100 tokens), try increasing it")
    # The same prompt fits a context one token larger than it.
    assert post(start_sim(context_tokens=error["n_prompt_tokens"]), guideline_body(scale))[0] == 200


def test_a_reasoning_model_refuses_temperature_and_max_tokens(start_sim, scale) -> None:
    sim = start_sim(reasoning=True)
    status, body = post(sim, guideline_body(scale, temperature=0))
    assert status == 400 and body["error"]["param"] == "temperature" and body["error"]["code"] == "unsupported_value"
    assert "'temperature' does not support 0 with this model" in body["error"]["message"]
    status, body = post(sim, guideline_body(scale, max_tokens=500))
    assert status == 400 and body["error"]["code"] == "unsupported_parameter"
    assert "Use 'max_completion_tokens' instead" in body["error"]["message"]
    status, body = post(sim, guideline_body(scale, reasoning_effort="extreme"))
    assert status == 400 and body["error"]["param"] == "reasoning_effort"
    accepted = guideline_body(scale, temperature=1, max_completion_tokens=2000, reasoning_effort="low",
                              response_format=GUIDELINE_FORMAT)
    status, body = post(sim, accepted)
    assert status == 200 and schemas.QueryGuideline.model_validate_json(body["choices"][0]["message"]["content"])
    # Any other model takes what reasoning models refuse.
    assert post(start_sim(), guideline_body(scale, temperature=0, max_tokens=2000))[0] == 200


def test_without_json_schema_support_a_json_schema_format_is_answered_400(start_sim, scale) -> None:
    sim = start_sim(json_schema=False)
    status, body = post(sim, guideline_body(scale, response_format=GUIDELINE_FORMAT))
    assert status == 400 and body["error"]["param"] == "response_format"
    assert body["error"]["message"] == "response_format type json_schema is not supported"
    for accepted in ({}, {"response_format": {"type": "json_object"}}):
        assert post(sim, guideline_body(scale, **accepted))[0] == 200


def test_the_modes_are_command_line_flags() -> None:
    config = config_from_args(["--no-vision", "--context-tokens", "2048", "--reasoning", "--no-json-schema"])
    assert (config.vision, config.context_tokens, config.reasoning, config.json_schema) == (False, 2048, True, False)
    assert config_from_args(config.to_argv()) == config
    defaults = config_from_args([])
    assert (defaults.vision, defaults.context_tokens, defaults.reasoning, defaults.json_schema) == (True, None, False, True)
    with pytest.raises(ValueError):
        SimConfig(context_tokens=0)
