"""Enough of OpenAI's Files and Batch APIs for the simulated endpoint to test batch mode end to end.

Routes (registered by `register_batch_routes`):
`POST /v1/files` (multipart: `file`, `purpose`), `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
`DELETE /v1/files/{id}`, `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`, and `GET /stats/batches` (counters, like `/stats`).

A batch is processed in the background by the same judge as `/v1/chat/completions`: status `validating`, then
`in_progress` (a few hundred lines per tick, no per-request latency and no rate limits: a batch API is slow
because it queues, which the sim shortens to moments), then `finalizing` and `completed`. Results are JSONL in
OpenAI's shape: successes in the output file as
`{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": <chat completion>}, "error": null}`,
failed requests in the error file with the failing `status_code` and an `{"error": ...}` body. Error injection
applies per request: `malformed` answers 200 with a broken reply, every other kind answers 500; the routes a
runner calls answer 429 and 503 themselves with `batch_api_failures`. An input file
that does not validate (bad JSON, missing or duplicate custom_id, wrong url or method, over 50,000 lines)
makes the batch `failed` with `errors.data` naming the line. Files and batches live in memory.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rae_ray.sim.faults import BusyRoutes
from rae_ray.sim.noise import with_noise
from rae_ray.sim.protocol import ApiError, answer, completion_body, read_prompt, render, task_of
from rae_ray.sim.refusals import check_modes

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOWS = ("24h",)
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_BATCH_REQUESTS = 50_000
TERMINAL = ("completed", "failed", "expired", "cancelled")
_PURPOSES = ("batch", "batch_output", "assistants", "fine-tune", "vision", "user_data")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}


@dataclass
class SimBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    times: dict[str, int | None] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    completed: int = 0
    failed: int = 0
    model: str | None = None
    usage: collections.Counter = field(default_factory=collections.Counter)
    cancel_requested: bool = False

    def set_status(self, status: str) -> None:
        self.status = status
        self.times[f"{status}_at"] = int(time.time())

    def as_json(self) -> dict[str, Any]:
        stamps = {f"{s}_at": self.times.get(f"{s}_at") for s in
                  ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "expires_at": self.created_at + 24 * 3600, **stamps,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {
                "input_tokens": self.usage["input"], "input_tokens_details": {"cached_tokens": self.usage["cached"]},
                "output_tokens": self.usage["output"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage["input"] + self.usage["output"],
            },
            "metadata": self.metadata,
        }


class _InvalidFile(Exception):
    def __init__(self, code: str, message: str, line: int | None = None, param: str | None = None):
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param, "line": line}


class BatchService:
    """Files and batches of one simulated endpoint; answers with the endpoint's judge, in the background.

    `server` is the endpoint's `SimServer`: its key check (`check_auth`), fault draws (`faults`) and prompt-prefix
    cache (`prefixes`) apply to batches as to online calls.
    """

    def __init__(self, server: Any, validating_s: float = 0.1, finalizing_s: float = 0.05,
                 lines_per_tick: int = 200, tick_s: float = 0.005):
        self.server = server
        self.validating_s, self.finalizing_s = validating_s, finalizing_s
        self.lines_per_tick, self.tick_s = lines_per_tick, tick_s
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.tasks: set[asyncio.Task] = set()
        self.counters: collections.Counter = collections.Counter()
        self.busy = BusyRoutes(server.config.batch_api_failures, server.config.retry_after_s)

    # -- files

    async def create_file(self, request: web.Request) -> web.Response:
        self.server.check_auth(request)
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError) as error:
            raise ApiError(400, f"Expected a multipart/form-data upload: {error}") from error
        purpose, filename, data = None, "upload.jsonl", None
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                chunks, size = [], 0
                while chunk := await part.read_chunk(1 << 20):
                    size += len(chunk)
                    if size > MAX_FILE_BYTES:
                        raise ApiError(413, f"File is larger than {MAX_FILE_BYTES} bytes.", param="file")
                    chunks.append(chunk)
                data = b"".join(chunks)
        if data is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in _PURPOSES:
            raise ApiError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
        stored = self._store(filename, purpose, data)
        self.counters["files_uploaded"] += 1
        return web.json_response(stored.as_json())

    def _store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(id=f"file-sim{uuid.uuid4().hex[:24]}", filename=filename, purpose=purpose, data=data)
        self.files[stored.id] = stored
        return stored

    def _file(self, request: web.Request) -> StoredFile:
        self.server.check_auth(request)
        file_id = request.match_info["file_id"]
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return self.files[file_id]

    async def list_files(self, request: web.Request) -> web.Response:
        self.server.check_auth(request)
        purpose = request.query.get("purpose")
        data = [f.as_json() for f in self.files.values() if purpose in (None, f.purpose)]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def retrieve_file(self, request: web.Request) -> web.Response:
        return web.json_response(self._file(request).as_json())

    async def file_content(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        self.counters["files_downloaded"] += 1
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        del self.files[stored.id]
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    # -- batches

    async def create_batch(self, request: web.Request) -> web.Response:
        self.server.check_auth(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ApiError(400, f"The request body is not valid JSON: {error}") from error
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        input_file_id = body.get("input_file_id")
        if input_file_id not in self.files:
            raise ApiError(400, f"Invalid 'input_file_id': {input_file_id!r} is not a file.", param="input_file_id")
        if self.files[input_file_id].purpose != "batch":
            raise ApiError(400, "The input file must be uploaded with purpose 'batch'.", param="input_file_id")
        if body.get("endpoint") != BATCH_ENDPOINT:
            raise ApiError(400, f"The simulated endpoint batches only {BATCH_ENDPOINT}.", param="endpoint")
        if body.get("completion_window") not in COMPLETION_WINDOWS:
            raise ApiError(400, f"Invalid 'completion_window': supported are {list(COMPLETION_WINDOWS)}.",
                           param="completion_window")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise ApiError(400, "'metadata' must be an object of at most 16 string pairs.", param="metadata")
        batch = SimBatch(id=f"batch_sim{uuid.uuid4().hex[:24]}", input_file_id=input_file_id, endpoint=BATCH_ENDPOINT,
                         completion_window=body["completion_window"], metadata=metadata)
        self.batches[batch.id] = batch
        self.counters["batches_created"] += 1
        task = asyncio.get_running_loop().create_task(self._process(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response(batch.as_json())

    def _batch(self, request: web.Request) -> SimBatch:
        self.server.check_auth(request)
        batch_id = request.match_info["batch_id"]
        if batch_id not in self.batches:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return self.batches[batch_id]

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        self.counters["batch_retrievals"] += 1
        return web.json_response(self._batch(request).as_json())

    async def list_batches(self, request: web.Request) -> web.Response:
        self.server.check_auth(request)
        batches = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
        data = [b.as_json() for b in batches]
        return web.json_response({"object": "list", "data": data, "has_more": False,
                                  "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self._batch(request)
        if batch.status in TERMINAL:
            raise ApiError(409, f"Cannot cancel a batch with status '{batch.status}'.")
        batch.cancel_requested = True
        if batch.status != "cancelling":
            batch.set_status("cancelling")
        return web.json_response(batch.as_json())

    async def get_stats(self, request: web.Request) -> web.Response:
        by_status = collections.Counter(b.status for b in self.batches.values())
        return web.json_response({"simulated": True, **self.counters, "batches_by_status": dict(by_status),
                                  "files": len(self.files), "batch_api_refused": self.busy.refused})

    # -- processing

    def _validate(self, data: bytes) -> list[dict[str, Any]]:
        lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
        if not lines:
            raise _InvalidFile("empty_file", "The input file has no requests.")
        if len(lines) > MAX_BATCH_REQUESTS:
            raise _InvalidFile("too_many_requests", f"A batch holds at most {MAX_BATCH_REQUESTS} requests.")
        requests, seen = [], set()
        for number, line in enumerate(lines, start=1):
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise _InvalidFile("invalid_json_line", "This line is not parseable as valid JSON.", number) from None
            if not isinstance(item, dict):
                raise _InvalidFile("invalid_request", "Each line must be a JSON object.", number)
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                raise _InvalidFile("missing_required_parameter", "Missing custom_id.", number, "custom_id")
            if custom_id in seen:
                raise _InvalidFile("duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.",
                                   number, "custom_id")
            seen.add(custom_id)
            if item.get("method") != "POST":
                raise _InvalidFile("invalid_method", "Only the POST method is supported.", number, "method")
            if item.get("url") != BATCH_ENDPOINT:
                raise _InvalidFile("invalid_url", f"The url must be {BATCH_ENDPOINT}, as the batch's endpoint.",
                                   number, "url")
            if not isinstance(item.get("body"), dict):
                raise _InvalidFile("invalid_request", "Missing or invalid body.", number, "body")
            requests.append(item)
        return requests

    async def _process(self, batch: SimBatch) -> None:
        try:
            await self._pause(batch, self.validating_s)
            try:
                requests = self._validate(self.files[batch.input_file_id].data)
            except _InvalidFile as invalid:
                batch.errors = [invalid.error]
                batch.set_status("failed")
                return
            batch.total = len(requests)
            batch.model = next((r["body"].get("model") for r in requests), None)
            if batch.cancel_requested:
                return self._finish(batch, [], [], "cancelled")
            batch.set_status("in_progress")
            outputs: list[str] = []
            errors: list[str] = []
            for start in range(0, len(requests), self.lines_per_tick):
                if batch.cancel_requested:
                    return self._finish(batch, outputs, errors, "cancelled")
                for item in requests[start:start + self.lines_per_tick]:
                    status, body = self._answer(item["body"], batch)
                    line = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": item["custom_id"],
                            "response": {"status_code": status, "request_id": f"req_sim{uuid.uuid4().hex[:20]}",
                                         "body": body}, "error": None}
                    if status == 200:
                        batch.completed += 1
                        outputs.append(json.dumps(line))
                    else:
                        batch.failed += 1
                        errors.append(json.dumps(line))
                await asyncio.sleep(self.tick_s)
            batch.set_status("finalizing")
            await asyncio.sleep(self.finalizing_s)
            self._finish(batch, outputs, errors, "cancelled" if batch.cancel_requested else "completed")
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug in the sim must show, not leave the batch in progress forever
            batch.errors = [{"code": "server_error", "message": f"simulated batch failed: {error!r}", "param": None,
                             "line": None}]
            batch.set_status("failed")

    @staticmethod
    async def _pause(batch: SimBatch, seconds: float) -> None:
        """Sleep, but wake up at once when the batch is cancelled."""
        deadline = time.monotonic() + seconds
        while not batch.cancel_requested and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.02))

    def _finish(self, batch: SimBatch, outputs: list[str], errors: list[str], status: str) -> None:
        if outputs:
            batch.output_file_id = self._store(f"{batch.id}_output.jsonl", "batch_output",
                                               ("\n".join(outputs) + "\n").encode()).id
        if errors:
            batch.error_file_id = self._store(f"{batch.id}_error.jsonl", "batch_output",
                                              ("\n".join(errors) + "\n").encode()).id
        batch.set_status(status)
        self.counters[f"batches_{status}"] += 1

    def _answer(self, body: dict[str, Any], batch: SimBatch) -> tuple[int, dict[str, Any]]:
        """One request of a batch: (status code, response body) from the endpoint's judge."""
        server = self.server
        self.counters["batch_requests"] += 1
        try:
            prompt = read_prompt(body)
            check_modes(server.config, body, prompt.prompt_tokens, len(prompt.image_urls))
            task = task_of(prompt)
            injected = server.faults.draw()
            if injected not in (None, "malformed"):
                self.counters["batch_injected_errors"] += 1
                raise ApiError(500, "The server had an error while processing your request (injected, simulated).",
                               type_="server_error", code="server_error")
            reply = with_noise(task, answer(task, prompt.blocks, prompt.image_urls), prompt.blocks, prompt.model,
                               prompt.seed, server.config.judge_noise)
            cached = prompt.prefix_tokens if server.prefixes.seen_before(prompt.prefix_key) else 0
            if injected == "malformed":
                self.counters["batch_injected_errors"] += 1
                content = server.faults.malformed(reply)
            else:
                content = render(reply, prompt.wants_json)
            completion, completion_tokens = completion_body(prompt, content, cached)
        except ApiError as error:
            return error.status, error.body()
        batch.usage["input"] += prompt.prompt_tokens
        batch.usage["output"] += completion_tokens
        batch.usage["cached"] += cached
        return 200, completion


