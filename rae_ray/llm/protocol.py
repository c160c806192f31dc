"""What a structured call sends (the body, per kind of model and endpoint; its tokens, estimated before sending),
how to read its reply, and the refusals that come back: the kinds of failure a `CallResult` names in its
`error_kind`.

The online client and batch mode build their request bodies here, so both send the same thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rae_ray.config import StageModelConfig
from rae_ray.llm.schemas import STAGE_OF_SCHEMA, with_length_limits

# error_kind of a failed call (None when it succeeded):
IMAGE_UNSUPPORTED = "image_unsupported"  # the model takes no images (never retried)
CONTEXT_EXCEEDED = "context_exceeded"  # the prompt does not fit the model's context (never retried)
CUT = "cut"  # the reply hit the token limit (finish_reason length), also after one re-ask with a larger one
UNPARSABLE = "unparsable"  # replies that did not match the schema, after the bounded re-asks
REFUSED = "refused"  # any other 4xx answer (a bad parameter, an image the server cannot read, ...)
TRANSPORT = "transport"  # 429, 5xx, timeouts, dropped connections: still failing after the retries
NOT_SENT = "not_sent"  # never sent: the cost limit was reached, or no batch held the request

NO_IMAGES_ERROR = "the endpoint takes no images"  # how a row's error starts when the model takes no images
# How servers say a model takes no images: llama.cpp (HTTP 500, no mmproj loaded), OpenAI (400), vLLM (400).
_NO_IMAGES = re.compile(
    r"image input is not supported|image_url is only supported by certain models|is not a multimodal model",
    re.IGNORECASE,
)
# How they say the prompt is longer than the context: llama.cpp, OpenAI and vLLM.
_CONTEXT = re.compile(r"exceeds the available context size|maximum context length is", re.IGNORECASE)


def parse_json_reply(text: str | None) -> Any:
    """JSON from a reply that may wrap it in prose or code fences."""
    if not text:
        raise ValueError("empty reply")
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", cleaned)
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError:
        start, end = cleaned.find("{"), cleaned.rfind("}")
        if start == -1 or end <= start:
            raise ValueError(f"reply is not JSON: {text[:120]!r}") from None
        return json.loads(cleaned[start : end + 1])


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A prompt's tokens before sending it: about 4 characters a token, 255 an image."""
    chars = 0
    images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        else:
            for part in content or []:
                if part.get("type") == "text":
                    chars += len(part.get("text", ""))
                else:
                    images += 1
    return -(-chars // 4) + 255 * images


def estimate_tokens(messages: list[dict[str, Any]], max_output_tokens: int) -> int:
    """A call's tokens before sending it (for rate limits): the prompt plus a typical reply."""
    return prompt_tokens(messages) + min(max_output_tokens, 300)


def model_settings(model: str | StageModelConfig, temperature: float = 0.0,
                   max_output_tokens: int = 800) -> StageModelConfig:
    """A stage's model config as given, or one made of a model name and the two plain settings."""
    if isinstance(model, StageModelConfig):
        return model
    return StageModelConfig(model=model, temperature=temperature, max_output_tokens=max_output_tokens)


def with_schema_instruction(messages: Sequence[Mapping[str, Any]], response_format: Mapping[str, Any]) -> list[dict]:
    """`messages` with the JSON schema written into the system message (for endpoints without response_format).

    The schema is our own text, so it belongs with the instructions; a system message is added if there is none.
    """
    schema = response_format["json_schema"]["schema"]
    instruction = ("Answer with only one JSON object, no other text, that follows this JSON schema:\n"
                   + json.dumps(schema, ensure_ascii=False, sort_keys=True))
    out = [dict(m) for m in messages]
    if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
        out[0]["content"] = out[0]["content"] + "\n\n" + instruction
    else:
        out.insert(0, {"role": "system", "content": instruction})
    return out


def request_body(messages: Sequence[Mapping[str, Any]], settings: StageModelConfig, response_format: Mapping[str, Any],
                 json_schema: bool = True, max_output_tokens: int | None = None,
                 length_limits: bool = False) -> dict[str, Any]:
    """The chat-completions body of one structured call.

    A reasoning model gets `max_completion_tokens` (and `reasoning_effort` if set) and no temperature; any other
    model `temperature` and `max_tokens`; a vote's sample i > 0 adds `seed` i. Without json_schema support the schema goes into the system message.
    `length_limits`: the schema bounds free text and lists (`schemas.with_length_limits`).
    """
    if length_limits:
        response_format = with_length_limits(response_format)
    limit = max_output_tokens or settings.max_output_tokens
    body: dict[str, Any] = {"model": settings.model}
    if settings.reasoning:
        body["max_completion_tokens"] = limit
        if settings.reasoning_effort is not None:
            body["reasoning_effort"] = settings.reasoning_effort
    else:
        body["temperature"] = settings.temperature
        body["max_tokens"] = limit
    seed = getattr(settings, "seed", None)  # one vote's sample (`stages.votes.VoteModelConfig`)
    if seed is not None:
        body["seed"] = seed
    if json_schema:
        body["messages"] = list(messages)
        body["response_format"] = dict(response_format)
    else:
        body["messages"] = with_schema_instruction(messages, response_format)
    return body


def error_fields(body: object) -> dict[str, Any]:
    """The `error` object of an error answer (the openai SDK hands over either it or the whole body)."""
    if not isinstance(body, Mapping):
        return {"message": str(body)} if body else {}
    inner = body.get("error", body)
    if isinstance(inner, Mapping):
        return dict(inner)
    return {"message": str(inner)}


def refusal_kind(fields: Mapping[str, Any]) -> str | None:
    """IMAGE_UNSUPPORTED or CONTEXT_EXCEEDED when an error answer says so (whatever its status), else None."""
    message = str(fields.get("message") or "")
    if _NO_IMAGES.search(message):
        return IMAGE_UNSUPPORTED
    if (fields.get("type") == "exceed_context_size_error" or fields.get("code") == "context_length_exceeded"
            or _CONTEXT.search(message)):
        return CONTEXT_EXCEEDED
    return None


def refusal_message(kind: str, fields: Mapping[str, Any], model: str) -> str:
    """The row's error for a refusal of `refusal_kind`: what to change, then the server's own words."""
    message = str(fields.get("message") or "").strip()
    if kind == IMAGE_UNSUPPORTED:
        return f"{NO_IMAGES_ERROR} (model {model}): {message}"
    prompt, context = fields.get("n_prompt_tokens"), fields.get("n_ctx")  # llama.cpp says both
    if isinstance(prompt, int) and isinstance(context, int):
        return (f"prompt too long for the model's context: request ({prompt} tokens) exceeds the available "
                f"context size ({context} tokens)")
    return f"prompt too long for the model's context: {message}"


def cut_message(limit: int, schema_name: str, asked_again: bool) -> str:
    stage = STAGE_OF_SCHEMA.get(schema_name, "<stage>")
    raise_what = f"llm.{stage}.max_output_tokens" + (" and max_output_tokens_retry" if asked_again else "")
    return f"reply cut at {limit} tokens (finish_reason length); raise {raise_what}"
