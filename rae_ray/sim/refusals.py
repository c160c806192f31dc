"""The endpoint modes that refuse what real servers refuse.

Each mode answers with the status code and message shape measured on the real server it copies: a model without
vision (llama.cpp's `llama-server` without its mmproj: HTTP 500), a small context (llama.cpp: HTTP 400
`exceed_context_size_error` with the token counts), a reasoning model (OpenAI's o-series and gpt-5 family: HTTP
400 on `temperature` and `max_tokens`) and a server without `json_schema` response formats (HTTP 400).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rae_ray.sim.config import SimConfig
from rae_ray.sim.protocol import ApiError

REASONING_EFFORTS = ("minimal", "low", "medium", "high")


def check_modes(config: SimConfig, body: Mapping[str, Any], prompt_tokens: int, images: int) -> None:
    """Raise the `ApiError` a real server of the configured kind answers to this request, if any."""
    if config.reasoning:
        _check_reasoning_parameters(body)
    response_format = body.get("response_format")
    if not config.json_schema and isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        raise ApiError(400, "response_format type json_schema is not supported", param="response_format",
                       code="unsupported_value")
    if not config.vision and images:
        # llama.cpp's words and status (a 500, which clients retry unless they read the message).
        raise ApiError(500, "image input is not supported - hint: if this is unexpected, you may need to provide "
                       "the mmproj", type_="server_error", code=500)
    if config.context_tokens is not None and prompt_tokens > config.context_tokens:
        raise ApiError(400, f"request ({prompt_tokens} tokens) exceeds the available context size "
                       f"({config.context_tokens} tokens), try increasing it", type_="exceed_context_size_error",
                       code=400, extra={"n_prompt_tokens": prompt_tokens, "n_ctx": config.context_tokens})


def _check_reasoning_parameters(body: Mapping[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        shown = f"{temperature:g}" if isinstance(temperature, (int, float)) else repr(temperature)
        raise ApiError(400, f"Unsupported value: 'temperature' does not support {shown} with this model. "
                       "Only the default (1) value is supported.", param="temperature", code="unsupported_value")
    if body.get("max_tokens") is not None:
        raise ApiError(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                       "'max_completion_tokens' instead.", param="max_tokens", code="unsupported_parameter")
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ApiError(400, f"Invalid value: '{effort}'. Supported values are: "
                       + ", ".join(f"'{e}'" for e in REASONING_EFFORTS) + ".",
                       param="reasoning_effort", code="invalid_value")