BATCH_SERVICE_KEY = web.AppKey("rae_sim_batches", BatchService)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _answering_errors(handler: Handler, busy: Callable[[], None] | None = None) -> Handler:
    """Errors in OpenAI's shape, as `/v1/chat/completions` answers them; `busy` may refuse the call first."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.Response:
        try:
            if busy is not None:
                busy()
            return await handler(request)
        except ApiError as error:
            return error.response()

    return wrapped


def register_batch_routes(app: web.Application, server: Any, **timing: Any) -> BatchService:
    """Add the Files and Batch routes to the simulated endpoint's app; returns the service (its state)."""
    service = BatchService(server, **timing)
    routes = [
        ("POST", "/v1/files", service.create_file),
        ("GET", "/v1/files", service.list_files),
        ("GET", "/v1/files/{file_id}", service.retrieve_file),
        ("GET", "/v1/files/{file_id}/content", service.file_content),
        ("DELETE", "/v1/files/{file_id}", service.delete_file),
        ("POST", "/v1/batches", service.create_batch),
        ("GET", "/v1/batches", service.list_batches),
        ("GET", "/v1/batches/{batch_id}", service.retrieve_batch),
        ("POST", "/v1/batches/{batch_id}/cancel", service.cancel_batch),
        ("GET", "/stats/batches", service.get_stats),
    ]
    busy = ("POST /v1/files", "GET /v1/files/{file_id}/content", "POST /v1/batches", "GET /v1/batches",
            "GET /v1/batches/{batch_id}")  # the routes a runner calls: refused first with batch_api_failures
    for method, path, handler in routes:
        route = f"{method} {path}"
        check = functools.partial(service.busy.check, route) if route in busy else None
        app.router.add_route(method, path, _answering_errors(handler, check))
    app[BATCH_SERVICE_KEY] = service

    async def _stop_processing(app: web.Application) -> None:
        for task in list(service.tasks):
            task.cancel()

    app.on_shutdown.append(_stop_processing)
    return service
