"""The Ray Data wiring of the job: log -> sample -> unique pairs -> guidelines -> annotate -> labels -> metrics.

This module only composes: transforms live in `stages/`, metric definitions in `metrics/`, bytes in `io`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pyarrow as pa

from rae_ray import __version__
from rae_ray.config import RunConfig, StageComputeConfig
from rae_ray.inputs import inspect_catalog, inspect_log, log_columns, require_product_title
from rae_ray.io import InputError, RunLayout, Storage, join_uri, resolve_uri
from rae_ray.llm.client import FatalEndpointError, LLMClient
from rae_ray.manifest import build_manifest, usage_totals
from rae_ray.metrics.evaluate import QUERY_METRICS_SCHEMA, query_metrics, ranker_metrics
from rae_ray.sampling import sample_queries
from rae_ray.stages.annotate import LABEL_COLUMNS, AnnotateStage
from rae_ray.stages.common import USAGE_COLUMNS, LLMStageConfig
from rae_ray.stages.guidelines import GuidelineStage
from rae_ray.stages.prepare import (
    ERROR_SCHEMA,
    check_log_rows,
    error_records,
    invalid_rows,
    normalize_products,
    pair_problems,
    select_rows,
    unique_pairs,
)

logger = logging.getLogger("rae_ray")


@dataclass
class RunResult:
    """What a finished run hands back to the CLI."""

    root: str
    manifest: dict[str, Any]
    rankers: pl.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)


def progress(message: str) -> None:
    print(f"[rae-ray] {message}", file=sys.stderr, flush=True)


def default_run_id() -> str:
    return "run-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def ensure_ray(config: RunConfig) -> None:
    """Join the configured or ambient Ray cluster, or start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = config.compute.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address=address,
        num_cpus=config.compute.num_cpus if address is None else None,
        include_dashboard=False if address is None else None,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()


def _stage_config(config: RunConfig, stage: str, compute: StageComputeConfig) -> LLMStageConfig:
    return LLMStageConfig(
        endpoint=config.llm.endpoint_for(stage),
        api_key=config.llm.endpoint_for(stage).api_key(),
        model=getattr(config.llm, stage),
        scale=config.scale.as_dicts(),
        max_concurrent_requests=compute.max_concurrent_requests,
    )


def _actor_map(ds, stage_cls, stage_config: LLMStageConfig, compute: StageComputeConfig):
    with warnings.catch_warnings():
        # Ray 2.60 flags every extra remote arg as deprecated; max_concurrency is how async actors overlap batches.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        return _map_actor_batches(ds, stage_cls, stage_config, compute)


