"""Where the job runs: Ray start-up, the run's context (`Job`), the budget actor, actor pools, block sizes, and
telling Ray losing a worker from an endpoint refusing the key."""

from __future__ import annotations

import contextvars
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pyarrow as pa

from rae_ray.config import RunConfig, StageComputeConfig
from rae_ray.io import RunLayout, Storage, atomic_parquet_sink, join_uri, resolve_uri
from rae_ray.labelstore.store import LabelStore
from rae_ray.llm.client import FatalEndpointError
from rae_ray.llm.ratelimit import BUDGET_NAMESPACE, budget_actor_class
from rae_ray.stages.common import LLMStageConfig

logger = logging.getLogger("rae_ray")

ROWS_PER_BLOCK = 10_000
BYTES_PER_BLOCK = 64 * 1024 * 1024
ROWS_PER_PARTITION = 50_000


@dataclass(frozen=True)
class Job:
    """What every step of one run reads: config, where things go, and how many partitions a shuffle gets."""

    config: RunConfig
    storage: Storage
    run_id: str
    layout: RunLayout
    store: LabelStore | None
    parts: int = 1


def partitions(rows: int, config: RunConfig) -> int:
    """Partitions of a hash shuffle: about one per ROWS_PER_PARTITION log rows, at most the config's.

    Each partition is a reduce task holding a CPU; on small inputs one partition is fastest.
    """
    return max(1, min(config.compute.shuffle_partitions, math.ceil(rows / ROWS_PER_PARTITION)))


def default_run_id() -> str:
    return "run-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def make_job(config: RunConfig, storage: Storage | None = None, log_rows: int = 0) -> Job:
    """The run's context; its shuffles get partitions for `log_rows` (the log's rows, known from its metadata)."""
    storage = storage or Storage(config.storage.s3_endpoint_url, config.storage.s3_region)
    run_id = config.run_id or default_run_id()
    output = resolve_uri(config.output.uri)
    store = None
    if config.store.enabled:
        store = LabelStore(resolve_uri(config.store.uri) if config.store.uri else join_uri(output, "_store"), storage)
    return Job(config=config, storage=storage, run_id=run_id, layout=RunLayout(join_uri(output, run_id)), store=store,
               parts=partitions(log_rows, config))


# Whose lines these are, when several runs share the console (a sweep's variants running at once): "[name] ".
PROGRESS_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("rae_ray_progress_prefix", default="")


# Told a stage's name once this run's results of that stage are all in the label store ("guidelines", "captions",
# "annotate"): a sweep starts a variant that waits for them then, rather than at the end of this run.
STAGE_DONE: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "rae_ray_stage_done", default=None)


def stage_done(stage: str) -> None:
    callback = STAGE_DONE.get()
    if callback is not None:
        callback(stage)


def progress(message: str) -> None:
    """A line for the person running the job (stderr), also logged (`rae_ray.progress`) for tools that follow it."""
    message = PROGRESS_PREFIX.get() + message
    print(f"[rae-ray] {message}", file=sys.stderr, flush=True)
    logging.getLogger("rae_ray.progress").info(message)


class _NotForTheConsole(logging.Filter):
    """Ray Data's console warnings a person running the job has no use for."""

    HIDDEN = ("Progress bars disabled",  # no terminal: the job turned them off
              "Truncating long operator name")  # a progress bar's label was shortened

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.HIDDEN)


