"""Settings of the simulated OpenAI-compatible endpoint (also its command-line flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

ERROR_KINDS = ("5xx", "429", "malformed", "timeout", "reset")
API_KEY_ENV = "RAE_SIM_API_KEY"


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(0, ge=0, le=65535, description="TCP port; 0 picks a free one (printed at startup).")
    models: list[str] = Field(
        default_factory=lambda: ["rae-sim-judge", "rae-sim-vision"],
        min_length=1,
        description="Model names listed by /v1/models; completions accept any model name.",
    )
    latency_ms: float = Field(0.0, ge=0, description="Mean added latency per completion, in milliseconds.")
    latency_jitter_ms: float = Field(
        0.0, ge=0, description="Spread of the latency: uniform +/- this much, or the standard deviation (lognormal)."
    )
    latency_distribution: Literal["uniform", "lognormal"] = Field("uniform", description="Shape of the latency.")
    max_in_flight: int = Field(256, ge=1, description="Completions processed at once; more requests wait in a queue.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute (sliding 60 s window); over it -> 429.")
    tpm: int | None = Field(None, ge=1, description="Prompt+completion tokens per minute (sliding 60 s); over -> 429.")
    error_rate_5xx: float = Field(0.0, ge=0, le=1, description="Share of completions answered 500 or 503.")
    error_rate_429: float = Field(0.0, ge=0, le=1, description="Share answered 429 with Retry-After (injected).")
    error_rate_malformed: float = Field(
        0.0, ge=0, le=1, description="Share answered 200 with content that is not JSON or violates the schema."
    )
    error_rate_timeout: float = Field(
        0.0, ge=0, le=1, description="Share held for timeout_hold_s seconds, then answered 504."
    )
    error_rate_reset: float = Field(0.0, ge=0, le=1, description="Share whose connection is closed mid-response.")
    batch_api_failures: int = Field(
        0, ge=0, description="The first N calls of each Files and Batch API route a batch runner uses (upload, "
        "download, create, retrieve, list) are refused, 429 with Retry-After (retry_after_s) and 503 in turn, as a "
        "busy Batch API answers; later calls are served.",
    )
    timeout_hold_s: float = Field(60.0, ge=0, description="How long an injected timeout holds the request, seconds.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After of injected 429s, seconds.")
    seed: int = Field(0, description="Seed of the error and latency random generators.")
    judge_noise: float = Field(
        0.0, ge=0, le=0.5, description="Per-sample noise of the judge: about this share of judgements moved one grade, "
        "more often near a grade boundary (hard pairs) and never at a score band's middle; drawn from the request's "
        "content and `seed`, so each sample of a pair (seed i) is drawn anew (`sim.noise`).",
    )
    api_key: SecretStr | None = Field(
        None, description=f"If set, requests need 'Authorization: Bearer <key>' (CLI: --api-key or ${API_KEY_ENV})."
    )
    revoke_key_after: int | None = Field(
        None, ge=0, description="With api_key: refuse the key (401) on every completion after the first N, as if it "
                                "were revoked mid-run (GET /v1/models keeps accepting it, so preflight passes)."
    )
    vision: bool = Field(
        True, description="The model takes images. Off (--no-vision): a request with an image_url part is answered 500 "
        "'image input is not supported - hint: ...', as llama.cpp's server without its mmproj does.",
    )
    context_tokens: int | None = Field(
        None, ge=1, description="Context size in tokens: a longer prompt is answered 400 exceed_context_size_error "
        "with n_prompt_tokens and n_ctx, as llama.cpp's server does. None: no limit.",
    )
    reasoning: bool = Field(
        False, description="Act as a reasoning model (OpenAI o-series, gpt-5 family): a temperature other than 1 is "
        "answered 400 unsupported_value, max_tokens 400 unsupported_parameter; takes max_completion_tokens and "
        "reasoning_effort.",
    )
    json_schema: bool = Field(
        True, description="Accept response_format json_schema. Off (--no-json-schema): it is answered 400 (param response_format), "
        "as servers without structured output do.",
    )
    prefix_cache_size: int = Field(10_000, ge=0, description="Prompt prefixes remembered for cached_tokens (LRU).")
    access_log: bool = Field(False, description="Log every request to stderr (slows the server down).")
    record_requests: int = Field(
        0, ge=0, le=10_000,
        description="Keep the last N completion request bodies (headers never) for GET /debug/requests; 0 = off.",
    )

    @model_validator(mode="after")
    def _error_rates_fit(self) -> SimConfig:
        total = sum(self.error_rate(kind) for kind in ERROR_KINDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"error rates add up to {total:.3f}; their sum must be at most 1")
        return self

    def error_rate(self, kind: str) -> float:
        return float(getattr(self, f"error_rate_{kind}"))

    def to_argv(self, include_api_key: bool = False) -> list[str]:
        """Command-line flags that reproduce this config (the API key only if asked: prefer the environment)."""
        argv: list[str] = []
        defaults = SimConfig()
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "api_key":
                if value is not None and include_api_key:
                    argv += ["--api-key", value.get_secret_value()]
                continue
            if value == getattr(defaults, name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                argv += [flag, ",".join(value)]
            elif value is not None:
                argv += [flag, str(value)]
        return argv
