"""The cluster-wide budget with a real local Ray: several clients, one budget actor, the simulated endpoint."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from pydantic import SecretStr

from rae_ray.config import EndpointConfig, Price
from rae_ray.llm.batch import BatchRequest, BatchRunner
from rae_ray.llm.client import LLMClient
from rae_ray.llm.prompts import annotation_messages
from rae_ray.llm.ratelimit import RateBudget, budget_actor_class, make_bucket
from rae_ray.llm.schemas import JUDGEMENT_SCHEMA_NAME, RelevanceJudgement
from rae_ray.sim.judge import DEFAULT_SCALE, make_guideline
from rae_ray.sim.process import SimProcess

pytestmark = pytest.mark.integration

MODEL = "sim-judge"
SCALE = [dict(g) for g in DEFAULT_SCALE]
GUIDELINE = make_guideline("usb c cable", SCALE)
PRODUCTS = [{"title": f"USB-C cable {n} m", "brand": "Anker"} for n in range(1, 6)]


@pytest.fixture(scope="module")
def sim_rpm():
    with SimProcess(latency_ms=20, max_in_flight=64, rpm=600) as server:
        yield server


def start_budget(ray, key: str, rpm: int | None, max_cost_usd: float | None = None):
    name = f"test-budget-{uuid.uuid4().hex[:8]}"
    handle = budget_actor_class().options(name=name, namespace="rae-ray").remote({key: {"rpm": rpm, "tpm": None}},
                                                                                 max_cost_usd)
    ray.get(handle.state.remote())  # up before the clients look it up
    return name, handle


async def judge_all(base_url: str, budget_name: str, n_clients: int, n_calls: int, price: Price | None = None):
    """`n_calls` judgements spread over `n_clients` clients (as many stage actors would), all at once."""
    endpoint = EndpointConfig(base_url=base_url, api_key_required=False, backoff_base_s=0.05, backoff_max_s=1.0)
    key = f"{base_url}|{MODEL}"
    clients = [LLMClient(endpoint, SecretStr("sim"), max_concurrent=16,
                         budget=RateBudget(budget_name, "rae-ray", key), price=price) for _ in range(n_clients)]
    try:
        calls = [
            clients[i % n_clients].structured(
                annotation_messages("usb c cable", GUIDELINE, SCALE, PRODUCTS[i % len(PRODUCTS)]),
                RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL, max_output_tokens=300,
            )
            for i in range(n_calls)
        ]
        return await asyncio.gather(*calls)
    finally:
        for client in clients:
            await client.close()


def test_clients_sharing_a_budget_sit_at_the_allowed_rate_without_429(ray_local, sim_rpm):
    rpm, n_calls = 600, 90
    sim_rpm.reset_stats()
    name, handle = start_budget(ray_local, f"{sim_rpm.base_url}|{MODEL}", rpm)
    try:
        started = time.monotonic()
        results = asyncio.run(judge_all(sim_rpm.base_url, name, n_clients=4, n_calls=n_calls))
        elapsed = time.monotonic() - started
        granted = ray_local.get(handle.state.remote())["granted"]
    finally:
        ray_local.kill(handle)
    stats = sim_rpm.stats()
    assert [r.error for r in results if r.error] == []
    assert stats["responses_429"] == 0 and stats["requests_total"] == n_calls
    # The bucket's first burst, then its refill rate (97% of 600/min): the time that takes, no less, not much more.
    bucket = make_bucket(rpm, 0.97)
    expected = (n_calls - int(bucket.capacity)) / bucket.rate
    assert 0.9 * expected <= elapsed <= 1.15 * expected + 0.5, (elapsed, expected)
    assert n_calls <= granted <= n_calls + 4 * 8  # chunks of 8 left unused by the clients at the end


PRICE = Price(input_per_1m=1000, cached_input_per_1m=1000, output_per_1m=1000)  # ~0.5 USD a judgement


def run_to_cost_limit(ray, sim, n_clients: int, n_calls: int, max_cost_usd: float):
    sim.reset_stats()
    name, handle = start_budget(ray, f"{sim.base_url}|{MODEL}", None, max_cost_usd=max_cost_usd)
    try:
        results = asyncio.run(judge_all(sim.base_url, name, n_clients=n_clients, n_calls=n_calls, price=PRICE))
        state = ray.get(handle.state.remote())
    finally:
        ray.kill(handle)
    return results, state


def test_cost_guard_stops_sending_and_reports_the_rest_as_not_sent(ray_local, sim):
    results, state = run_to_cost_limit(ray_local, sim, n_clients=2, n_calls=150, max_cost_usd=4.0)
    sent = [r for r in results if r.calls]
    not_sent = [r for r in results if not r.calls]
    assert state["stopped"] is True and state["cost_usd"] >= 4.0
    assert all(r.value is not None and r.error is None for r in sent)
    assert not_sent and all(r.value is None and r.error.startswith("not sent: max_cost_usd 4 reached (spent ")
                            for r in not_sent)
    assert all(r.prompt_tokens == 0 for r in not_sent)
    assert sim.stats()["requests_total"] == len(sent)


@pytest.fixture(scope="module")
def slow_sim():
    with SimProcess(latency_ms=200) as server:
        yield server


def test_cost_guard_overshoot_is_bounded_by_the_requests_in_flight(ray_local, slow_sim):
    """With the cost of a call known only when it returns, the calls already in flight are the overshoot, no more."""
    n_clients, max_concurrent, chunk = 2, 16, 8
    results, state = run_to_cost_limit(ray_local, slow_sim, n_clients=n_clients, n_calls=200, max_cost_usd=4.0)
    sent = sum(1 for r in results if r.calls)
    per_call = state["cost_usd"] / sent
    assert sent <= 4.0 / per_call + 1 + n_clients * (max_concurrent + chunk)


def test_batch_mode_asks_the_budget_before_each_batch_and_stops_at_the_cost_limit(ray_local, sim, tmp_path):
    """Provider batches of 5 judgements one after another, as an annotate actor sends its Ray Data batches: each is
    granted by the budget before it is submitted, its cost (at the batch price) reported when its results come back;
    once the cost limit is reached no batch is submitted and their requests come back "not sent"."""
    n_batches, per_batch, max_cost_usd = 8, 5, 2.0
    endpoint = EndpointConfig(base_url=sim.base_url, api_key_required=False)
    key = f"{sim.base_url}|{MODEL}"
    before = sim._call("GET", "/stats/batches")
    name, handle = start_budget(ray_local, key, None, max_cost_usd=max_cost_usd)

    async def judge_in_batches():
        client = LLMClient(endpoint, SecretStr("sim"), budget=RateBudget(name, "rae-ray", key), price=PRICE)
        out = []
        try:
            for b in range(n_batches):
                requests = [BatchRequest(f"b{b}-{i}", annotation_messages("usb c cable", GUIDELINE, SCALE, PRODUCTS[i]))
                            for i in range(per_batch)]
                runner = BatchRunner(client, str(tmp_path / f"batch-{b}"), poll_interval_s=0.02)
                out.append(await runner.run(requests, RelevanceJudgement, JUDGEMENT_SCHEMA_NAME, MODEL, timeout_s=60))
        finally:
            await client.close()
        return out

    try:
        by_batch = asyncio.run(judge_in_batches())
        state = ray_local.get(handle.state.remote())
    finally:
        ray_local.kill(handle)
    after = sim._call("GET", "/stats/batches")
    results = [r for batch in by_batch for r in batch.values()]
    sent = [r for r in results if r.calls]
    not_sent = [r for r in results if not r.calls]
    # The budget's cost is the batch share of the price of what came back, no more, no less.
    full = sum(PRICE.cost(r.prompt_tokens, r.cached_tokens, r.completion_tokens) for r in sent)
    assert state["stopped"] is True and state["cost_usd"] == pytest.approx(PRICE.batch_factor * full, rel=1e-9)
    assert all(r.value is not None and r.error is None for r in sent)
    # Stopped at the first batch that found the limit reached: the batches before it, whole, and nothing after.
    per_call = state["cost_usd"] / len(sent)
    assert len(sent) % per_batch == 0 and max_cost_usd <= state["cost_usd"] < max_cost_usd + per_batch * per_call
    assert not_sent and all(r.value is None and r.error_kind == "not_sent" and r.prompt_tokens == 0 and
                            r.error.startswith("not sent: max_cost_usd 2 reached (spent ") for r in not_sent)
    assert after["batches_created"] - before.get("batches_created", 0) == len(sent) // per_batch
    assert after["batch_requests"] - before.get("batch_requests", 0) == len(sent)
    # A batch not sent is recorded, not uploaded: a run with a higher limit on the same state sends it.
    last = json.loads((tmp_path / f"batch-{n_batches - 1}" / "batch-state.json").read_text())
    assert [(p["status"], p["input_file_id"], p["batch_id"]) for p in last["parts"]] == [("written", None, None)]