def quiet_ray_data() -> None:
    """Ray Data's execution plans, per-dataset summaries and (without a terminal) progress lines go to its log file
    (`logs/ray-data/ray-data.log` in the Ray session folder) instead of the console; its warnings stay on the
    console. Progress bars on a terminal are not log records: they stay."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; the session file handler is not one
            handler.setLevel(max(handler.level, logging.WARNING))
            if not any(isinstance(f, _NotForTheConsole) for f in handler.filters):
                handler.addFilter(_NotForTheConsole())


def ensure_ray(config: RunConfig) -> None:
    """Join the configured or ambient Ray cluster, or start a local one."""
    import ray

    from ray.data.context import ShuffleStrategy

    quiet_ray_data()
    context = ray.data.DataContext.get_current()
    context.shuffle_strategy = {"sort": ShuffleStrategy.SORT_SHUFFLE_PULL_BASED,
                                "hash": ShuffleStrategy.HASH_SHUFFLE}[config.compute.shuffle]
    if ray.is_initialized():
        return
    address = config.compute.ray_address or os.environ.get("RAY_ADDRESS")
    local = address is None
    if local:  # start a local Ray of our own ("auto" joins one started with `ray start`)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local" if local else address,
        num_cpus=config.compute.num_cpus if local else None,
        include_dashboard=False if local else None,
        # A local run prints only its own lines: the workers' output (Ray's, e.g. a worker's exit trace; the stage
        # actors print nothing) stays in the session's log files, errors still reach the driver as exceptions.
        log_to_driver=not local,
        logging_level=logging.WARNING,
    )
    context.enable_progress_bars = sys.stderr.isatty()


def llm_stages(config: RunConfig) -> list[str]:
    return [*(["guidelines"] if config.llm.guidelines.enabled else []),
            *(["captions"] if config.images.mode == "caption" else []), "annotate"]


def stage_config(config: RunConfig, stage: str, compute: StageComputeConfig, budget_actor: str | None,
                 batch_state_uri: str | None = None) -> LLMStageConfig:
    """What one LLM stage's actors are built with (never the API key: each actor reads it from its environment;
    the driver's own key was checked at preflight)."""
    endpoint = config.llm.endpoint_for(stage)
    model = getattr(config.llm, stage)
    in_flight = compute.max_concurrent_requests
    if endpoint.max_in_flight is not None:  # the endpoint's cluster-wide limit, split over the stage's actors
        in_flight = max(1, min(in_flight, endpoint.max_in_flight // compute.max_actors))
    # Nothing to keep under (no rpm, tpm or cost limit): the actors never ask the budget actor (a Ray call per 8
    # requests, and one per reply to report its tokens and cost, was a tenth of the throughput benchmark's CPU).
    # Tokens and cost are reported only when a token or cost limit needs them.
    reports = endpoint.tpm is not None or config.max_cost_usd is not None
    return LLMStageConfig(
        endpoint=endpoint,
        model=model,
        scale=config.scale.as_dicts(),
        max_concurrent_requests=in_flight,
        budget_actor=budget_actor if reports or endpoint.rpm is not None else None,
        budget_reports=reports,
        price=config.pricing.get(model.model),
        batch_state_uri=join_uri(batch_state_uri, stage) if getattr(model, "batch", False) and batch_state_uri else None,
        guidelines=config.llm.guidelines.enabled,
        s3_endpoint_url=config.storage.s3_endpoint_url,
        s3_region=config.storage.s3_region,
    )


def needs_budget(config: RunConfig) -> bool:
    """A budget actor has something to keep: a cost limit, or an rpm or tpm limit on a stage's endpoint."""
    endpoints = [config.llm.endpoint_for(stage) for stage in llm_stages(config)]
    return config.max_cost_usd is not None or any(e.rpm is not None or e.tpm is not None for e in endpoints)


def start_budget(config: RunConfig, run_id: str):
    """The run's budget actor (rate limits per endpoint and model, cost guard): (name, handle).

    The driver must keep the handle: a named actor that is not detached dies with its last handle.
    """
    import uuid

    limits = {}
    for stage in llm_stages(config):
        endpoint, model = config.llm.endpoint_for(stage), getattr(config.llm, stage).model
        limits[f"{endpoint.base_url}|{model}"] = {"rpm": endpoint.rpm, "tpm": endpoint.tpm}
    for model, name in config.llm.annotate.judges[1:]:  # a judge panel's other models
        endpoint = config.llm.endpoints[name]
        limits[f"{endpoint.base_url}|{model}"] = {"rpm": endpoint.rpm, "tpm": endpoint.tpm}
    name = f"rae-ray-budget-{run_id}-{uuid.uuid4().hex[:8]}"
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import ray

    # On the driver's node: it lives and dies with the run, not with a worker node that scales away. Hard
    # affinity: a soft one fell back to a worker node in CI (a raylet with a stale view of the cluster places it
    # where it is asked); it needs no CPU, so the driver's node always has room, and that node outlives the run.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handle = budget_actor_class().options(name=name, namespace=BUDGET_NAMESPACE, scheduling_strategy=here).remote(
        limits, config.max_cost_usd)
    return name, handle


def actor_map(ds, fn, fn_kwargs: dict[str, Any], compute: StageComputeConfig):
    """`ds` through an autoscaling pool of async actors of `fn`, one block per batch."""
    import ray

    # One block per batch: an actor pool hands out whole blocks, so a stage fed one big block (a small shuffle's
    # single partition) ran on one actor while the others idled (measured: half the endpoint's ceiling).
    ds = ds.repartition(target_num_rows_per_block=compute.batch_size)
    with warnings.catch_warnings():
        # Ray 2.60 flags every extra remote arg as deprecated; max_concurrency is how async actors overlap batches.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return ds.map_batches(
            fn,
            fn_constructor_kwargs=fn_kwargs,
            batch_format="pyarrow",
            batch_size=compute.batch_size,
            compute=ray.data.ActorPoolStrategy(
                min_size=compute.min_actors,
                max_size=compute.max_actors,
                # Queue more batches than run at once, so the pool sees demand and scales up.
                max_tasks_in_flight_per_actor=2 * compute.max_concurrent_batches,
            ),
            num_cpus=compute.num_cpus,
            # Async actor: this many batches overlap, their requests gathered under the client's semaphore.
            max_concurrency=compute.max_concurrent_batches,
        )


