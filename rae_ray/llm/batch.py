"""Batch mode: the client's structured calls sent through an OpenAI-compatible Batch API (half the price at OpenAI).

Requests become JSONL lines (`custom_id` = the row's store key), uploaded with purpose "batch" in parts of at
most 50,000 requests; each part is one batch; the runner polls until every batch is terminal, downloads its
output and error files, and parses each result with the client's tolerant parse and schema check.

Every call goes through the stage's `LLMClient` (its retries, key rules and budget): before a part is submitted the
client asks the run's budget for all its requests; when the budget says stop (max_cost_usd reached) the part is
not sent and its requests come back "not sent: <reason>", as online calls do. The cost of the results, at the
Batch API's price, goes to the budget when they are read. A call that still fails after the client's retries
leaves the requests of its part with the error (the state keeps the part: a rerun tries again).

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

from pydantic import BaseModel

from rae_ray.config import StageModelConfig
from rae_ray.io import Storage, join_uri
from rae_ray.llm import protocol
from rae_ray.llm.batch_lines import CHAT_COMPLETIONS, BatchRequest, parse_result_line, part_tokens, request_line
from rae_ray.llm.client import CallResult, EndpointCallError, LLMClient

TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_FILE = "batch-state.json"
MAX_REQUESTS_PER_BATCH = 50_000  # OpenAI's limit
MAX_BYTES_PER_BATCH = 50_000_000  # OpenAI allows 200 MB; smaller parts upload and finish sooner


class BatchStateError(RuntimeError):
    """The state folder holds something this runner cannot resume (another endpoint, a damaged file)."""


class BatchTimeout(TimeoutError):
    """The batches did not finish in the time given; run again with the same state to keep waiting."""


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
    """Submit, poll, download and parse the batches of one stage of one run through `client` (the stage's, with
    its budget and price); resumable from `state_uri`."""

    def __init__(self, client: LLMClient, state_uri: str, storage: Storage | None = None,
                 poll_interval_s: float = 30.0, completion_window: str = "24h",
                 max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH, max_bytes_per_batch: int = MAX_BYTES_PER_BATCH,
                 metadata: dict[str, str] | None = None):
        if not 1 <= max_requests_per_batch <= MAX_REQUESTS_PER_BATCH:
            raise ValueError(f"max_requests_per_batch must be between 1 and {MAX_REQUESTS_PER_BATCH}")
        self.client = client
        self.endpoint = client.endpoint
        self.state_uri = state_uri
        self.storage = storage or Storage()
        self.poll_interval_s = poll_interval_s
        self.completion_window = completion_window
        self.max_requests = max_requests_per_batch
        self.max_bytes = max_bytes_per_batch
        self.metadata = dict(metadata or {})
        self.state = self._load()
        self.stopped: str | None = None  # the budget's reason to submit no more parts (the cost limit)
        self._failed: dict[int, EndpointCallError] = {}  # part index -> the call that failed it in this runner
        self._reserved: dict[int, int] = {}  # part index -> tokens this runner asked the budget for
        self._reported: set[int] = set()  # parts whose results this runner reported to the budget

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

    def _pending(self) -> list[BatchPart]:
        """Parts with a batch still to wait for (not done, and not failed in this runner)."""
        return [p for p in self.state.parts if p.batch_id is not None and not p.done and p.index not in self._failed]

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

    async def _find_batch(self, input_file_id: str) -> str | None:
        """A batch already created from this input file (the runner died before recording its id)."""
        batches = await self.client.list_batches(limit=100)
        return next((batch.id for batch in batches if batch.input_file_id == input_file_id), None)

    async def submit(self) -> None:
        """Upload every recorded part not uploaded yet and create its batch (idempotent across restarts), each
        after the budget allowed it; once the budget says stop, no further part is submitted."""
        for part in self.state.parts:
            if self.stopped is not None:
                return
            if part.batch_id is None and part.index not in self._failed:
                try:
                    await self._submit(part)
                except EndpointCallError as error:
                    self._failed[part.index] = error
                    if part.index in self._reserved:  # nothing was sent: the budget gets its estimate back
                        self.client.report_batch(self._reserved.pop(part.index), [])

    async def _submit(self, part: BatchPart) -> None:
        if part.input_file_id is not None:
            part.batch_id = await self._find_batch(part.input_file_id)
            if part.batch_id is not None:
                self._save()
                return
        data = self.storage.read_bytes(part.input_uri)
        tokens = part_tokens(data)
        self.stopped = await self.client.reserve_batch(tokens)
        if self.stopped is not None:
            return
        self._reserved[part.index] = tokens
        if part.input_file_id is None:
            uploaded = await self.client.upload_file(f"rae-ray-part-{part.index:05d}.jsonl", data)
            part.input_file_id, part.status = uploaded.id, "uploaded"
            self._save()
        batch = await self.client.create_batch(part.input_file_id, CHAT_COMPLETIONS, self.completion_window,
                                               metadata={**self.metadata, "rae_ray_part": str(part.index)})
        part.batch_id, part.status = batch.id, batch.status
        self._save()

    async def poll(self) -> bool:
        """Look at every unfinished batch once; download the files of those that ended. True when none is left
        to wait for (parts not submitted, because the budget said stop or a call failed, are not waited for)."""
        for part in self._pending():
            try:
                await self._poll(part)
            except EndpointCallError as error:
                self._failed[part.index] = error
        return not self._pending()

    async def _poll(self, part: BatchPart) -> None:
        batch = await self.client.retrieve_batch(part.batch_id)
        part.status = batch.status
        counts = batch.request_counts
        part.request_counts = {"total": counts.total, "completed": counts.completed, "failed": counts.failed} \
            if counts else {}
        part.errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
        if batch.status in TERMINAL:
            for attr, file_id in (("output_uri", batch.output_file_id), ("error_uri", batch.error_file_id)):
                if file_id:
                    uri = part.input_uri.removesuffix("-input.jsonl") + f"-{attr.split('_')[0]}.jsonl"
                    self.storage.write_bytes(uri, await self.client.file_content(file_id))
                    setattr(part, attr, uri)
            part.downloaded = True
        self._save()

    async def wait(self, timeout_s: float | None = None, on_poll: Callable[[BatchState], None] | None = None) -> None:
        """Poll until every batch is done; `BatchTimeout` after `timeout_s` (the state stays: run again to resume)."""
        started = time.monotonic()
        while not await self.poll():
            if on_poll is not None:
                on_poll(self.state)
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                pending = [p.batch_id for p in self._pending()]
                raise BatchTimeout(f"batches {pending} not finished after {timeout_s:g}s; state in {self.state_uri}")
            await asyncio.sleep(self.poll_interval_s)

    def _part_lines(self, part: BatchPart) -> Iterator[dict[str, Any]]:
        for uri in (part.output_uri, part.error_uri):
            if uri is not None:
                for line in self.storage.read_bytes(uri).decode().splitlines():
                    if line.strip():
                        yield json.loads(line)

    def result_lines(self) -> Iterator[dict[str, Any]]:
        """Every downloaded result line (output and error files of all parts)."""
        for part in self.state.parts:
            yield from self._part_lines(part)

    def _unanswered(self, part_of: dict[str, BatchPart], custom_id: str) -> CallResult:
        part = part_of.get(custom_id)
        if part is None:
            return CallResult(error="not sent: no batch holds this request", error_kind=protocol.NOT_SENT)
        if part.index in self._failed:
            failed = self._failed[part.index]
            kept = f"; batch {part.batch_id} is kept: run again to pick it up" if part.batch_id else ""
            return CallResult(error=f"batch mode: {failed}{kept}"[:500], error_kind=failed.kind)
        if part.batch_id is None and self.stopped is not None:
            return CallResult(error=f"not sent: {self.stopped}", error_kind=protocol.NOT_SENT)
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
        for part in self.state.parts:
            if not part.done:
                continue
            parsed = [parse_result_line(item, output, schema_name, check, settings) for item in self._part_lines(part)]
            self._report(part, [result for _, result in parsed])
            results.update((custom_id, result) for custom_id, result in parsed if custom_id in wanted)
        missing = wanted - results.keys()
        if missing:
            part_of = self._parts_by_id(missing)
            for custom_id in missing:
                results[custom_id] = self._unanswered(part_of, custom_id)
        return results

    def _report(self, part: BatchPart, results: list[CallResult]) -> None:
        """A part's real tokens and cost to the budget, once per runner (a part submitted by an earlier runner
        was not reserved by this one: its tokens are not taken from this minute's bucket)."""
        if part.index in self._reported:
            return
        self._reported.add(part.index)
        used = sum(r.prompt_tokens + r.completion_tokens for r in results)
        self.client.report_batch(self._reserved.pop(part.index, used), results)

    def _parts_by_id(self, ids: set[str]) -> dict[str, BatchPart]:
        return {custom_id: part for part in self.state.parts for custom_id in self._part_ids(part) if custom_id in ids}

    async def cancel(self) -> None:
        """Ask the endpoint to cancel every unfinished batch (their partial results are still downloaded)."""
        for part in self.state.parts:
            if part.batch_id is not None and part.status not in TERMINAL:
                await self.client.cancel_batch(part.batch_id)
