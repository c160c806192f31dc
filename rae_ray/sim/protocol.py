"""The simulated endpoint's side of OpenAI's chat-completions protocol: reading a request, answering it with the
offline judge, errors and completions in OpenAI's shape. Shared by the online route (`server`) and batches."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiohttp import web

from rae_ray.llm import prompts, schemas
from rae_ray.sim.judge import describe_image, estimate_tokens, judge, make_guideline

SYSTEM_FINGERPRINT = "rae-ray-sim"
IMAGE_TOKENS = 255
_PRODUCT_BLOCK = '<data name="product">'
TASKS = (schemas.GUIDELINE_SCHEMA_NAME, schemas.JUDGEMENT_SCHEMA_NAME, schemas.CAPTION_SCHEMA_NAME)
NO_SCHEMA = "(none)"


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code", ...extra}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | int | None = None,
                 param: str | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


@dataclass
class Prompt:
    """What the server reads from one chat request."""

    model: str
    schema_name: str | None
    wants_json: bool
    blocks: dict[str, Any]
    image_urls: list[str]
    prompt_tokens: int
    prefix_key: bytes
    prefix_tokens: int
    max_tokens: int | None
    seed: Any = None  # the request's `seed` (a vote's sample), part of what the judge's noise is drawn from


def read_prompt(body: Any) -> Prompt:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty array of message objects.", param="messages")
    if body.get("stream"):
        raise ApiError(400, "The simulated endpoint does not support streaming.", param="stream")
    response_format = body.get("response_format") or {}
    if not isinstance(response_format, dict):
        raise ApiError(400, "'response_format' must be an object.", param="response_format")
    format_type = response_format.get("type", "text")
    schema_name = None
    if format_type == "json_schema":
        schema_name = str((response_format.get("json_schema") or {}).get("name") or "")
    system_text, user_prefix, texts, image_urls = [], None, [], []
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise ApiError(400, "message content must be a string or an array of parts.", param="messages")
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise ApiError(400, "content parts must be objects.", param="messages")
        text = prompts.message_text(message)
        texts.append(text)
        if message.get("role") in ("system", "developer"):
            system_text.append(text)
        elif user_prefix is None:
            if isinstance(content, list):
                first = next((p for p in content if p.get("type") == "text"), None)
                user_prefix = str(first.get("text", "")) if first else ""
            else:
                user_prefix = text.split(_PRODUCT_BLOCK, 1)[0]
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part.get("image_url")
                    image_urls.append(str(url.get("url", "") if isinstance(url, dict) else url or ""))
    blocks: dict[str, Any] = {}
    for text in texts:
        try:
            blocks.update(prompts.parse_data_blocks(text))
        except json.JSONDecodeError as error:
            raise ApiError(400, f"A <data> block does not hold valid JSON: {error}", param="messages") from error
    prompt_chars = sum(len(t) for t in texts)
    system = "\n".join(system_text)
    prefix = user_prefix or ""
    prefix_key = hashlib.blake2b("\x00".join((model, system, prefix)).encode(), digest_size=16).digest()
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    return Prompt(
        model=model,
        schema_name=schema_name,
        wants_json=format_type in ("json_schema", "json_object"),
        blocks=blocks,
        image_urls=image_urls,
        prompt_tokens=estimate_tokens(prompt_chars) + IMAGE_TOKENS * len(image_urls),
        prefix_key=prefix_key,
        prefix_tokens=estimate_tokens(len(system) + len(prefix)),
        max_tokens=int(max_tokens) if isinstance(max_tokens, (int, float)) and max_tokens > 0 else None,
        seed=body.get("seed"),
    )


def task_of(prompt: Prompt) -> str:
    """The schema name of the answer: from response_format, else told by the data blocks."""
    if prompt.schema_name in TASKS:
        return prompt.schema_name
    blocks = prompt.blocks
    if "product" in blocks and "query" in blocks:
        return schemas.JUDGEMENT_SCHEMA_NAME
    if "query" in blocks:
        return schemas.GUIDELINE_SCHEMA_NAME
    if prompt.image_urls:
        return schemas.CAPTION_SCHEMA_NAME
    raise ApiError(
        400,
        f"The simulated endpoint answers only {', '.join(TASKS)} requests (response_format json_schema name "
        f"{prompt.schema_name!r}, and no query/product data blocks or image to tell the task).",
        param="response_format",
    )


def _image_bytes(url: str) -> bytes:
    if not url.startswith("data:") or "," not in url:
        raise ApiError(400, "The simulated endpoint reads images only from data: URLs (base64).", param="messages")
    header, data = url.split(",", 1)
    if ";base64" not in header:
        raise ApiError(400, "Image data URLs must be base64-encoded.", param="messages")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ApiError(400, f"Invalid base64 image data: {error}", param="messages") from error


@lru_cache(maxsize=256)
def _cached_caption(url: str) -> dict[str, Any]:
    try:
        return describe_image(_image_bytes(url))
    except ApiError:
        raise
    except Exception as error:  # Pillow raises several types for undecodable images
        raise ApiError(400, f"The image could not be decoded: {error}", param="messages") from error


def _caption(url: str) -> dict[str, Any]:
    caption = _cached_caption(url)
    return {**caption, "colours": list(caption["colours"])}


@lru_cache(maxsize=1024)
def _guideline(query: str, scale_json: str) -> str:
    return json.dumps(make_guideline(query, json.loads(scale_json) or None), ensure_ascii=False)


def answer(task: str, blocks: Mapping[str, Any], image_urls: Sequence[str]) -> dict[str, Any]:
    """The judge's answer (a dict of the task's schema) to one request's data blocks and images."""
    try:
        if task == schemas.CAPTION_SCHEMA_NAME:
            if not image_urls:
                raise ApiError(400, "An image_caption request needs an image_url content part.", param="messages")
            return _caption(image_urls[0])
        query = blocks.get("query")
        if not isinstance(query, str):
            raise ApiError(400, 'The request has no <data name="query"> block holding a string.', param="messages")
        scale = blocks.get("scale") or None
        if task == schemas.GUIDELINE_SCHEMA_NAME:
            return json.loads(_guideline(query, json.dumps(scale, sort_keys=True)))
        product = blocks.get("product")
        if not isinstance(product, dict):
            raise ApiError(400, 'The request has no <data name="product"> block holding an object.', param="messages")
        guideline = blocks.get("guideline") if isinstance(blocks.get("guideline"), dict) else None
        caption = blocks.get("image_description") if isinstance(blocks.get("image_description"), dict) else None
        colours = _caption(image_urls[0])["colours"] if image_urls else None
        return judge(query, guideline, scale, product, image_description=caption, image_colours=colours)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ApiError(400, f"The data blocks do not fit a {task} request: {error!r}", param="messages") from error


def render(reply: dict[str, Any], wants_json: bool) -> str:
    text = json.dumps(reply, ensure_ascii=False)
    # Without a JSON response format, answer the way chat models do: JSON inside a fenced block.
    return text if wants_json else f"Simulated answer:\n```json\n{text}\n```"


def completion_body(prompt: Prompt, content: str, cached: int) -> tuple[dict[str, Any], int]:
    """A chat completion in OpenAI's shape, with usage; (body, completion tokens)."""
    completion_tokens = estimate_tokens(len(content))
    finish = "stop"
    if prompt.max_tokens is not None and completion_tokens > prompt.max_tokens:
        content, completion_tokens, finish = content[: prompt.max_tokens * 4], prompt.max_tokens, "length"
    body = {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": prompt.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }],
        "usage": {
            "prompt_tokens": prompt.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }
    return body, completion_tokens