def _map_actor_batches(ds, stage_cls, stage_config: LLMStageConfig, compute: StageComputeConfig):
    import ray

    return ds.map_batches(
        stage_cls,
        fn_constructor_kwargs={"config": stage_config},
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


def preflight(config: RunConfig) -> None:
    """Every endpoint reachable and accepting its key, before anything is spent."""

    async def check() -> None:
        seen = set()
        for stage in ("guidelines", "annotate"):
            endpoint = config.llm.endpoint_for(stage)
            if endpoint.base_url in seen:
                continue
            seen.add(endpoint.base_url)
            client = LLMClient(endpoint, endpoint.api_key(), 1)
            try:
                await client.preflight()
            finally:
                await client.close()

    asyncio.run(check())


def _to_polars(ds, schema: dict | None = None) -> pl.DataFrame:
    """A small, aggregated dataset to the driver (never the log: only per-query or per-ranker tables)."""
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if tables:
        return pl.from_arrow(pa.concat_tables(tables, promote_options="default"))
    return pl.DataFrame(schema=schema)


def per_query_metrics(group: pa.Table, ks: list[int], top_grade: int) -> pa.Table:
    """One query's ranked lists with their grades -> that query's metric rows."""
    frame = pl.from_arrow(group)
    run = frame.select("ranker", "query", "rank", "product_id")
    labels = frame.select("query", "product_id", "grade").unique(subset=["query", "product_id"])
    return query_metrics(run, labels, ks=ks, top_grade=top_grade).to_arrow()


def _write_dataset(ds, uri: str, storage: Storage) -> None:
    fs, path = storage.fs(uri)
    ds.write_parquet(path, filesystem=fs)


def run(config: RunConfig, storage: Storage | None = None) -> RunResult:
    """Run the whole job; returns where it wrote and what it measured."""
    import ray
    from ray.data.expressions import col

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    seconds: dict[str, float] = {}
    storage = storage or Storage()
    run_id = config.run_id or default_run_id()
    layout = RunLayout(join_uri(resolve_uri(config.output.uri), run_id))

    # Validate: metadata only, before any LLM call.
    t = time.monotonic()
    log_infos = inspect_log(config.input.log_uris, storage)
    catalog_info = inspect_catalog(config.input.catalog, storage) if config.input.catalog else None
    if catalog_info is None:
        require_product_title(log_infos)
    columns = log_columns(log_infos, with_catalog=catalog_info is not None)
    if config.sampling.mode == "stratified" and "query_count" not in columns:
        raise InputError("sampling.mode is 'stratified' but the search log has no query_count column")
    stage_configs = {
        "guidelines": _stage_config(config, "guidelines", config.compute.guidelines),
        "annotate": _stage_config(config, "annotate", config.compute.annotate),
    }
    preflight(config)
    seconds["validate"] = time.monotonic() - t
    progress(f"inputs valid: {sum(i.num_rows for i in log_infos)} log rows in {sum(len(i.files) for i in log_infos)} file(s)"
             + (f", catalog {catalog_info.num_rows} products" if catalog_info else ", product columns from the log"))
    progress(f"output: {layout.root}")

    ensure_ray(config)
    parts = config.compute.shuffle_partitions

    # Retrieve: read the log once, check every row.
    t = time.monotonic()
    log_fs, _ = storage.fs(log_infos[0].uri)
    files = [f for info in log_infos for f in info.files]
    checked = ray.data.read_parquet(files, filesystem=log_fs).select_columns(columns).map_batches(
        check_log_rows, batch_format="pyarrow"
    ).materialize()
    counts = {"pairs_in_log": checked.count()}
    invalid = checked.map_batches(invalid_rows, batch_format="pyarrow")

    queries_filter = None
    segments = None
    if "query_count" in columns:
        query_counts = _to_polars(
            checked.filter(expr=col("input_error").is_null()).groupby("query").max("query_count")
        ).rename({"max(query_count)": "query_count"})
        chosen = sample_queries(query_counts, config.sampling)
        segments = chosen.select("query", pl.lit("traffic").alias("segment_type"), pl.col("stratum").alias("segment"))
        if config.sampling.mode == "stratified":
            queries_filter = chosen["query"].to_list()
            progress(f"sampled {len(queries_filter)} queries: " + ", ".join(
                f"{s} {n}" for s, n in chosen.group_by("stratum").len().sort("stratum").iter_rows()))
    selected = checked.map_batches(
        select_rows, batch_format="pyarrow",
        fn_kwargs={"rankers": config.rankers, "k": config.k, "queries": queries_filter},
    ).materialize()
    counts["rows_selected"] = selected.count()
    if counts["rows_selected"] == 0:
        rankers_note = f" for rankers {config.rankers}" if config.rankers else ""
        raise InputError(f"no valid log rows at rank <= {config.k}{rankers_note}; nothing to evaluate")

    # Unique (query, product) pairs across all rankers, with product fields.
    if catalog_info is not None:
        catalog_fs, _ = storage.fs(catalog_info.uri)
        catalog = ray.data.read_parquet(catalog_info.files, filesystem=catalog_fs).select_columns(
            catalog_info.columns
        ).map_batches(normalize_products, batch_format="pyarrow", fn_kwargs={"mark_catalog": True})
        with_products = selected.select_columns(["query", "ranker", "rank", "product_id"] + [
            c for c in ("query_count", "locale") if c in columns
        ]).join(catalog, join_type="left_outer", num_partitions=parts, on=("product_id",))
    else:
        with_products = selected.map_batches(normalize_products, batch_format="pyarrow")
    pairs = with_products.groupby("query", num_partitions=parts).map_groups(
        unique_pairs, batch_format="pyarrow"
    ).map_batches(pair_problems, batch_format="pyarrow").materialize()
    counts["pairs_unique"] = pairs.count()
    seconds["prepare"] = time.monotonic() - t
    progress(f"{counts['rows_selected']} log rows selected -> {counts['pairs_unique']} unique (query, product) pairs")

    # Guidelines: one call per unique query.
    t = time.monotonic()
    queries = pairs.filter(expr=col("pair_error").is_null()).groupby("query", num_partitions=parts).count().select_columns(["query"])
    guidelines = _actor_map(queries, GuidelineStage, stage_configs["guidelines"], config.compute.guidelines).materialize()
    counts["queries"] = guidelines.count()
    _write_dataset(guidelines, layout.guidelines, storage)
    seconds["guidelines"] = time.monotonic() - t
    progress(f"guidelines: {counts['queries']} queries done in {seconds['guidelines']:.1f}s")

    # Annotate: one judgement per unique pair, against its query's guideline.
    t = time.monotonic()
    guideline_keys = guidelines.select_columns(["query", "guideline_id", "guideline", "error"]).rename_columns(
        {"error": "guideline_error"}
    )
    to_annotate = pairs.join(guideline_keys, join_type="left_outer", num_partitions=parts, on=("query",))
    labels = _actor_map(to_annotate, AnnotateStage, stage_configs["annotate"], config.compute.annotate).materialize()
    _write_dataset(labels, layout.labels, storage)
    seconds["annotate"] = time.monotonic() - t
    progress(f"annotate: {counts['pairs_unique']} pairs done in {seconds['annotate']:.1f}s")

    # Errors: bad log rows, failed guidelines, failed or unjudgeable pairs; each with its reason.
    guideline_errors = guidelines.filter(expr=col("error").is_not_null()).map_batches(
        lambda b: error_records(pl.from_arrow(b), "guidelines", pl.col("error")), batch_format="pyarrow"
    )
    label_errors = labels.filter(expr=col("error").is_not_null()).map_batches(
        lambda b: error_records(pl.from_arrow(b), "annotate", pl.col("error")), batch_format="pyarrow"
    )
    errors = invalid.union(guideline_errors, label_errors).materialize()
    error_counts = {} if errors.count() == 0 else dict(
        _to_polars(errors.groupby("stage").count()).iter_rows()
    )
    if errors.count():
        _write_dataset(errors, layout.errors, storage)
    else:
        storage.write_table(join_uri(layout.errors, "errors-empty.parquet"), ERROR_SCHEMA.empty_table())

    # Evaluate: per-query metrics on Ray, per-ranker aggregates on the (small) per-query table.
    t = time.monotonic()
    graded = selected.select_columns(["ranker", "query", "rank", "product_id"]).join(
        labels.select_columns(["query", "product_id", "grade"]), join_type="left_outer", num_partitions=parts,
        on=("query", "product_id"),
    )
    by_query = _to_polars(
        graded.groupby("query", num_partitions=parts).map_groups(
            per_query_metrics, batch_format="pyarrow",
            fn_kwargs={"ks": config.metrics.ks, "top_grade": config.scale.top_grade},
        ),
        schema=QUERY_METRICS_SCHEMA,
    )
    by_ranker = ranker_metrics(by_query, n_bootstrap=config.metrics.bootstrap, seed=config.metrics.seed)
    storage.write_table(join_uri(layout.metrics, "rankers.parquet"), by_ranker.to_arrow())
    storage.write_table(join_uri(layout.metrics, "queries.parquet"), by_query.to_arrow())
    seconds["metrics"] = time.monotonic() - t

    stage_usage = {"guidelines": usage_totals(guidelines), "annotate": usage_totals(labels)}
    counts["labelled"] = labels.filter(expr=col("grade").is_not_null()).count()
    seconds["total"] = time.monotonic() - started
    manifest = build_manifest(
        config=config, run_id=run_id, root=layout.root, started_at=started_at, counts=counts,
        stage_usage=stage_usage, error_counts=error_counts, seconds=seconds,
        rankers=sorted(by_ranker["ranker"].unique().to_list()) if by_ranker.height else [],
        status="succeeded",
    )
    storage.write_json(layout.manifest, manifest)
    return RunResult(root=layout.root, manifest=manifest, rankers=by_ranker, seconds=seconds)


__all__ = ["RunResult", "run", "ensure_ray", "FatalEndpointError", "LABEL_COLUMNS", "USAGE_COLUMNS", "__version__"]
