"""Batch mode against the simulated endpoint's Files and Batch APIs, with the real openai client."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
from aiohttp import web
from openai import AsyncOpenAI
from pydantic import SecretStr

from rae_ray.config import EndpointConfig
from rae_ray.llm.batch import BatchRequest, BatchRunner, BatchStateError, parse_result_line, request_line
from rae_ray.llm.client import FatalEndpointError, LLMClient
from rae_ray.llm.prompts import annotation_messages
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement, response_format
from rae_ray.sim import SimConfig, create_app
from rae_ray.sim.batches import BATCH_SERVICE_KEY
from rae_ray.sim.judge import DEFAULT_SCALE, SIMULATED_MARK, make_guideline
from rae_ray.sim.process import SimThread

T = TypeVar("T")
MODEL = "sim-judge"
SCALE = [dict(g) for g in DEFAULT_SCALE]
QUERIES = ["usb c cable", "aa batteries", "wireless mouse"]
TITLES = ["USB-C cable 2 m", "Duracell AA batteries 8 pack", "Logitech wireless mouse", "HDMI cable", "Laptop bag 15",
          "AAA batteries", "Gaming mouse pad"]


@pytest.fixture(scope="module")
def sim():
    with SimThread() as server:
        yield server


@pytest.fixture(scope="module")
def flaky_sim():
    """A third of the replies malformed (cut off, wrong shape, missing field or off the scale)."""
    with SimThread(error_rate_malformed=0.3, seed=3) as server:
        yield server


class SlowBatchSim:
    """The simulated endpoint in a thread of this process, its batches held in `validating` for a minute."""

    def __init__(self):
        self.base_url = ""
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self):
        app = create_app(SimConfig())
        app[BATCH_SERVICE_KEY].validating_s = 60.0
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def batch_stats(sim) -> dict[str, Any]:
    with urllib.request.urlopen(sim.root_url + "/stats/batches", timeout=10) as response:
        return json.loads(response.read())


def requests(n: int, prefix: str = "key") -> list[BatchRequest]:
    out = []
    for i in range(n):
        query = QUERIES[i % len(QUERIES)]
        product = {"title": TITLES[i % len(TITLES)], "brand": "Brand"}
        out.append(BatchRequest(f"{prefix}-{i:03d}", annotation_messages(query, make_guideline(query, SCALE), SCALE, product)))
    return out


def endpoint(sim, **settings: Any) -> EndpointConfig:
    return EndpointConfig(base_url=sim.base_url, api_key_required=False, **settings)


def runner(sim, state: Path, client: LLMClient | None = None, **kwargs: Any) -> BatchRunner:
    """A runner on its own client (the annotate stage hands it the stage's)."""
    return BatchRunner(client or LLMClient(endpoint(sim), SecretStr("sim")), str(state), poll_interval_s=0.02,
                       **kwargs)


def check_grade(judgement: RelevanceJudgement) -> None:
    if judgement.grade not in (0, 1, 2):
        raise ValueError(f"grade {judgement.grade} is not on the scale [0, 1, 2]")


async def run_batch(batch_runner: BatchRunner, batch: list[BatchRequest], **kwargs: Any):
    try:
        return await batch_runner.run(batch, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL, check=check_grade,
                                      timeout_s=60, **kwargs)
    finally:
        await batch_runner.client.close()


def jsonl(batch: list[BatchRequest]) -> bytes:
    return "\n".join(request_line(r, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL) for r in batch).encode() + b"\n"


# -- the simulated endpoint's Files and Batch APIs --------------------------------------------------------


def test_sim_files_round_trip(sim):
    async def go():
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sim")
        try:
            data = jsonl(requests(3))
            uploaded = await client.files.create(file=("input.jsonl", data), purpose="batch")
            retrieved = await client.files.retrieve(uploaded.id)
            content = await client.files.content(uploaded.id)
            with pytest.raises(openai.BadRequestError, match="purpose"):
                await client.files.create(file=("x.jsonl", b"{}"), purpose="nonsense")
            with pytest.raises(openai.NotFoundError):
                await client.files.content("file-missing")
            return uploaded, retrieved, content.read(), data
        finally:
            await client.close()

    uploaded, retrieved, content, data = run(go())
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == ("file", "batch", len(data), "input.jsonl")
    assert retrieved.id == uploaded.id and content == data


def test_sim_batch_goes_through_its_states_and_answers_like_the_online_endpoint(sim):
    batch_requests = requests(12)

    async def go():
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sim")
        try:
            uploaded = await client.files.create(file=("input.jsonl", jsonl(batch_requests)), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h", metadata={"run": "test"})
            seen = [batch.status]
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                await asyncio.sleep(0.01)
                batch = await client.batches.retrieve(batch.id)
                if batch.status != seen[-1]:
                    seen.append(batch.status)
            output = (await client.files.content(batch.output_file_id)).read().decode()
            online = await client.chat.completions.create(
                model=MODEL, messages=batch_requests[0].messages,
                response_format=response_format(RelevanceJudgement, JUDGEMENT_SCHEMA_NAME))
            return batch, seen, output, online
        finally:
            await client.close()

    batch, seen, output, online = run(go())
    assert seen[0] == "validating" and seen[-1] == "completed" and ("in_progress" in seen or "finalizing" in seen)
    assert seen == sorted(seen, key=["validating", "in_progress", "finalizing", "completed"].index)
    assert batch.request_counts.total == batch.request_counts.completed == 12 and batch.request_counts.failed == 0
    assert batch.error_file_id is None and batch.metadata == {"run": "test"} and batch.usage.input_tokens > 0
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["custom_id"] for line in lines] == [r.custom_id for r in batch_requests]
    first = lines[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["usage"]["prompt_tokens"] > 0
    assert json.loads(body["choices"][0]["message"]["content"]) == json.loads(online.choices[0].message.content)


def test_sim_batch_with_an_invalid_input_file_fails_naming_the_line(sim):
    good = jsonl(requests(2)).decode().splitlines()
    bad = "\n".join([good[0], good[1].replace('"key-001"', '"key-000"')]).encode()  # duplicate custom_id

    async def go():
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sim")
        try:
            uploaded = await client.files.create(file=("bad.jsonl", bad), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            while batch.status not in ("completed", "failed"):
                await asyncio.sleep(0.02)
                batch = await client.batches.retrieve(batch.id)
            with pytest.raises(openai.BadRequestError, match="completion_window"):
                await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                            completion_window="1h")
            return batch
        finally:
            await client.close()

    batch = run(go())
    assert batch.status == "failed" and batch.output_file_id is None
    error = batch.errors.data[0]
    assert (error.code, error.line, error.param) == ("duplicate_custom_id", 2, "custom_id")


def test_sim_batch_request_that_fails_goes_to_the_error_file(sim):
    good = requests(1)[0]
    no_data = BatchRequest("no-data", [{"role": "user", "content": "What is the weather?"}])

    async def go():
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sim")
        try:
            data = jsonl([good]) + request_line(no_data, RelevanceJudgement, "unknown_task", MODEL).encode() + b"\n"
            uploaded = await client.files.create(file=("input.jsonl", data), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            while batch.status != "completed":
                await asyncio.sleep(0.02)
                batch = await client.batches.retrieve(batch.id)
            errors = (await client.files.content(batch.error_file_id)).read().decode()
            return batch, [json.loads(line) for line in errors.splitlines()]
        finally:
            await client.close()

    batch, errors = run(go())
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    assert len(errors) == 1 and errors[0]["custom_id"] == "no-data"
    assert errors[0]["response"]["status_code"] == 400 and "error" in errors[0]["response"]["body"]


# -- BatchRunner --------------------------------------------------------------------------------------------


def test_runner_results_match_the_online_client(sim, tmp_path):
    batch = requests(15)
    results = run(run_batch(runner(sim, tmp_path / "state"), batch))

    async def online():
        client = LLMClient(endpoint(sim), SecretStr("sim"))
        try:
            return await asyncio.gather(*(client.structured(r.messages, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL)
                                          for r in batch))
        finally:
            await client.close()

    expected = run(online())
    assert set(results) == {r.custom_id for r in batch}
    for request, want in zip(batch, expected):
        got = results[request.custom_id]
        assert got.error is None and got.calls == 1 and got.prompt_tokens > 0 and got.completion_tokens > 0
        assert got.value == want.value and got.value.reasoning.startswith(SIMULATED_MARK)
    state = json.loads((tmp_path / "state" / "batch-state.json").read_text())
    assert [(p["status"], p["downloaded"], p["requests"]) for p in state["parts"]] == [("completed", True, 15)]


def test_runner_parses_tolerantly_and_records_replies_that_do_not_fit(flaky_sim, tmp_path):
    batch = requests(60)
    results = run(run_batch(runner(flaky_sim, tmp_path / "state"), batch))
    good = [r for r in results.values() if r.value is not None]
    bad = [r for r in results.values() if r.value is None]
    assert len(good) + len(bad) == 60 and 5 <= len(bad) <= 35
    assert all(r.error is None and r.value.grade in (0, 1, 2) for r in good)
    assert all(r.error.startswith("reply did not match the relevance_judgement schema after 1 tries: ") for r in bad)
    assert any("grade 7 is not on the scale" in r.error for r in bad)  # the schema check ran, not only the parse


def test_parse_result_line_takes_json_out_of_prose_and_fences():
    reply = {"reasoning": "fits", "grade": 2, "label": "highly relevant"}
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Here:\n```json\n{json.dumps(reply)}\n```"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    custom_id, result = parse_result_line({"custom_id": "k", "response": {"status_code": 200, "body": body}},
                                          RelevanceJudgement, JUDGEMENT_SCHEMA_NAME)
    assert custom_id == "k" and result.value == RelevanceJudgement(**reply) and result.prompt_tokens == 10
    _, expired = parse_result_line({"custom_id": "k", "response": None,
                                    "error": {"code": "batch_expired", "message": "not run in time"}},
                                   RelevanceJudgement, JUDGEMENT_SCHEMA_NAME)
    assert expired.error == "batch request failed: batch_expired: not run in time" and expired.calls == 0


def test_runner_splits_requests_into_parts(sim, tmp_path):
    before = batch_stats(sim)
    results = run(run_batch(runner(sim, tmp_path / "state", max_requests_per_batch=7), requests(20)))
    after = batch_stats(sim)
    assert len(results) == 20 and all(r.error is None for r in results.values())
    assert after["batches_created"] - before["batches_created"] == 3  # 7 + 7 + 6


def test_restarted_runner_picks_up_the_batch_instead_of_resubmitting(sim, tmp_path):
    state = tmp_path / "state"
    batch = requests(10)

    async def submit_and_die():
        first = runner(sim, state)
        first.write_parts((r.custom_id, request_line(r, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL)) for r in batch)
        await first.submit()
        await first.client.close()  # the driver dies here: batch submitted, never polled

    before = batch_stats(sim)
    run(submit_and_die())
    results = run(run_batch(runner(sim, state), batch))
    after = batch_stats(sim)
    assert all(r.value is not None for r in results.values()) and len(results) == 10
    assert after["batches_created"] - before["batches_created"] == 1
    assert after["files_uploaded"] - before["files_uploaded"] == 1

    # Run again: the results come from the state folder, nothing is uploaded, created or downloaded.
    again = run(run_batch(runner(sim, state), batch))
    final = batch_stats(sim)
    assert {k: v.value for k, v in again.items()} == {k: v.value for k, v in results.items()}
    assert all(final[k] == after[k] for k in ("batches_created", "files_uploaded", "files_downloaded"))


def test_batch_created_before_its_id_was_recorded_is_found_again(sim, tmp_path):
    state = tmp_path / "state"
    batch = requests(5)

    async def upload_create_and_die():
        first = runner(sim, state)
        first.write_parts((r.custom_id, request_line(r, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL)) for r in batch)
        await first.submit()
        part = first.state.parts[0]
        part.batch_id = None  # as if the process died between batches.create and writing the state
        first._save()
        await first.client.close()

    before = batch_stats(sim)
    run(upload_create_and_die())
    results = run(run_batch(runner(sim, state), batch))
    assert all(r.value is not None for r in results.values())
    assert batch_stats(sim)["batches_created"] - before["batches_created"] == 1


def test_restart_with_more_requests_sends_only_the_new_ones(sim, tmp_path):
    state = tmp_path / "state"
    run(run_batch(runner(sim, state), requests(8)))
    before = batch_stats(sim)
    more = requests(8) + requests(4, prefix="new")
    results = run(run_batch(runner(sim, state), more))
    assert set(results) == {r.custom_id for r in more} and all(r.value is not None for r in results.values())
    assert batch_stats(sim)["batches_created"] - before["batches_created"] == 1
    parts = json.loads((state / "batch-state.json").read_text())["parts"]
    assert [p["requests"] for p in parts] == [8, 4]


def test_failed_and_cancelled_batches_give_every_request_an_error(sim, tmp_path):
    batch = requests(3)

    async def broken_line():
        broken = runner(sim, tmp_path / "failed")
        lines = [(r.custom_id, request_line(r, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL)) for r in batch]
        lines[1] = (lines[1][0], "{not json")
        broken.write_parts(lines)
        return await run_batch(broken, batch)

    failed = run(broken_line())
    assert all(r.value is None and r.error.startswith("batch batch_sim") and
               "failed: invalid_json_line: This line is not parseable as valid JSON. (line 2)" in r.error
               for r in failed.values())

    async def cancel_at_once(slow):
        cancelled = runner(slow, tmp_path / "cancelled")
        cancelled.write_parts((r.custom_id, request_line(r, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL))
                              for r in batch)
        await cancelled.submit()
        await cancelled.cancel()
        return await run_batch(cancelled, batch)

    with SlowBatchSim() as slow:
        results = run(cancel_at_once(slow))
    assert all(r.value is None and r.error.endswith("ended cancelled") for r in results.values())


def test_state_of_another_endpoint_is_not_resumed(sim, tmp_path):
    state = tmp_path / "state"
    run(run_batch(runner(sim, state), requests(2)))
    other = EndpointConfig(base_url="http://127.0.0.1:9/v1", api_key_required=False)
    with pytest.raises(BatchStateError, match="use another state folder"):
        BatchRunner(LLMClient(other, SecretStr("x")), str(state))


# -- through the client's rules: retries, key ---------------------------------------------------------------


def test_busy_batch_api_is_retried_by_the_clients_rules(tmp_path):
    """Every route a runner calls answers 429 (Retry-After 5 s) then 503 before it serves: the client retries each
    within its max_retries, waiting Retry-After capped at backoff_max_s (not the 5 s an SDK would wait)."""
    with SimThread(batch_api_failures=2, retry_after_s=5) as busy:
        client = LLMClient(endpoint(busy, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.3), SecretStr("sim"))
        started = time.monotonic()
        results = run(run_batch(runner(busy, tmp_path / "state", client=client), requests(4)))
        seconds = time.monotonic() - started
        stats = batch_stats(busy)
    assert len(results) == 4 and all(r.value is not None and r.error is None for r in results.values())
    assert stats["files_uploaded"] == stats["batches_created"] == 1
    # upload, create, retrieve and download: each refused twice, then served
    assert stats["batch_api_refused"] == 8 and stats["batch_retrievals"] >= 1
    assert seconds < 5.0, seconds  # four 429s waited 0.3 s (+ jitter) each, never Retry-After's 5 s


def test_batch_api_still_failing_after_the_retries_leaves_the_error_in_each_row(tmp_path):
    """Upload refused more often than max_retries allows: no exception, every request carries the transport error
    (as an online call would), nothing is created, and the state keeps the part for a rerun."""
    batch = requests(3)
    with SimThread(batch_api_failures=3, retry_after_s=1) as busy:
        client = LLMClient(endpoint(busy, max_retries=1, backoff_base_s=0.01, backoff_max_s=0.05), SecretStr("sim"))
        results = run(run_batch(runner(busy, tmp_path / "state", client=client), batch))
        stats = batch_stats(busy)
        # A rerun on the same state sends the part (the busy route serves from the fourth call on).
        again = run(run_batch(runner(busy, tmp_path / "state"), batch))
    assert set(results) == {r.custom_id for r in batch}
    assert all(r.value is None and r.error_kind == "transport" and r.calls == 0 for r in results.values())
    assert all(r.error.startswith("batch mode: uploading rae-ray-part-00000.jsonl: gave up after 2 attempts: HTTP ")
               for r in results.values())
    assert stats.get("files_uploaded", 0) == stats.get("batches_created", 0) == 0 and stats["batch_api_refused"] == 2
    assert all(r.value is not None for r in again.values())


def test_refused_key_on_the_batch_api_stops_at_once_without_leaking_it(tmp_path):
    key = "sk-rae-test-PLANTED-0123456789"
    with SimThread(api_key="sk-rae-test-RIGHT-9876543210") as sim_with_key:
        client = LLMClient(endpoint(sim_with_key, max_retries=5), SecretStr(key))
        with pytest.raises(FatalEndpointError) as raised:
            run(run_batch(runner(sim_with_key, tmp_path / "state", client=client), requests(2)))
        stats = batch_stats(sim_with_key)
    message = str(raised.value)
    assert "refused the API key (401)" in message and key not in message and key[:12] not in message
    assert stats.get("files_uploaded", 0) == 0
