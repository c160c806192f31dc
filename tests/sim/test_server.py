"""The endpoint over real HTTP on 127.0.0.1 with the real openai client."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import ValidationError

from rae_ray.llm import prompts, schemas
from rae_ray.sim import SIMULATED_MARK, SimConfig

GUIDELINE_FORMAT = schemas.response_format(schemas.QueryGuideline, schemas.GUIDELINE_SCHEMA_NAME)
JUDGEMENT_FORMAT = schemas.response_format(schemas.RelevanceJudgement, schemas.JUDGEMENT_SCHEMA_NAME)
T = TypeVar("T")
CAPTION_FORMAT = schemas.response_format(schemas.ImageCaption, schemas.CAPTION_SCHEMA_NAME)
SPEAKER = {"title": "JBL Go 3 portable Bluetooth speaker", "brand": "JBL", "description": "Waterproof speaker"}
TONER = {"title": "Brother TN-2110 toner cartridge Original Black", "brand": "Brother"}


_clients: list[AsyncOpenAI] = []


def client(sim: Any, api_key: str = "not-needed", timeout: float = 10.0) -> AsyncOpenAI:
    """A client without retries; `run` closes it."""
    _clients.append(AsyncOpenAI(base_url=sim.base_url, api_key=api_key, max_retries=0, timeout=timeout))
    return _clients[-1]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, closing the clients made for it before its loop ends."""

    async def go() -> T:
        try:
            return await coroutine
        finally:
            while _clients:
                await _clients.pop().close()

    return asyncio.run(go())


async def judgement(openai_client: AsyncOpenAI, query: str, product: dict, scale: list, **kwargs: Any) -> Any:
    guideline = kwargs.pop("guideline", None)
    if guideline is None:
        guideline = await guideline_for(openai_client, query, scale)
    messages = prompts.annotation_messages(query, guideline, scale, product, **kwargs)
    return await openai_client.chat.completions.create(
        model="judge-model", messages=messages, response_format=JUDGEMENT_FORMAT, temperature=0,
        max_completion_tokens=600,
    )


async def guideline_for(openai_client: AsyncOpenAI, query: str, scale: list) -> dict:
    reply = await openai_client.chat.completions.create(
        model="guideline-model", messages=prompts.guideline_messages(query, scale), response_format=GUIDELINE_FORMAT,
        temperature=0,
    )
    return schemas.QueryGuideline.model_validate_json(reply.choices[0].message.content).model_dump()


