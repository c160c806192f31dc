"""Batch mode: the client's structured calls sent through an OpenAI-compatible Batch API (half the price at OpenAI).

Requests become JSONL lines (`custom_id` = the row's store key), uploaded with purpose "batch" in parts of at
most 50,000 requests; each part is one batch; the runner polls until every batch is terminal, downloads its
output and error files, and parses each result with the client's tolerant parse and schema check.

Resumable: every step is recorded in `<state_uri>/batch-state.json` (a local folder or an s3:// prefix) before the
next one starts, beside each part's input and downloaded results. A runner started again on the same state
picks up the submitted batches instead of sending them again: requests whose `custom_id` is already in a part
are not resubmitted, new ones go into new parts, results already downloaded are read from the state folder. A
batch created just before a crash, before its id was recorded, is found again by its input file (`batches.list`);
a file uploaded just before a crash is uploaded again (the first copy stays, unused, on the provider).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, SecretStr, ValidationError

from rae_ray.config import EndpointConfig, StageModelConfig
from rae_ray.io import Storage, join_uri
from rae_ray.llm import protocol
from rae_ray.llm.client import CallResult, FatalEndpointError, LLMClient
from rae_ray.llm.protocol import parse_json_reply
from rae_ray.llm.redaction import redact
from rae_ray.llm.schemas import response_format as schema_format

CHAT_COMPLETIONS = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_FILE = "batch-state.json"
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit
MAX_BYTES_PER_BATCH = 50_000_000  # OpenAI allows 200 MB; smaller parts upload and finish sooner


class BatchStateError(RuntimeError):
    """The state folder holds something this runner cannot resume (another endpoint, a damaged file)."""


class BatchTimeout(TimeoutError):
    """The batches did not finish in the time given; run again with the same state to keep waiting."""


@dataclass(frozen=True)
class BatchRequest:
    """One structured call of a batch: the row's store key and the chat messages (as for `LLMClient.structured`)."""

    custom_id: str
    messages: list[dict[str, Any]]


@dataclass
class BatchPart:
    """One uploaded file and its batch, as recorded in the state file."""

    index: int
    requests: int
    input_uri: str
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str = "written"  # written, uploaded, then the batch's own status
    request_counts: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_uri: str | None = None
    error_uri: str | None = None
    downloaded: bool = False

    @property
    def done(self) -> bool:
        return self.status in TERMINAL and self.downloaded


