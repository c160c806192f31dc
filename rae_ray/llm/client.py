"""The one LLM client: structured output, tolerant parsing, bounded re-ask, retries, usage, redaction.

Retries, backoff, concurrency limits, the run's budget and the price live here and nowhere else. A call never
raises for one bad row: it returns a `CallResult` whose `error` says what went wrong and whose `error_kind` (see
`protocol`) says what kind of failure it was. Answers no retry can change (a model that takes no images, a prompt
over the context) are not retried. It raises `FatalEndpointError` only when no further call can succeed (bad API
key, no permission), so the run stops instead of burning retries.

Batch mode (`batch.BatchRunner`) sends through the same client: the Files and Batch API calls below follow the
same retry and key rules, and a provider batch asks the budget for all its requests before it is submitted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from openai.types import Batch, FileObject
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, SecretStr, ValidationError

from rae_ray.config import EndpointConfig, Price, StageModelConfig
from rae_ray.llm import protocol
from rae_ray.llm.protocol import estimate_tokens, parse_json_reply
from rae_ray.llm.ratelimit import RateBudget
from rae_ray.llm.redaction import redact
from rae_ray.llm.schemas import response_format as schema_format

# Uploads and downloads of batch files (up to 200 MB at OpenAI) get at least this long, whatever `timeout_s` says.
FILE_TIMEOUT_S = 300.0
T = TypeVar("T")


class FatalEndpointError(RuntimeError):
    """The endpoint refuses every call (401/403): stop the run, do not retry."""


class EndpointCallError(RuntimeError):
    """A Files or Batch API call that failed: refused (4xx) or still failing after the retries. Redacted.

    `kind`: `protocol.REFUSED` or `protocol.TRANSPORT`, as a structured call's `error_kind` would say."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class CallResult:
    """Outcome of one logical call (all its attempts)."""

    value: BaseModel | None = None
    error: str | None = None
    error_kind: str | None = None  # what kind of failure (protocol.IMAGE_UNSUPPORTED, ...); None on success
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    attempts_log: list[str] = field(default_factory=list)

    def add_usage(self, usage: Any) -> None:
        if usage is None:
            return
        self.prompt_tokens += usage.prompt_tokens or 0
        self.completion_tokens += usage.completion_tokens or 0
        details = getattr(usage, "prompt_tokens_details", None)
        self.cached_tokens += (getattr(details, "cached_tokens", 0) or 0) if details else 0