def test_guideline_round_trip(fresh_sim, scale) -> None:
    async def go() -> Any:
        return await client(fresh_sim).chat.completions.with_raw_response.create(
            model="guideline-model", messages=prompts.guideline_messages("32gb sd card", scale),
            response_format=GUIDELINE_FORMAT, temperature=0,
        )

    raw = run(go())
    assert raw.headers["x-rae-simulated"] == "true"
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == "guideline-model"
    assert reply.system_fingerprint == "rae-ray-sim" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.role == "assistant"
    guideline = schemas.QueryGuideline.model_validate_json(reply.choices[0].message.content)
    assert ("size/capacity", "32gb") in {(r.aspect, r.value) for r in guideline.requirements}
    usage = reply.usage
    prompt_chars = sum(len(prompts.message_text(m)) for m in prompts.guideline_messages("32gb sd card", scale))
    assert usage.prompt_tokens == -(-prompt_chars // 4)
    assert usage.completion_tokens == -(-len(reply.choices[0].message.content) // 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_judgement_round_trip_grades_on_the_scale(fresh_sim, scale) -> None:
    async def go() -> tuple[Any, Any]:
        openai_client = client(fresh_sim)
        return (await judgement(openai_client, "bluetooth speaker", SPEAKER, scale),
                await judgement(openai_client, "bluetooth speaker", TONER, scale))

    match, unrelated = (schemas.RelevanceJudgement.model_validate_json(r.choices[0].message.content)
                        for r in run(go()))
    assert (match.grade, match.label) == (2, "highly relevant")
    assert (unrelated.grade, unrelated.label) == (0, "irrelevant")
    assert match.reasoning.startswith(SIMULATED_MARK)
    stats = fresh_sim.stats()
    assert stats["by_schema"] == {"query_guideline": 2, "relevance_judgement": 2}
    assert stats["by_status"] == {"200": 4} and stats["by_model"] == {"guideline-model": 2, "judge-model": 2}


def test_second_product_of_a_query_gets_cached_tokens(fresh_sim, scale) -> None:
    async def go() -> list[Any]:
        openai_client = client(fresh_sim)
        guideline = await guideline_for(openai_client, "bluetooth speaker", scale)
        return [await judgement(openai_client, "bluetooth speaker", p, scale, guideline=guideline)
                for p in (SPEAKER, TONER)]

    first, second = run(go())
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens
    assert fresh_sim.stats()["tokens"]["cached"] == cached


def test_one_step_multimodal_judgement_sees_the_image_colour(fresh_sim, scale, image_url) -> None:
    query = "red bluetooth speaker"

    async def go() -> list[Any]:
        openai_client = client(fresh_sim)
        guideline = await guideline_for(openai_client, query, scale)
        return [await judgement(openai_client, query, SPEAKER, scale, guideline=guideline,
                                image_data_url=image_url(colour)) for colour in ("red", "blue")]

    replies = run(go())
    red, blue = (schemas.RelevanceJudgement.model_validate_json(r.choices[0].message.content) for r in replies)
    assert red.grade == 2 and blue.grade < 2
    assert "image shows blue" in blue.reasoning
    assert replies[1].usage.prompt_tokens > replies[1].usage.prompt_tokens_details.cached_tokens + 255


def test_caption_describes_the_pixels(fresh_sim, image_url) -> None:
    async def go(colour: str) -> Any:
        messages = [{"role": "user", "content": [
            {"type": "text", "text": "Describe this product image."},
            {"type": "image_url", "image_url": {"url": image_url(colour, "PNG")}},
        ]}]
        return await client(fresh_sim).chat.completions.create(model="vision", messages=messages,
                                                         response_format=CAPTION_FORMAT)

    for colour in ("red", "blue"):
        reply = run(go(colour))
        caption = schemas.ImageCaption.model_validate_json(reply.choices[0].message.content)
        assert caption.colours[0] == colour
        assert reply.usage.prompt_tokens == -(-len("Describe this product image.") // 4) + 255


def test_models_lists_the_configured_names(start_sim) -> None:
    sim = start_sim(models=["alpha", "beta"])

    async def go() -> list[str]:
        return [model.id async for model in client(sim).models.list()]

    assert run(go()) == ["alpha", "beta"]


def test_without_response_format_the_answer_is_plain_text(fresh_sim, scale) -> None:
    async def go() -> Any:
        messages = prompts.annotation_messages("bluetooth speaker", {"requirements": []}, scale, SPEAKER)
        return await client(fresh_sim).chat.completions.create(model="m", messages=messages)

    content = run(go()).choices[0].message.content
    assert content.startswith("Simulated answer:") and "```json" in content
    payload = content.split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    assert schemas.RelevanceJudgement.model_validate_json(payload).grade == 2


def test_unknown_task_is_an_openai_shaped_400(fresh_sim) -> None:
    async def go() -> None:
        await client(fresh_sim).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Write a poem."}],
            response_format={"type": "json_schema", "json_schema": {"name": "poem", "schema": {"type": "object"}}},
        )

    with pytest.raises(openai.BadRequestError) as caught:
        run(go())
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert caught.value.response.headers["x-rae-simulated"] == "true"


def test_api_key_is_required_when_set(start_sim, scale) -> None:
    sim = start_sim(api_key="sekret-123")
    with pytest.raises(openai.AuthenticationError) as caught:
        run(guideline_for(client(sim, api_key="wrong"), "laptop", scale))
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert "sekret-123" not in json.dumps(caught.value.body)
    assert run(guideline_for(client(sim, api_key="sekret-123"), "laptop", scale))["requirements"]
    assert sim.stats()["by_status"] == {"200": 1, "401": 1}


def test_rpm_limit_answers_429_with_retry_after(start_sim, scale) -> None:
    sim = start_sim(rpm=2)

    async def go() -> list[Any]:
        openai_client = client(sim)
        results = []
        for _ in range(3):
            try:
                results.append(await guideline_for(openai_client, "hdmi", scale))
            except openai.RateLimitError as error:
                results.append(error)
        return results

    first, second, third = run(go())
    assert isinstance(first, dict) and isinstance(second, dict)
    assert isinstance(third, openai.RateLimitError) and third.code == "rate_limit_exceeded"
    retry_after = third.response.headers["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert 0 < int(third.response.headers["retry-after-ms"]) <= 60_000
    stats = sim.stats()
    assert stats["rate_limited_by"] == {"requests": 1} and stats["responses_429"] == 1


def test_tpm_limit_counts_prompt_tokens(start_sim, scale) -> None:
    sim = start_sim(tpm=500)

    async def go() -> list[Any]:
        openai_client = client(sim)
        results = []
        for _ in range(3):
            try:
                results.append(await guideline_for(openai_client, "hdmi", scale))
            except openai.RateLimitError as error:
                results.append(error)
        return results

    results = run(go())
    assert isinstance(results[0], dict)
    assert any(isinstance(r, openai.RateLimitError) for r in results[1:])
    assert sim.stats()["rate_limited_by"].get("tokens", 0) >= 1


def test_max_in_flight_bounds_concurrency(start_sim, scale) -> None:
    sim = start_sim(max_in_flight=3, latency_ms=40)

    async def go() -> None:
        openai_client = client(sim)
        await asyncio.gather(*(guideline_for(openai_client, f"query {i}", scale) for i in range(15)))

    run(go())
    stats = sim.stats()
    assert stats["max_in_flight_seen"] == 3
    assert stats["by_status"] == {"200": 15} and stats["in_flight"] == 0


def test_latency_is_added_to_each_completion(start_sim, scale) -> None:
    sim = start_sim(latency_ms=150)

    async def go() -> float:
        started = time.perf_counter()
        await guideline_for(client(sim), "laptop", scale)
        return time.perf_counter() - started

    assert run(go()) >= 0.14


def _injected(start_sim, scale, **config: Any) -> tuple[Any, dict]:
    sim = start_sim(**config)

    async def go() -> Any:
        try:
            reply = await client(sim, timeout=5).chat.completions.create(
                model="m", messages=prompts.guideline_messages("laptop", scale), response_format=GUIDELINE_FORMAT)
            return reply.choices[0].message.content
        except openai.OpenAIError as error:
            return error

    return run(go()), sim.stats()


def test_injected_5xx(start_sim, scale) -> None:
    outcome, stats = _injected(start_sim, scale, error_rate_5xx=1.0)
    assert isinstance(outcome, openai.InternalServerError) and outcome.status_code in (500, 503)
    assert stats["injected_errors"]["5xx"] == 1 and stats["by_status"] in ({"500": 1}, {"503": 1})


def test_injected_429(start_sim, scale) -> None:
    outcome, stats = _injected(start_sim, scale, error_rate_429=1.0, retry_after_s=3)
    assert isinstance(outcome, openai.RateLimitError) and outcome.response.headers["Retry-After"] == "3"
    assert stats["injected_errors"]["429"] == 1 and stats["rate_limited"] == 0


def test_injected_malformed_replies_do_not_validate(start_sim, scale) -> None:
    sim = start_sim(error_rate_malformed=1.0, seed=3)

    async def go() -> list[str]:
        openai_client = client(sim)
        replies = []
        for _ in range(6):
            reply = await openai_client.chat.completions.create(
                model="m", messages=prompts.guideline_messages("laptop", scale), response_format=GUIDELINE_FORMAT)
            replies.append(reply.choices[0].message.content)
        return replies

    for content in run(go()):
        with pytest.raises(ValidationError):
            schemas.QueryGuideline.model_validate_json(content)
    stats = sim.stats()
    assert stats["injected_errors"]["malformed"] == 6 and stats["by_status"] == {"200": 6}


def test_injected_timeout_answers_504_after_the_hold(start_sim, scale) -> None:
    outcome, stats = _injected(start_sim, scale, error_rate_timeout=1.0, timeout_hold_s=0.2)
    assert isinstance(outcome, openai.APIStatusError) and outcome.status_code == 504
    assert stats["injected_errors"]["timeout"] == 1


def test_injected_reset_breaks_the_connection(start_sim, scale) -> None:
    outcome, stats = _injected(start_sim, scale, error_rate_reset=1.0)
    assert isinstance(outcome, openai.APIConnectionError)
    assert stats["injected_errors"]["reset"] == 1 and stats["by_status"] == {}


def test_error_injection_is_reproducible_with_a_seed(start_sim, scale) -> None:
    def statuses(seed: int) -> list[int]:
        sim = start_sim(error_rate_5xx=0.3, error_rate_429=0.2, seed=seed)

        async def go() -> list[int]:
            openai_client = client(sim)
            codes = []
            for _ in range(30):
                try:
                    await guideline_for(openai_client, "aa", scale)
                    codes.append(200)
                except openai.APIStatusError as error:
                    codes.append(error.status_code)
            return codes

        return run(go())

    first = statuses(7)
    assert first == statuses(7)
    assert {200, 429} <= set(first) and set(first) & {500, 503}


def test_stats_reset_and_health(fresh_sim, scale) -> None:
    run(guideline_for(client(fresh_sim), "laptop", scale))
    assert fresh_sim.stats()["requests_total"] == 1
    fresh_sim.reset_stats()
    stats = fresh_sim.stats()
    assert stats["requests_total"] == 0 and stats["tokens"] == {"prompt": 0, "completion": 0, "cached": 0}
    with urllib.request.urlopen(fresh_sim.root_url + "/health", timeout=5) as response:
        assert response.read() == b"ok"


def test_invalid_json_body_is_a_400(fresh_sim) -> None:
    request = urllib.request.Request(fresh_sim.base_url + "/chat/completions", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["type"] == "invalid_request_error"


def test_config_rejects_unknown_fields_and_impossible_error_rates() -> None:
    with pytest.raises(ValidationError):
        SimConfig(latency=5)
    with pytest.raises(ValidationError):
        SimConfig(error_rate_5xx=0.6, error_rate_reset=0.6)
    assert SimConfig(rpm=10, models=["a", "b"]).to_argv() == ["--models", "a,b", "--rpm", "10"]