@dataclass
class BatchState:
    base_url: str
    created_at: float
    parts: list[BatchPart] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(part.done for part in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "created_at": self.created_at, "parts": [asdict(p) for p in self.parts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchState:
        return cls(base_url=data["base_url"], created_at=data["created_at"],
                   parts=[BatchPart(**part) for part in data["parts"]])


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


def _ids_uri(input_uri: str) -> str:
    return input_uri.removesuffix("-input.jsonl") + "-ids.json"


def write_part_files(storage: Storage, state_uri: str, custom_ids: Sequence[str], lines: Sequence[str]) -> str:
    """Write one part's input JSONL (and its custom_ids beside it) under `state_uri`; returns the input's URI.

    Pure I/O, safe to call from Ray tasks in parallel (unique names); the driver then `record_part`s the URIs.
    """
    if len(custom_ids) != len(lines) or not lines:
        raise ValueError("a part needs one custom_id per line, and at least one line")
    uri = join_uri(state_uri, f"part-{uuid.uuid4().hex[:12]}-input.jsonl")
    storage.write_bytes(_ids_uri(uri), json.dumps(list(custom_ids)).encode())
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode())
    return uri


class BatchRunner:
    """Submit, poll, download and parse the batches of one stage of one run; resumable from `state_uri`."""

    def __init__(self, endpoint: EndpointConfig, api_key: SecretStr, state_uri: str, storage: Storage | None = None,
                 poll_interval_s: float = 30.0, completion_window: str = "24h",
                 max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH, max_bytes_per_batch: int = MAX_BYTES_PER_BATCH,
                 metadata: dict[str, str] | None = None):
        if not 1 <= max_requests_per_batch <= MAX_REQUESTS_PER_BATCH:
            raise ValueError(f"max_requests_per_batch must be between 1 and {MAX_REQUESTS_PER_BATCH}")
        self.endpoint = endpoint
        self._secret = api_key.get_secret_value()
        self.state_uri = state_uri
        self.storage = storage or Storage()
        self.poll_interval_s = poll_interval_s
        self.completion_window = completion_window
        self.max_requests = max_requests_per_batch
        self.max_bytes = max_bytes_per_batch
        self.metadata = dict(metadata or {})
        self._client = openai.AsyncOpenAI(api_key=self._secret, base_url=endpoint.base_url,
                                          max_retries=endpoint.max_retries, timeout=max(endpoint.timeout_s, 300.0))
        self.state = self._load()

    # -- state

    @property
    def _state_file(self) -> str:
        return join_uri(self.state_uri, STATE_FILE)

    def _load(self) -> BatchState:
        if not self.storage.exists(self._state_file):
            return BatchState(base_url=self.endpoint.base_url, created_at=time.time())
        try:
            state = BatchState.from_json(json.loads(self.storage.read_bytes(self._state_file)))
        except (ValueError, KeyError, TypeError) as error:
            raise BatchStateError(f"{self._state_file} is not a batch state this runner can read: {error}") from None
        if state.base_url != self.endpoint.base_url:
            raise BatchStateError(f"{self._state_file} holds batches of {state.base_url}, not {self.endpoint.base_url}: "
                                  "use another state folder")
        return state

    def _save(self) -> None:
        self.storage.write_json(self._state_file, self.state.to_json())

    def _part_ids(self, part: BatchPart) -> list[str]:
        return json.loads(self.storage.read_bytes(_ids_uri(part.input_uri)))

    def submitted_ids(self) -> set[str]:
        """custom_ids already in a part (from the state folder)."""
        return {custom_id for part in self.state.parts for custom_id in self._part_ids(part)}

    # -- steps

    def write_parts(self, lines: Iterable[tuple[str, str]]) -> int:
        """Record new (custom_id, JSONL line) requests as parts in the state folder; returns how many were new."""
        known = self.submitted_ids()
        ids: list[str] = []
        chunk: list[str] = []
        size = new = 0
        for custom_id, line in lines:
            if custom_id in known:
                continue
            known.add(custom_id)
            line_bytes = len(line.encode()) + 1
            if chunk and (len(chunk) >= self.max_requests or size + line_bytes > self.max_bytes):
                self.record_part(write_part_files(self.storage, self.state_uri, ids, chunk))
                ids, chunk, size = [], [], 0
            ids.append(custom_id)
            chunk.append(line)
            size += line_bytes
            new += 1
        if chunk:
            self.record_part(write_part_files(self.storage, self.state_uri, ids, chunk))
        return new

    def record_part(self, input_uri: str) -> BatchPart:
        """Add a part written by `write_part_files` (by this runner, or by Ray tasks in parallel) to the state."""
        requests = len(json.loads(self.storage.read_bytes(_ids_uri(input_uri))))
        part = BatchPart(index=len(self.state.parts), requests=requests, input_uri=input_uri)
        self.state.parts.append(part)
        self._save()
        return part

    async def _call(self, what: str, coroutine):
        try:
            return await coroutine
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise FatalEndpointError(f"endpoint {self.endpoint.base_url} refused the API key ({error.status_code}) "
                                     f"while {what}") from None
        except openai.APIError as error:
            raise RuntimeError(redact(f"batch mode: {what} failed: {error}", (self._secret,))[:500]) from None

    async def _find_batch(self, input_file_id: str) -> str | None:
        """A batch already created from this input file (the runner died before recording its id)."""
        page = await self._call("listing batches", self._client.batches.list(limit=100))
        return next((batch.id for batch in page.data if batch.input_file_id == input_file_id), None)

    async def submit(self) -> None:
        """Upload every recorded part not uploaded yet and create its batch (idempotent across restarts)."""
        for part in self.state.parts:
            if part.input_file_id is None:
                data = self.storage.read_bytes(part.input_uri)
                uploaded = await self._call(
                    f"uploading part {part.index}",
                    self._client.files.create(file=(f"rae-ray-part-{part.index:05d}.jsonl", data), purpose="batch"))
                part.input_file_id, part.status = uploaded.id, "uploaded"
                self._save()
            if part.batch_id is None:
                part.batch_id = await self._find_batch(part.input_file_id)
                if part.batch_id is None:
                    batch = await self._call(f"creating the batch of part {part.index}", self._client.batches.create(
                        input_file_id=part.input_file_id, endpoint=CHAT_COMPLETIONS,
                        completion_window=self.completion_window,
                        metadata={**self.metadata, "rae_ray_part": str(part.index)}))
                    part.batch_id, part.status = batch.id, batch.status
                self._save()

    async def poll(self) -> bool:
        """Look at every unfinished batch once; download the files of those that ended. True when all are done."""
        for part in self.state.parts:
            if part.done or part.batch_id is None:
                continue
            batch = await self._call(f"retrieving batch {part.batch_id}", self._client.batches.retrieve(part.batch_id))
            part.status = batch.status
            counts = batch.request_counts
            part.request_counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} \
                if counts else {}
            part.errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
            if batch.status in TERMINAL:
                for attr, file_id in (("output_uri", batch.output_file_id), ("error_uri", batch.error_file_id)):
                    if file_id:
                        content = await self._call(f"downloading {file_id}", self._client.files.content(file_id))
                        uri = part.input_uri.removesuffix("-input.jsonl") + f"-{attr.split('_')[0]}.jsonl"
                        self.storage.write_bytes(uri, content.read())
                        setattr(part, attr, uri)
                part.downloaded = True
            self._save()
        return self.state.done

    async def wait(self, timeout_s: float | None = None, on_poll: Callable[[BatchState], None] | None = None) -> None:
        """Poll until every batch is done; `BatchTimeout` after `timeout_s` (the state stays: run again to resume)."""
        started = time.monotonic()
        while not await self.poll():
            if on_poll is not None:
                on_poll(self.state)
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                pending = [p.batch_id for p in self.state.parts if not p.done]
                raise BatchTimeout(f"batches {pending} not finished after {timeout_s:g}s; state in {self.state_uri}")
            await asyncio.sleep(self.poll_interval_s)

    def result_lines(self) -> Iterator[dict[str, Any]]:
        """Every downloaded result line (output and error files of all parts)."""
        for part in self.state.parts:
            for uri in (part.output_uri, part.error_uri):
                if uri is None:
                    continue
                for line in self.storage.read_bytes(uri).decode().splitlines():
                    if line.strip():
                        yield json.loads(line)

    def _unanswered(self, part_of: dict[str, BatchPart], custom_id: str) -> CallResult:
        part = part_of.get(custom_id)
        if part is None:
            return CallResult(error="not sent: no batch holds this request", error_kind=protocol.NOT_SENT)
        if part.status == "failed":
            first = (part.errors or [{}])[0]
            where = f" (line {first['line']})" if first.get("line") else ""
            return CallResult(error=f"batch {part.batch_id} failed: {first.get('code')}: {first.get('message')}{where}",
                              error_kind=protocol.REFUSED)
        return CallResult(error=f"no result: batch {part.batch_id} ended {part.status}", error_kind=protocol.NOT_SENT)

    # -- all at once

    async def run(self, requests: Sequence[BatchRequest], output: type[BaseModel], schema_name: str,
                  model: str | StageModelConfig, temperature: float = 0.0, max_output_tokens: int = 800,
                  check: Callable[[BaseModel], None] | None = None, timeout_s: float | None = None,
                  on_poll: Callable[[BatchState], None] | None = None,
                  response_format: dict[str, Any] | None = None) -> dict[str, CallResult]:
        """Results of `requests` by custom_id: what the batches answered, or why there is no answer (the request
        arguments as for `LLMClient.structured`)."""
        ids = [r.custom_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("custom_ids of a batch must be unique")
        settings = protocol.model_settings(model, temperature, max_output_tokens)
        self.write_parts((r.custom_id, request_line(r, output, schema_name, settings, json_schema=self.endpoint.json_schema,
                                                    response_format=response_format,
                                                    length_limits=self.endpoint.length_limits)) for r in requests)
        await self.submit()
        await self.wait(timeout_s, on_poll)
        wanted = set(ids)
        results: dict[str, CallResult] = {}
        for item in self.result_lines():
            custom_id, result = parse_result_line(item, output, schema_name, check, settings)
            if custom_id in wanted:
                results[custom_id] = result
        missing = wanted - results.keys()
        if missing:
            part_of = self._parts_by_id(missing)
            for custom_id in missing:
                results[custom_id] = self._unanswered(part_of, custom_id)
        return results

    def _parts_by_id(self, ids: set[str]) -> dict[str, BatchPart]:
        return {custom_id: part for part in self.state.parts for custom_id in self._part_ids(part) if custom_id in ids}

    async def cancel(self) -> None:
        """Ask the endpoint to cancel every unfinished batch (their partial results are still downloaded)."""
        for part in self.state.parts:
            if part.batch_id is not None and part.status not in TERMINAL:
                try:
                    await self._client.batches.cancel(part.batch_id)
                except openai.ConflictError:  # it ended meanwhile: nothing to cancel
                    pass

    async def close(self) -> None:
        await self._client.close()
