"""What the lines of a batch's files hold: a request as a JSONL line (the body the online client would send), the
tokens of an input file (estimated as the client estimates a call), and one result line read back into a
`CallResult` with the client's tolerant parse and schema check."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from rae_ray.config import StageModelConfig
from rae_ray.llm import protocol
from rae_ray.llm.client import CallResult, LLMClient
from rae_ray.llm.protocol import estimate_tokens, parse_json_reply
from rae_ray.llm.schemas import response_format as schema_format

CHAT_COMPLETIONS = "/v1/chat/completions"


@dataclass(frozen=True)
class BatchRequest:
    """One structured call of a batch: the row's store key and the chat messages (as for `LLMClient.structured`)."""

    custom_id: str
    messages: list[dict[str, Any]]


def request_line(request: BatchRequest, output: type[BaseModel], schema_name: str, model: str | StageModelConfig,
                 temperature: float = 0.0, max_output_tokens: int = 800, json_schema: bool = True,
                 response_format: dict[str, Any] | None = None, length_limits: bool = False) -> str:
    """One JSONL line of a batch input file: the body `LLMClient.structured` would send (same arguments)."""
    body = protocol.request_body(request.messages, protocol.model_settings(model, temperature, max_output_tokens),
                                 response_format or schema_format(output, schema_name), json_schema,
                                 length_limits=length_limits)
    return json.dumps({"custom_id": request.custom_id, "method": "POST", "url": CHAT_COMPLETIONS, "body": body},
                      ensure_ascii=False)


def parse_result_line(item: dict[str, Any], output: type[BaseModel], schema_name: str,
                      check: Callable[[BaseModel], None] | None = None,
                      settings: StageModelConfig | None = None) -> tuple[str, CallResult]:
    """(custom_id, result) of one line of an output or error file; never raises for one bad result.

    `settings`: what the requests were sent with (named in errors). A batch result is final: a cut reply is not
    asked again (online calls are)."""
    custom_id = str(item.get("custom_id"))
    result = CallResult(calls=1)
    response = item.get("response")
    if not isinstance(response, dict):
        error = item.get("error") or {}
        result.error = f"batch request failed: {error.get('code') or 'error'}: {error.get('message') or 'no response'}"
        result.calls = 0 if error.get("code") in ("batch_expired", "batch_cancelled") else 1
        result.error_kind = protocol.NOT_SENT if result.calls == 0 else protocol.REFUSED
        return custom_id, result
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    status = response.get("status_code")
    if status != 200:
        detail = protocol.error_fields(body)
        kind = protocol.refusal_kind(detail)
        if kind is not None:
            model = settings.model if settings is not None else "?"
            result.error_kind, result.error = kind, protocol.refusal_message(kind, detail, model)[:500]
        else:
            result.error_kind = protocol.TRANSPORT if status == 429 or (status or 0) >= 500 else protocol.REFUSED
            result.error = f"HTTP {status}: {detail.get('message') or 'batch request failed'}"[:500]
        return custom_id, result
    try:
        completion = ChatCompletion.model_validate(body)
    except ValidationError as error:
        result.error = f"the batch result is not a chat completion: {LLMClient._parse_problem(error)}"
        return custom_id, result
    result.add_usage(completion.usage)
    choice = completion.choices[0] if completion.choices else None
    content = choice.message.content if choice is not None else None
    if choice is not None and choice.finish_reason == "length":
        limit = settings.max_output_tokens if settings is not None else result.completion_tokens
        result.error_kind, result.error = protocol.CUT, protocol.cut_message(limit, schema_name, False)
        return custom_id, result
    try:
        value = output.model_validate(parse_json_reply(content))
        if check is not None:
            check(value)
        result.value = value
    except (ValueError, ValidationError) as error:
        result.error_kind = protocol.UNPARSABLE
        result.error = f"reply did not match the {schema_name} schema after 1 tries: {LLMClient._parse_problem(error)}"
    return custom_id, result


def part_tokens(data: bytes) -> int:
    """The tokens of a part's input file, estimated as the online client estimates each call (for the budget).

    A line that is not a request (the endpoint fails the batch for it) counts as its text."""
    total = 0
    for line in data.decode(errors="replace").splitlines():
        try:
            body = json.loads(line)["body"]
            limit = body.get("max_completion_tokens") or body.get("max_tokens") or 800
            total += estimate_tokens(body["messages"], limit)
        except (ValueError, KeyError, TypeError, AttributeError):  # not a request line: the endpoint will say so
            total += -(-len(line) // 4)
    return total
