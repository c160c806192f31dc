"""Retrieve: check the inputs from their metadata, read the log once, and pair it into unique (query, product) pairs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import polars as pl

from rae_ray.config import RunConfig
from rae_ray.inputs import TableInfo, inspect_catalog, inspect_log, log_columns, require_product_title
from rae_ray.io import InputError, Storage
from rae_ray.labelstore.keys import add_guideline_ids
from rae_ray.llm.client import LLMClient
from rae_ray.llm.prompts import GUIDELINE_PROMPT_VERSION
from rae_ray.runtime import Job, progress, to_polars
from rae_ray.sampling import sample_queries
from rae_ray.stages.prepare import (
    check_log_rows, mark_duplicate_rows, normalize_products, pair_problems, select_rows, set_ranker, unique_pairs,
)


@dataclass
class Inputs:
    log: list[TableInfo]
    catalog: TableInfo | None
    columns: list[str]

    @property
    def log_rows(self) -> int:
        """Rows of the whole log, from the Parquet metadata."""
        return sum(info.num_rows for info in self.log)


@dataclass
class LogRows:
    """The log read once: every row with its `input_error`, the rows selected for evaluation, traffic segments."""

    checked: Any
    selected: Any
    segments: pl.DataFrame | None


def preflight(config: RunConfig) -> None:
    """Every endpoint reachable and accepting its key, before anything is spent."""

    async def check() -> None:
        seen = set()
        endpoints = [config.llm.endpoint_for(stage) for stage in ("guidelines", "annotate", "captions")
                     if getattr(config.llm, stage) is not None]
        endpoints += [config.llm.endpoints[name] for _, name in config.llm.annotate.judges[1:]]  # a judge panel
        for endpoint in endpoints:
            if endpoint.base_url in seen:
                continue
            seen.add(endpoint.base_url)
            client = LLMClient(endpoint, endpoint.api_key(), 1)
            try:
                await client.preflight()
            finally:
                await client.close()

    asyncio.run(check())


def validate(config: RunConfig, storage: Storage, check_endpoints: bool = True) -> Inputs:
    """Metadata only, before any LLM call: columns, types, non-empty, endpoints reachable, keys present."""
    log = inspect_log(config.input.log_sources, storage)
    catalog = inspect_catalog(config.input.catalog, storage) if config.input.catalog else None
    if catalog is None:
        require_product_title(log)
    columns = log_columns(log, with_catalog=catalog is not None)
    if config.sampling.mode == "stratified" and "query_count" not in columns:
        raise InputError("sampling.mode is 'stratified' but the search log has no query_count column")
    if check_endpoints:
        preflight(config)
    progress(f"inputs valid: {sum(i.num_rows for i in log)} log rows in {sum(len(i.files) for i in log)} file(s)"
             + (f", catalog {catalog.num_rows} products" if catalog else ", product columns from the log"))
    return Inputs(log=log, catalog=catalog, columns=columns)


def read_log(job: Job, inputs: Inputs) -> tuple[LogRows, dict[str, int]]:
    """The log, read once and row-checked: (checked rows, selected rows at rank <= k, segments), counts."""
    import ray
    from ray.data.expressions import col

    config = job.config
    parts = []
    for info in inputs.log:
        log_fs, _ = job.storage.fs(info.uri)
        part = ray.data.read_parquet(info.files, filesystem=log_fs)
        if info.ranker is None:
            part = part.select_columns(inputs.columns)
        else:
            part = part.select_columns([c for c in inputs.columns if c != "ranker"]).map_batches(
                set_ranker, batch_format="pyarrow", fn_kwargs={"ranker": info.ranker})
        parts.append(part)
    checked = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    # Row checks, then whole queries: a product a ranker lists twice is reported, not counted twice by the metrics.
    checked = (
        checked.map_batches(check_log_rows, batch_format="pyarrow")
        .groupby("query", num_partitions=job.parts)
        .map_groups(mark_duplicate_rows, batch_format="pyarrow")
        .materialize()
    )
    counts = {"pairs_in_log": checked.count()}

    queries_filter = None
    segments = None
    if "query_count" in inputs.columns:
        query_counts = to_polars(
            checked.filter(expr=col("input_error").is_null()).groupby("query", num_partitions=job.parts)
            .max("query_count")
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
    return LogRows(checked=checked, selected=selected, segments=segments), counts


def build_pairs(job: Job, inputs: Inputs, selected) -> tuple[Any, dict[str, int]]:
    """Unique (query, product) pairs across all rankers, with product fields, hash and guideline id; counts."""
    import ray

    if inputs.catalog is not None:
        catalog_fs, _ = job.storage.fs(inputs.catalog.uri)
        catalog = ray.data.read_parquet(inputs.catalog.files, filesystem=catalog_fs).select_columns(
            inputs.catalog.columns
        ).map_batches(normalize_products, batch_format="pyarrow", fn_kwargs={"mark_catalog": True})
        keep = ["query", "ranker", "rank", "product_id"] + [c for c in ("query_count", "locale") if c in inputs.columns]
        with_products = selected.select_columns(keep).join(
            catalog, join_type="left_outer", num_partitions=job.parts, on=("product_id",)
        )
    else:
        with_products = selected.map_batches(normalize_products, batch_format="pyarrow")
    guideline = job.config.llm.guidelines
    pairs = (
        with_products.groupby("query", num_partitions=job.parts)
        .map_groups(unique_pairs, batch_format="pyarrow")
        .map_batches(pair_problems, batch_format="pyarrow")
        .map_batches(add_guideline_ids, batch_format="pyarrow", fn_kwargs={
            "model": guideline.model if guideline.enabled else None,  # guidelines off: null ids
            "prompt_version": GUIDELINE_PROMPT_VERSION, "scale": job.config.scale.as_dicts()})
        .materialize()
    )
    counts = {"pairs_unique": pairs.count()}
    progress(f"{selected.count()} log rows selected -> {counts['pairs_unique']} unique (query, product) pairs")
    if inputs.catalog is not None:
        from ray.data.expressions import col

        # A product_id the catalog lists twice with different content: one record is judged (the rule in
        # `unique_pairs`), and the user hears of it.
        conflicting = pairs.filter(expr=col("product_variants") > 1).count()
        counts["pairs_with_conflicting_catalog_records"] = conflicting
        if conflicting:
            progress(f"warning: {conflicting} pairs have a product_id that {inputs.catalog.uri} lists more than once "
                     "with different content; the record at the best rank was judged (column product_variants)")
    return pairs, counts