def merged(ds, rows: int = ROWS_PER_BLOCK):
    """`ds` (lazy) with its blocks merged as they stream into blocks of `rows` rows, for a stage's output that
    is materialized: an actor pool hands back one block per batch (hundreds of blocks of 16-128 rows).

    Merging on the way matters for the driver: Ray keeps a task's result under 100 KiB in the memory of its
    owner, the driver, so a materialized dataset of small blocks lived in the driver's memory; merged blocks go
    to the object store. (`map_batches` with a batch size bundles blocks of several tasks into one task; for
    rows of fetched images, whose data URLs make a block's bytes the bound, see `compact`.)"""
    return ds.map_batches(_as_is, batch_format="pyarrow", batch_size=rows)


def _as_is(batch: pa.Table) -> pa.Table:
    return batch


def compact(ds):
    """A materialized stage output in blocks of about ROWS_PER_BLOCK rows: an actor pool hands back one block per
    batch (hundreds of blocks of 16-128 rows), and every step after it pays per block (1,762 image rows in 111
    blocks took 7 s to join on 2 CPUs). `repartition(target_num_rows_per_block=...)` only splits and merges
    within one task's output in Ray 2.60, so blocks are combined by count (no shuffle).
    Bytes bound a block too: fetched images carry their JPEG data URLs (up to ~100 KB a row)."""
    blocks = max(-(-ds.count() // ROWS_PER_BLOCK), -(-(ds.size_bytes() or 0) // BYTES_PER_BLOCK), 1)
    return ds if ds.num_blocks() <= blocks else ds.repartition(blocks).materialize()


def with_schema(ds, schema: pa.Schema):
    """A materialized stage output that keeps its columns when it has no row (an actor pool fed nothing hands
    back a dataset without blocks, hence without a schema, and every select or join after it fails)."""
    import ray

    return ray.data.from_arrow(schema.empty_table()) if ds.count() == 0 else ds


def left_join(left, right, on: tuple[str, ...], num_partitions: int):
    """`left` with the columns of `right` matched on `on` (left outer join). A `right` without rows adds null
    columns instead of joining: Ray Data's join cannot resolve the key columns of a side that has no block."""
    if right.count() > 0:
        return left.join(right, join_type="left_outer", num_partitions=num_partitions, on=on)
    schema = right.schema()
    added = {name: dtype for name, dtype in zip(schema.names, schema.types) if name not in on}
    return left.map_batches(_null_columns, batch_format="pyarrow", fn_kwargs={"columns": added})


def _null_columns(batch: pa.Table, columns: dict[str, pa.DataType]) -> pa.Table:
    for name, dtype in columns.items():
        batch = batch.append_column(pa.field(name, dtype), pa.nulls(batch.num_rows, dtype))
    return batch


def to_polars(ds, schema: dict | None = None) -> pl.DataFrame:
    """A small, aggregated dataset to the driver (never the log: only per-query or per-ranker tables)."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if tables:  # permissive: blocks of one dataset may differ in string widths (string, large_string, views)
        return pl.from_arrow(pa.concat_tables(tables, promote_options="permissive"))
    return pl.DataFrame(schema=schema)


def write(ds, uri: str, storage, prefix: str) -> None:
    """`ds` as Parquet files under `uri`, each made visible whole."""
    ds.write_datasink(atomic_parquet_sink(uri, storage, prefix))


# -- what went wrong ----------------------------------------------------------------------------------------


def lost_worker(error: BaseException) -> str | None:
    """What was lost, if `error` is Ray losing a worker, an actor, a node or an object (not a bug of ours)."""
    from ray import exceptions as rex

    kinds = (rex.ActorDiedError, rex.ObjectLostError, rex.NodeDiedError, rex.WorkerCrashedError,
             rex.ActorUnavailableError)
    for current in exception_chain(error):
        if isinstance(current, kinds):
            kind = next(k.__name__ for k in kinds if isinstance(current, k))
            first = next((line.strip() for line in str(current).splitlines()
                          if "died because" in line or "node" in line.lower()), "")
            return f"{kind}{': ' + first[:200] if first else ''}"
    return None


def exception_chain(error: BaseException):
    """`error` and every exception behind it: causes, contexts, and the `cause` of Ray's task errors."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])


def fatal_endpoint_error(error: BaseException) -> FatalEndpointError | None:
    """The `FatalEndpointError` an actor raised, found inside Ray's wrappers.

    Ray Data hands a UDF's exception to the driver as RayTaskError(UserCodeException), whose text is the worker's
    traceback: the original exception object does not travel, its last line (type: message) does.
    """
    marker = f"{FatalEndpointError.__module__}.{FatalEndpointError.__qualname__}: "
    for current in exception_chain(error):
        if type(current) is FatalEndpointError:
            return current
        text = str(current)
        if marker in text:
            return FatalEndpointError(text[text.rindex(marker) + len(marker):].splitlines()[0].strip())
    return None
