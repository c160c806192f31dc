"""What the LLM stages share: their typed config, the usage columns, and running a batch of calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, SecretStr

from rae_ray.config import ConfigError, EndpointConfig, Price, StageModelConfig
from rae_ray.llm.client import CallResult, FatalEndpointError, LLMClient
from rae_ray.llm.ratelimit import BUDGET_NAMESPACE, RateBudget

USAGE_COLUMNS = ("llm_calls", "prompt_tokens", "completion_tokens", "cached_tokens", "seconds")


class LLMStageConfig(BaseModel):
    """Everything an LLM stage actor needs, built once by the job (`runtime.stage_config`).

    No API key: Ray keeps an actor's constructor arguments (to restart it), so the actor reads the variable named
    by `endpoint.api_key_env` from its own environment (`stage_api_key`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: EndpointConfig
    model: StageModelConfig  # AnnotateModelConfig (with its batch keys) for the judge
    scale: list[dict]
    max_concurrent_requests: int = 32
    budget_actor: str | None = None
    # Tell the budget actor each reply's tokens and cost (a token or cost limit is set); rpm alone needs no report.
    budget_reports: bool = True
    price: Price | None = None
    # Annotation: judge against the query's guideline (false: llm.guidelines.enabled off, the judge sees none).
    guidelines: bool = True
    # Batch mode (model.batch): where the batches' state and files go, and the S3 settings to reach it.
    batch_state_uri: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    @property
    def limit_key(self) -> str:
        """What a rate limit applies to: one model on one endpoint."""
        return f"{self.endpoint.base_url}|{self.model.model}"


def missing_columns(batch: pa.Table, required: Sequence[str], stage: str) -> None:
    missing = [c for c in required if c not in batch.column_names]
    if missing:
        raise KeyError(f"{stage}: input batch lacks column(s) {missing}; has {batch.column_names}")


def stage_api_key(config: LLMStageConfig) -> SecretStr:
    """The key from this process's environment (an actor's: on a cluster, the worker's).

    A worker without it cannot make one call: that stops the run, as a refused key does (`FatalEndpointError`).
    """
    try:
        return config.endpoint.api_key()
    except ConfigError as error:
        raise FatalEndpointError(
            f"{error} on this Ray worker: the stage actors read the key from their own environment, never from the "
            "driver; give every worker the variable (e.g. in the environment `ray start` runs in)"
        ) from None


def make_client(config: LLMStageConfig) -> LLMClient:
    budget = None
    if config.budget_actor is not None:
        budget = RateBudget(config.budget_actor, BUDGET_NAMESPACE, config.limit_key, reports=config.budget_reports)
    return LLMClient(config.endpoint, stage_api_key(config), config.max_concurrent_requests, budget=budget,
                     price=config.price)


async def gather_calls(calls: Sequence[Awaitable[CallResult] | None]) -> list[CallResult | None]:
    """Run a batch's calls concurrently (the client's semaphore bounds them); None stays None."""

    async def _none() -> None:
        return None

    return list(await asyncio.gather(*(c if c is not None else _none() for c in calls)))


def usage_columns(results: Sequence[CallResult | None]) -> dict[str, pa.Array]:
    def col(attr: str, dtype: pa.DataType) -> pa.Array:
        return pa.array([getattr(r, attr) if r is not None else 0 for r in results], dtype)

    return {
        "llm_calls": col("calls", pa.int32()),
        "prompt_tokens": col("prompt_tokens", pa.int64()),
        "completion_tokens": col("completion_tokens", pa.int64()),
        "cached_tokens": col("cached_tokens", pa.int64()),
        "seconds": col("seconds", pa.float64()),
    }