def _transient(error: Exception) -> bool:
    """Worth asking again: 408, 409, 425, 429, 5xx, timeouts and dropped connections."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 425, 429) or error.status_code >= 500
    return isinstance(error, openai.APIConnectionError)


def _retry_after(error: Exception) -> float | None:
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) * scale
            except ValueError:
                continue
    return None


class LLMClient:
    """`AsyncOpenAI` with this project's retry, parse and accounting rules; one per actor."""

    def __init__(self, endpoint: EndpointConfig, api_key: SecretStr, max_concurrent: int = 32,
                 budget: RateBudget | None = None, price: Price | None = None):
        self.endpoint = endpoint
        self._secret = api_key.get_secret_value()
        self._client = openai.AsyncOpenAI(
            api_key=self._secret, base_url=endpoint.base_url, max_retries=0, timeout=endpoint.timeout_s
        )
        self._semaphore = asyncio.Semaphore(max_concurrent)
        self._fatal: FatalEndpointError | None = None
        self._budget = budget
        self._price = price

    def _cost(self, usage: Any) -> float:
        if self._price is None or usage is None:
            return 0.0
        details = getattr(usage, "prompt_tokens_details", None)
        cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
        return self._price.cost(usage.prompt_tokens or 0, cached, usage.completion_tokens or 0)

    def _backoff(self, attempt: int) -> float:
        base = min(self.endpoint.backoff_max_s, self.endpoint.backoff_base_s * 2**attempt)
        return random.uniform(base / 2, base)

    async def structured(
        self,
        messages: list[dict[str, Any]],
        output: type[BaseModel],
        schema_name: str,
        model: str | StageModelConfig,
        temperature: float = 0.0,
        max_output_tokens: int = 800,
        check: Callable[[BaseModel], None] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> CallResult:
        """One structured call: retries transport failures, asks once more with a larger limit when the reply is
        cut, re-asks (bounded) when it does not parse.

        `model`: a model name, sent with `temperature` and `max_output_tokens`; or a stage's model config, whose
        own settings (temperature, token limits, reasoning) are sent. `response_format`: default `output`'s
        strict JSON schema.
        """
        settings = protocol.model_settings(model, temperature, max_output_tokens)
        fmt = response_format or schema_format(output, schema_name)
        result = CallResult()
        started = time.monotonic()
        messages = list(messages)
        limit = settings.max_output_tokens
        transport_failures = 0
        parse_failures = 0
        while True:
            body = protocol.request_body(messages, settings, fmt, self.endpoint.json_schema, limit,
                                         self.endpoint.length_limits)
            estimate = estimate_tokens(body["messages"], limit)
            stop = None
            try:
                async with self._semaphore:
                    if self._fatal is not None:
                        raise FatalEndpointError(*self._fatal.args)
                    # Budget inside the semaphore: a call waiting for a slot holds no permit, and learns of a
                    # cost limit reached while it waited.
                    if self._budget is not None:
                        stop = await self._budget.acquire(estimate)
                    if stop is None:
                        result.calls += 1
                        # POST the body as built (what `chat.completions.create` sends, without its per-call
                        # walk of the body against the SDK's type hints: a good part of a call's CPU).
                        response = await self._client.post("/chat/completions", body=body, cast_to=ChatCompletion)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise self._key_refused(error) from None
            except openai.APIStatusError as error:
                fields = protocol.error_fields(error.body)
                kind = protocol.refusal_kind(fields)
                if kind is not None:  # asking again cannot help, whatever the status (llama.cpp says 500)
                    result.attempts_log.append(self._describe(error))
                    result.error_kind = kind
                    result.error = redact(protocol.refusal_message(kind, fields, settings.model), (self._secret,))[:500]
                    break
                if _transient(error):
                    if await self._retry(result, error, transport_failures):
                        transport_failures += 1
                        continue
                    break
                result.error_kind, result.error = protocol.REFUSED, self._describe(error)
                break
            except openai.APIConnectionError as error:  # timeouts too
                if await self._retry(result, error, transport_failures):
                    transport_failures += 1
                    continue
                break
            if stop is not None:
                result.error_kind, result.error = protocol.NOT_SENT, f"not sent: {stop}"
                break
            result.add_usage(response.usage)
            if self._budget is not None:
                used = (response.usage.total_tokens or 0) if response.usage else estimate
                self._budget.report(estimate, used, self._cost(response.usage))
            choice = response.choices[0] if response.choices else None
            content = choice.message.content if choice is not None else None
            if choice is not None and choice.finish_reason == "length":
                # Cut JSON never parses, and the same limit cuts it again: once more, the same messages, more room.
                result.attempts_log.append(f"reply cut at {limit} tokens")
                if limit < settings.max_output_tokens_retry:
                    limit = settings.max_output_tokens_retry
                    continue
                result.error_kind = protocol.CUT
                result.error = protocol.cut_message(limit, schema_name, limit != settings.max_output_tokens)
                break
            try:
                value = output.model_validate(parse_json_reply(content))
                if check is not None:
                    check(value)
                result.value = value
                result.error = result.error_kind = None
                break
            except (ValueError, ValidationError) as error:
                problem = self._parse_problem(error)
                result.attempts_log.append(f"unparsable reply: {problem}")
                if parse_failures >= self.endpoint.max_parse_retries:
                    result.error_kind = protocol.UNPARSABLE
                    result.error = f"reply did not match the {schema_name} schema after {parse_failures + 1} tries: {problem}"
                    break
                parse_failures += 1
                messages = messages + [
                    {"role": "assistant", "content": (content or "")[:4000]},
                    {
                        "role": "user",
                        "content": f"That reply was not valid: {problem}. Answer again with only the JSON object "
                        f"required by the {schema_name} schema.",
                    },
                ]
        result.seconds = time.monotonic() - started
        return result

    async def _retry(self, result: CallResult, error: Exception, failures: int) -> bool:
        described = self._describe(error)
        result.attempts_log.append(described)
        if failures >= self.endpoint.max_retries:
            result.error_kind = protocol.TRANSPORT
            result.error = f"gave up after {failures + 1} attempts: {described}"
            return False
        await asyncio.sleep(self._delay(error, failures))
        return True

    def _delay(self, error: Exception, failures: int) -> float:
        """Seconds before the next attempt: the server's Retry-After (capped at backoff_max_s), else backoff."""
        wait = _retry_after(error)
        return self._backoff(failures) if wait is None else min(wait, self.endpoint.backoff_max_s) + random.uniform(0, 0.25)

    def _key_refused(self, error: openai.APIStatusError) -> FatalEndpointError:
        """The run's end on a 401/403. Sticky: the calls queued behind this one stop without a request of their own."""
        self._fatal = FatalEndpointError(
            f"endpoint {self.endpoint.base_url} refused the API key ({error.status_code}); check "
            f"{self.endpoint.api_key_env}: " + redact(str(error.message), (self._secret,))
        )
        return self._fatal

    def _describe(self, error: Exception) -> str:
        if isinstance(error, openai.APIStatusError):
            body = error.body if isinstance(error.body, dict) else {}
            detail = body.get("error", body).get("message") if isinstance(body.get("error", body), dict) else None
            text = f"HTTP {error.status_code}: {detail or error.message}"
        elif isinstance(error, openai.APITimeoutError):
            text = f"timeout after {self.endpoint.timeout_s:g}s"
        elif isinstance(error, openai.APIConnectionError):
            cause = error.__cause__ or error
            text = f"connection error: {type(cause).__name__}: {cause}"
        else:
            text = f"{type(error).__name__}: {error}"
        return redact(text, (self._secret,))[:500]

    @staticmethod
    def _parse_problem(error: Exception) -> str:
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            return f"{where}: {first['msg']}"
        return str(error)[:300]

    async def preflight(self) -> None:
        """Fail fast, before any spending: endpoint reachable and key accepted (GET /models).

        A 429 or 5xx is retried a few times (a busy endpoint is not a broken one); any other answer stops the run.
        """
        attempts = min(self.endpoint.max_retries, 3) + 1
        for attempt in range(attempts):
            try:
                await self._client.models.list()
                return
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise FatalEndpointError(
                    f"endpoint {self.endpoint.base_url} refused the API key ({error.status_code}); check "
                    f"{self.endpoint.api_key_env}"
                ) from None
            except openai.NotFoundError:
                return  # some servers have no /models; calls will tell
            except openai.APIConnectionError as error:
                cause = error.__cause__ or error
                raise FatalEndpointError(
                    f"endpoint {self.endpoint.base_url} is unreachable: {type(cause).__name__}: "
                    f"{redact(str(cause), (self._secret,))}"
                ) from None
            except openai.APIStatusError as error:
                transient = error.status_code == 429 or error.status_code >= 500
                if transient and attempt + 1 < attempts:
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                raise FatalEndpointError(
                    f"endpoint {self.endpoint.base_url} answered GET /models with {self._describe(error)}"
                    + (f" ({attempts} attempts)" if transient else "")
                ) from None

    # -- the Files and Batch APIs (batch mode), under the same rules

    async def _request(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """One call of the endpoint's other APIs: a 401/403 stops the run (`FatalEndpointError`), 429, 5xx and
        timeouts are retried with backoff honouring Retry-After; any other answer, or one still failing after the
        retries, raises `EndpointCallError` saying `what` failed."""
        failures = 0
        while True:
            if self._fatal is not None:
                raise FatalEndpointError(*self._fatal.args)
            try:
                return await call()
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise self._key_refused(error) from None
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                described = self._describe(error)
                if not _transient(error):
                    raise EndpointCallError(f"{what}: {described}", protocol.REFUSED) from None
                if failures >= self.endpoint.max_retries:
                    raise EndpointCallError(f"{what}: gave up after {failures + 1} attempts: {described}",
                                            protocol.TRANSPORT) from None
                await asyncio.sleep(self._delay(error, failures))
                failures += 1

    async def upload_file(self, filename: str, data: bytes, purpose: str = "batch") -> FileObject:
        """POST /files; returns the file object."""
        timeout = max(self.endpoint.timeout_s, FILE_TIMEOUT_S)
        return await self._request(f"uploading {filename}", lambda: self._client.files.create(
            file=(filename, data), purpose=purpose, timeout=timeout))

    async def file_content(self, file_id: str) -> bytes:
        """GET /files/{id}/content."""

        async def download() -> bytes:
            content = await self._client.files.content(file_id, timeout=max(self.endpoint.timeout_s, FILE_TIMEOUT_S))
            return content.read()

        return await self._request(f"downloading {file_id}", download)

    async def create_batch(self, input_file_id: str, endpoint: str, completion_window: str,
                           metadata: dict[str, str] | None = None) -> Batch:
        """POST /batches; returns the batch object."""
        return await self._request(f"creating the batch of {input_file_id}", lambda: self._client.batches.create(
            input_file_id=input_file_id, endpoint=endpoint, completion_window=completion_window, metadata=metadata))

    async def retrieve_batch(self, batch_id: str) -> Batch:
        return await self._request(f"retrieving batch {batch_id}", lambda: self._client.batches.retrieve(batch_id))

    async def list_batches(self, limit: int = 100) -> list[Batch]:
        """The newest `limit` batches (one page)."""
        page = await self._request("listing batches", lambda: self._client.batches.list(limit=limit))
        return list(page.data)

    async def cancel_batch(self, batch_id: str) -> Batch | None:
        """Ask to cancel a batch; None if it had ended already (409)."""

        async def cancel() -> Batch | None:
            try:
                return await self._client.batches.cancel(batch_id)
            except openai.ConflictError:
                return None

        return await self._request(f"cancelling batch {batch_id}", cancel)

    async def reserve_batch(self, tokens_estimate: int) -> str | None:
        """Before a provider batch is submitted: ask the budget for all its requests at once (`tokens_estimate`:
        their estimates summed). Returns why it must not be sent (the cost limit reached), else None."""
        if self._budget is None:
            return None
        return await self._budget.acquire_batch(tokens_estimate)

    def report_batch(self, tokens_estimated: int, results: Iterable[CallResult]) -> float:
        """After a provider batch's results came back: its real tokens and its cost at the Batch API's price to
        the budget (nothing came back: the estimate is given back). Returns the cost."""
        prompt = cached = completion = 0
        for result in results:
            prompt, cached, completion = (prompt + result.prompt_tokens, cached + result.cached_tokens,
                                          completion + result.completion_tokens)
        cost = self._price.cost(prompt, cached, completion, batch=True) if self._price is not None else 0.0
        if self._budget is not None:
            self._budget.report(tokens_estimated, prompt + completion, cost)
        return cost

    async def close(self) -> None:
        await self._client.close()
