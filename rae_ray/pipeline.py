"""The Ray Data wiring of the job: log -> sample -> unique pairs -> guidelines -> annotate -> labels -> metrics.

This module only composes: transforms live in `stages/`, metric definitions in `metrics/`, bytes in `io` and
`labelstore`. Every LLM stage runs the same way (`labelstore.cached`): look the keys up in the label store, send
only the misses to an actor pool, publish each finished batch to the store as it completes (so a killed run
resumes from there), and union hits and new results.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pyarrow as pa

from rae_ray.config import RunConfig
from rae_ray.inputs import TableInfo, inspect_catalog, inspect_log, log_columns, require_product_title
from rae_ray.io import InputError, RunLayout, Storage, join_uri, resolve_uri, s3_endpoint
from rae_ray.labelstore.cached import CAPTION_SPEC, GUIDELINE_SPEC, LABEL_SPEC, cached_stage
from rae_ray.labelstore.keys import add_caption_ids, add_guideline_ids, add_label_keys
from rae_ray.labelstore.store import LabelStore
from rae_ray.llm.client import FatalEndpointError, LLMClient
from rae_ray.llm.prompts import ANNOTATION_PROMPT_VERSION, CAPTION_PROMPT_VERSION, GUIDELINE_PROMPT_VERSION
from rae_ray.manifest import build_manifest, usage_totals
from rae_ray.evaluation import LABEL_SCHEMA, QRELS, RUN, RUN_SCHEMA, load_human_labels, locale_segments, qrels_lines
from rae_ray.evaluation import evaluate as evaluate_run
from rae_ray.metrics.evaluate import QUERY_METRICS_SCHEMA, query_metrics
from rae_ray.metrics.trec import run_text
from rae_ray.report import write_report
from rae_ray.sampling import sample_queries
from rae_ray.runtime import (
    ROWS_PER_PARTITION, actor_map, compact, ensure_ray, fatal_endpoint_error, llm_stages, lost_worker, progress,
    stage_config, start_budget, to_polars, write,
)
from rae_ray.stages.annotate import NO_IMAGE, AnnotateStage
from rae_ray.stages.captions import CaptionStage
from rae_ray.stages.images import ImageStage, ImageStageConfig
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.guidelines import GuidelineStage
from rae_ray.stages.prepare import (
    ERROR_SCHEMA,
    check_log_rows,
    error_records,
    mark_duplicate_rows,
    invalid_rows,
    normalize_products,
    pair_problems,
    select_rows,
    set_ranker,
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


@dataclass
class Job:
    """The state of one run that every step reads: config, where things go, and what was measured."""

    config: RunConfig
    storage: Storage
    run_id: str
    layout: RunLayout
    store: LabelStore | None
    counts: dict[str, int] = field(default_factory=dict)
    attempts_failed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def parts(self) -> int:
        """Partitions of a hash shuffle: about one per ROWS_PER_PARTITION selected log rows, at most the config's.

        Each partition is a reduce task holding a CPU; on small inputs one partition is fastest.
        """
        rows = self.counts.get("rows_selected", self.counts.get("pairs_in_log", 0))
        return max(1, min(self.config.compute.shuffle_partitions, math.ceil(rows / ROWS_PER_PARTITION)))

    def timed(self, name: str, started: float) -> float:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - started
        return self.seconds[name]


def default_run_id() -> str:
    return "run-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def preflight(config: RunConfig) -> None:
    """Every endpoint reachable and accepting its key, before anything is spent."""

    async def check() -> None:
        seen = set()
        for stage in ("guidelines", "annotate", "captions"):
            if getattr(config.llm, stage) is None:
                continue
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


def per_query_metrics(group: pa.Table, ks: list[int], top_grade: int) -> pa.Table:
    """One query's ranked lists with their grades -> that query's metric rows.

    The ideal pool of nDCG is every product of the query judged in this run (the union of the rankers' top k).
    """
    frame = pl.from_arrow(group)
    run = frame.select("ranker", "query", "rank", "product_id")
    labels = frame.select("query", "product_id", "grade").unique(subset=["query", "product_id"])
    return query_metrics(run, labels, ks=ks, top_grade=top_grade).to_arrow()


# -- steps ------------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    log: list[TableInfo]
    catalog: TableInfo | None
    columns: list[str]


def validate(job: Job, check_endpoints: bool = True) -> Inputs:
    """Metadata only, before any LLM call: columns, types, non-empty, endpoints reachable, keys present."""
    config, storage = job.config, job.storage
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


def read_log(job: Job, inputs: Inputs):
    """The log, read once and row-checked; returns (checked rows, selected rows at rank <= k, segments)."""
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
    job.counts["pairs_in_log"] = checked.count()

    queries_filter = None
    segments = None
    if "query_count" in inputs.columns:
        query_counts = to_polars(
            checked.filter(expr=col("input_error").is_null()).groupby("query", num_partitions=job.parts).max("query_count")
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
    job.counts["rows_selected"] = selected.count()
    if job.counts["rows_selected"] == 0:
        rankers_note = f" for rankers {config.rankers}" if config.rankers else ""
        raise InputError(f"no valid log rows at rank <= {config.k}{rankers_note}; nothing to evaluate")
    return checked, selected, segments


def build_pairs(job: Job, inputs: Inputs, selected):
    """Unique (query, product) pairs across all rankers, with product fields, hash and guideline id."""
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
            "model": guideline.model, "prompt_version": GUIDELINE_PROMPT_VERSION, "scale": job.config.scale.as_dicts()})
        .materialize()
    )
    job.counts["pairs_unique"] = pairs.count()
    progress(f"{job.counts['rows_selected']} log rows selected -> {job.counts['pairs_unique']} unique (query, product) pairs")
    if inputs.catalog is not None:
        from ray.data.expressions import col

        # A product_id the catalog lists twice with different content: one record is judged (the rule in
        # `unique_pairs`), and the user hears of it.
        conflicting = pairs.filter(expr=col("product_variants") > 1).count()
        job.counts["pairs_with_conflicting_catalog_records"] = conflicting
        if conflicting:
            progress(f"warning: {conflicting} pairs have a product_id that {inputs.catalog.uri} lists more than once "
                     "with different content; the record at the best rank was judged (column product_variants)")
    return pairs


@dataclass
class Images:
    """What the image steps produced: fetch results per URL, captions per image (caption mode)."""

    fetched: Any = None
    captions: Any = None  # caption mode: one row per image URL (captions/)
    captioned: Any = None  # caption mode: one row per unique image, with the calls and tokens it took
    data_urls: Any = None  # direct mode: image_url -> image_data_url, joined onto the pairs that go to the judge


def attach_images(job: Job, pairs, caption_config: LLMStageConfig | None):
    """Fetch each unique image once; caption it (caption mode); put image columns on the pairs."""
    from ray.data.expressions import col

    config = job.config
    mode = config.images.mode
    if mode == "text" or "image_url" not in pairs.columns():
        return pairs.map_batches(
            lambda b: b.append_column("image_status", pa.array([NO_IMAGE] * b.num_rows, pa.string())),
            batch_format="pyarrow",
        ), Images()
    urls = pairs.filter(expr=col("image_url").is_not_null() & col("pair_error").is_null()).groupby(
        "image_url", num_partitions=job.parts).count().select_columns(["image_url"])
    stage_config = ImageStageConfig(
        images=config.images, s3_endpoint_url=s3_endpoint(config.storage.s3_endpoint_url),
        s3_region=config.storage.s3_region, max_concurrent_requests=config.compute.images.max_concurrent_requests,
    )
    fetched = compact(actor_map(urls, ImageStage, {"config": stage_config}, config.compute.images).materialize())
    job.counts["images"] = fetched.count()
    progress(f"images: {job.counts['images']} unique URLs fetched")
    images = Images(fetched=fetched)
    if mode == "caption":
        keyed = fetched.map_batches(add_caption_ids, batch_format="pyarrow", fn_kwargs={"model": config.llm.captions.model})
        # One vision call per unique image: URLs whose bytes make the same image share a caption_id, and one row
        # of each goes to the pool (a batch-local dedup left duplicates in different batches: 404 calls for the
        # demo's 13 distinct photos behind 1,762 URLs).
        unique = keyed.filter(expr=col("caption_id").is_not_null()).groupby(
            "caption_id", num_partitions=job.parts).map_groups(_first_row, batch_format="pyarrow")
        captioned = cached_stage(unique, CAPTION_SPEC, CaptionStage, caption_config, config.compute.captions,
                                 store=job.store, run_id=job.run_id, parts=job.parts)
        images.captioned = captioned
        captions = _captions_per_url(job, keyed, captioned).materialize()
        write(captions, job.layout.path("captions"), job.storage, "captions")
        images.captions = captions
        side = captions.select_columns(["image_url", "caption_id", "caption", "image_status"])
    else:
        side = fetched.select_columns(["image_url", "image_id", "image_status"])
        images.data_urls = fetched.select_columns(["image_url", "image_data_url"])
    with_images = pairs.join(side, join_type="left_outer", num_partitions=job.parts, on=("image_url",)).map_batches(
        _no_image_status, batch_format="pyarrow")
    return with_images.materialize(), images


def _first_row(group: pa.Table) -> pa.Table:
    return group.slice(0, 1)


def _captions_per_url(job: Job, keyed, captioned):
    """One caption row per image URL (captions/): each unique image's caption spread to every URL showing it;
    URLs whose fetch failed get no caption and their fetch problem as the error. Usage stays on `captioned`."""
    model = job.config.llm.captions.model

    def join_key(batch: pa.Table) -> pa.Table:  # never null: a fetch that failed matches no image ("")
        frame = pl.from_arrow(batch)
        key = pl.when(pl.col("caption_id").is_not_null()).then(pl.col("image_id")).otherwise(pl.lit(""))
        return frame.with_columns(key.fill_null("").alias("image_key")).to_arrow()

    def lay_out(batch: pa.Table) -> pa.Table:
        captioned_url = pl.col("image_caption").is_not_null()
        failed_fetch = pl.col("image_status") != "ok"
        return pl.from_arrow(batch).select(
            pl.col("image_url", "image_id").cast(pl.String),
            # the caption_id is set only where there is a caption (as CaptionStage writes it)
            pl.when(captioned_url).then(pl.col("caption_id")).cast(pl.String).alias("caption_id"),
            pl.col("image_caption").cast(pl.String).alias("caption"),
            pl.col("image_status").cast(pl.String),
            pl.coalesce(pl.col("model"), pl.lit(model)).cast(pl.String).alias("model"),
            pl.coalesce(pl.col("prompt_version"), pl.lit(CAPTION_PROMPT_VERSION)).cast(pl.String).alias("prompt_version"),
            pl.col("cache_hit").fill_null(False).cast(pl.Boolean),
            pl.coalesce(pl.col("caption_error"), pl.col("image_error"), pl.when(failed_fetch).then(pl.col("image_status")),
                        pl.when(~captioned_url).then(pl.lit("no caption was made"))).cast(pl.String).alias("error"),
        ).to_arrow()

    urls = keyed.select_columns(["image_url", "image_id", "caption_id", "image_status", "image_error"]).map_batches(
        join_key, batch_format="pyarrow")
    by_image = captioned.select_columns(["image_id", "caption", "model", "prompt_version", "cache_hit", "error"])
    by_image = by_image.rename_columns({"image_id": "image_key", "caption": "image_caption", "error": "caption_error"})
    return urls.join(by_image, join_type="left_outer", num_partitions=job.parts, on=("image_key",)).map_batches(
        lay_out, batch_format="pyarrow")


def _no_image_status(batch: pa.Table) -> pa.Table:
    """Pairs without an image URL (or whose URL was not fetched) say so."""
    status = pl.from_arrow(batch.select(["image_status"]))["image_status"].fill_null(NO_IMAGE).to_arrow()
    return batch.set_column(batch.column_names.index("image_status"), "image_status", status)


def write_guidelines(job: Job, pairs, stage_config: LLMStageConfig):
    """One guideline per unique query (store first, then the LLM)."""
    from ray.data.aggregate import Max
    from ray.data.expressions import col

    queries = pairs.filter(expr=col("pair_error").is_null()).groupby("query", num_partitions=job.parts).aggregate(
        Max("guideline_id", alias_name="guideline_id")
    )
    guidelines = cached_stage(queries, GUIDELINE_SPEC, GuidelineStage, stage_config, job.config.compute.guidelines,
                              store=job.store, run_id=job.run_id, parts=job.parts)
    job.counts["queries"] = guidelines.count()
    write(guidelines, job.layout.guidelines, job.storage, "guidelines")
    return guidelines


def write_labels(job: Job, pairs, guidelines, images: Images, stage_config: LLMStageConfig):
    """One label per unique pair (store first, then the LLM against the query's guideline)."""
    from ray.data.expressions import col

    annotate = job.config.llm.annotate
    keyed = pairs.map_batches(add_label_keys, batch_format="pyarrow", fn_kwargs={
        "model": annotate.model, "prompt_version": ANNOTATION_PROMPT_VERSION, "scale": job.config.scale.as_dicts(),
        "image_mode": job.config.images.mode})
    guideline_text = guidelines.select_columns(["query", "guideline", "error"]).rename_columns({"error": "guideline_error"})

    def with_guidelines(misses):
        misses = misses.join(guideline_text, join_type="left_outer", num_partitions=job.parts, on=("query",))
        if images.data_urls is not None:  # direct mode: the image bytes travel only with the pairs sent to the judge
            misses = misses.join(images.data_urls, join_type="left_outer", num_partitions=job.parts, on=("image_url",))
        return misses

    labels = cached_stage(keyed, LABEL_SPEC, AnnotateStage, stage_config, job.config.compute.annotate,
                          store=job.store, run_id=job.run_id, parts=job.parts, prepare_misses=with_guidelines)
    job.counts["labelled"] = labels.filter(expr=col("grade").is_not_null()).count()
    write(labels, job.layout.labels, job.storage, "labels")
    return labels


def _stage_errors(ds, stage: str, reason: pl.Expr, failed):
    return ds.filter(expr=failed).map_batches(
        lambda b: error_records(pl.from_arrow(b), stage, reason), batch_format="pyarrow"
    )


def write_errors(job: Job, checked, guidelines, labels, images: Images) -> dict[str, int]:
    """Bad log rows, failed images, captions, guidelines, failed or unjudgeable pairs: each with its reason."""
    from ray.data.expressions import col

    parts = {
        "input": checked.filter(expr=col("input_error").is_not_null()).map_batches(invalid_rows, batch_format="pyarrow"),
        "guidelines": _stage_errors(guidelines, "guidelines", pl.col("error"), col("error").is_not_null()),
        "annotate": _stage_errors(labels, "annotate", pl.col("error"), col("error").is_not_null()),
    }
    if images.fetched is not None:
        failed_fetch = col("image_status") != "ok"
        parts["images"] = _stage_errors(
            images.fetched, "images", pl.format("{}: {}", "image_url", "image_error"), failed_fetch)
    if images.captions is not None:
        failed_caption = col("error").is_not_null() & (col("image_status") == "ok")
        parts["captions"] = _stage_errors(
            images.captions, "captions", pl.format("{}: {}", "image_url", "error"), failed_caption)
    parts = {stage: part.materialize() for stage, part in parts.items()}
    counts = {stage: part.count() for stage, part in parts.items()}
    if sum(counts.values()) == 0:
        job.storage.write_table(join_uri(job.layout.errors, "errors-empty.parquet"), ERROR_SCHEMA.empty_table())
        return {}
    errors = [part for part in parts.values() if part.count()]
    write(errors[0].union(*errors[1:]) if len(errors) > 1 else errors[0], job.layout.errors, job.storage, "errors")
    return counts


class RayEvaluationSource:
    """Ranked lists and labels for the evaluation step, filtered on Ray: only the answer reaches the driver."""

    def __init__(self, selected, labels, pairs, parts: int = 1):
        self.parts = parts
        self.run = selected.select_columns(list(RUN_SCHEMA))
        self.labels = labels.select_columns(list(LABEL_SCHEMA))
        self.titles = pairs.select_columns(["query", "product_id", "title"]) if "title" in pairs.columns() else None

    def _with_titles(self, labels: pl.DataFrame, queries: list[str]) -> pl.DataFrame:
        if self.titles is None or labels.is_empty():
            return labels
        from ray.data.expressions import col

        titles = to_polars(self.titles.filter(expr=col("query").is_in(queries)),
                            schema={"query": pl.String, "product_id": pl.String, "title": pl.String})
        return labels.join(titles, on=["query", "product_id"], how="left")

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        from ray.data.expressions import col

        return to_polars(self.run.filter(expr=col("query").is_in(list(queries))), schema=RUN_SCHEMA)

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        from ray.data.expressions import col

        labels = to_polars(self.labels.filter(expr=col("query").is_in(list(queries))), schema=LABEL_SCHEMA)
        return self._with_titles(labels, list(queries))

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        keys = pairs.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        return self.labels_for(keys["query"].unique().to_list()).join(keys, on=["query", "product_id"], how="semi")

    def failed_labels(self, limit: int) -> pl.DataFrame:
        from ray.data.expressions import col

        return to_polars(self.labels.filter(expr=col("error").is_not_null()).limit(limit), schema=LABEL_SCHEMA)

    def trec_chunks(self, rankers: list[str]):
        """The lines are made on Ray, a block at a time (a run's lines per query, so rankings stay whole); the
        driver only streams each block's text into its file."""
        from ray.data.expressions import col

        qrels = self.labels.filter(expr=col("grade").is_not_null()).map_batches(
            _qrels_piece, batch_format="pyarrow", batch_size=None)
        runs = self.run.groupby("query", num_partitions=self.parts).map_groups(
            _run_pieces, batch_format="pyarrow", fn_kwargs={"rankers": list(rankers)},
        ).map_batches(_join_pieces, batch_format="pyarrow", batch_size=None)
        for pieces in (qrels, runs):
            for batch in pieces.iter_batches(batch_format="pyarrow", batch_size=None):
                yield from zip(batch.column("file").to_pylist(), batch.column("text").to_pylist())


_PIECES = pa.schema([("file", pa.string()), ("text", pa.large_string())])


def _qrels_piece(batch: pa.Table) -> pa.Table:
    text = qrels_lines(pl.from_arrow(batch.select(["query", "product_id", "grade"])))
    return pa.Table.from_pylist([{"file": QRELS, "text": text}] if text else [], schema=_PIECES)


def _run_pieces(group: pa.Table, rankers: list[str]) -> pa.Table:
    frame = pl.from_arrow(group)
    present = set(frame["ranker"].to_list())
    rows = [{"file": RUN + ranker, "text": run_text(frame, ranker)} for ranker in rankers if ranker in present]
    return pa.Table.from_pylist(rows, schema=_PIECES)


def _join_pieces(batch: pa.Table) -> pa.Table:
    """One piece per file per block (map_groups makes one per query)."""
    joined = pl.from_arrow(batch).group_by("file", maintain_order=True).agg(pl.col("text").str.join(""))
    return joined.to_arrow().cast(_PIECES)


def evaluate(job: Job, inputs: Inputs, checked, selected, pairs, labels, segments):
    """Per-query metrics on Ray; rankers, comparisons, segments, problems, agreement on the small per-query table."""
    from ray.data.expressions import col

    config = job.config
    graded = selected.select_columns(["ranker", "query", "rank", "product_id"]).join(
        labels.select_columns(["query", "product_id", "grade"]), join_type="left_outer", num_partitions=job.parts,
        on=("query", "product_id"),
    )
    by_query = to_polars(
        graded.groupby("query", num_partitions=job.parts).map_groups(
            per_query_metrics, batch_format="pyarrow",
            fn_kwargs={"ks": config.metrics.ks, "top_grade": config.scale.top_grade},
        ),
        schema=QUERY_METRICS_SCHEMA,
    )
    if "locale" in inputs.columns:
        locales = to_polars(checked.filter(expr=col("input_error").is_null()).groupby(
            ["query", "locale"], num_partitions=job.parts).count())
        segments = pl.concat([s for s in (segments, locale_segments(locales)) if s is not None])
    human = load_human_labels(config.input.human_labels, job.storage) if config.input.human_labels else None
    return evaluate_run(
        query_metrics=by_query, source=RayEvaluationSource(selected, labels, pairs, job.parts), config=config.metrics,
        storage=job.storage, layout=job.layout, segments=segments, human=human,
        grades=[g.grade for g in config.scale.grades],
    )


def prepare_run_folder(job: Job) -> None:
    """A run id that exists already is resumed: its earlier outputs are replaced (the store keeps its labels)."""
    if not job.storage.exists(job.layout.root):
        return
    progress(f"run folder {job.layout.root} exists: resuming (reusing the label store, replacing its outputs)")
    for folder in ("labels", "guidelines", "captions", "errors", "metrics", "agreement", "review", "trec"):
        job.storage.delete_folder(job.layout.path(folder))


def make_job(config: RunConfig, storage: Storage | None = None) -> Job:
    storage = storage or Storage(config.storage.s3_endpoint_url, config.storage.s3_region)
    run_id = config.run_id or default_run_id()
    output = resolve_uri(config.output.uri)
    store = None
    if config.store.enabled:
        store = LabelStore(resolve_uri(config.store.uri) if config.store.uri else join_uri(output, "_store"), storage)
    return Job(config=config, storage=storage, run_id=run_id, layout=RunLayout(join_uri(output, run_id)), store=store)


def _steps(job: Job, inputs: Inputs, stage_configs: dict[str, LLMStageConfig]):
    """Every step after validation: read, pair, images, guidelines, annotation, errors, metrics."""
    prepare_run_folder(job)

    t = time.monotonic()
    checked, selected, segments = read_log(job, inputs)
    pairs = build_pairs(job, inputs, selected)
    job.timed("prepare", t)

    t = time.monotonic()
    pairs, images = attach_images(job, pairs, stage_configs.get("captions"))
    if images.fetched is not None:
        job.timed("images", t)

    t = time.monotonic()
    guidelines = write_guidelines(job, pairs, stage_configs["guidelines"])
    progress(f"guidelines: {job.counts['queries']} queries in {job.timed('guidelines', t):.1f}s")

    t = time.monotonic()
    labels = write_labels(job, pairs, guidelines, images, stage_configs["annotate"])
    progress(f"annotate: {job.counts['pairs_unique']} pairs in {job.timed('annotate', t):.1f}s")

    error_counts = write_errors(job, checked, guidelines, labels, images)

    t = time.monotonic()
    evaluation = evaluate(job, inputs, checked, selected, pairs, labels, segments)
    job.timed("metrics", t)

    stage_usage = {"guidelines": usage_totals(guidelines), "annotate": usage_totals(labels)}
    if images.captioned is not None:
        stage_usage["captions"] = usage_totals(images.captioned)
    return images, labels, error_counts, evaluation, stage_usage


def run(config: RunConfig, storage: Storage | None = None) -> RunResult:
    """Run the whole job; returns where it wrote and what it measured."""
    import ray

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    job = make_job(config, storage)

    t = time.monotonic()
    inputs = validate(job)
    job.timed("validate", t)
    progress(f"output: {job.layout.root}" + (f"; label store: {job.store.uri}" if job.store else ""))
    ensure_ray(config)
    budget, budget_handle = start_budget(config, job.run_id)
    # Batch mode's state (submitted batches, their files): beside the store, so a rerun picks them up.
    batch_root = join_uri(job.store.uri if job.store else job.layout.root, "batches", job.run_id)
    stage_configs = {
        stage: stage_config(config, stage, getattr(config.compute, stage), budget, batch_root)
        for stage in llm_stages(config)
    }
    try:
        attempts = config.compute.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                done = _steps(job, inputs, stage_configs)
                break
            except Exception as error:
                fatal = fatal_endpoint_error(error)
                if fatal is not None:
                    # A key revoked mid-run (401/403 in an actor): a clean error, as at preflight.
                    raise FatalEndpointError(f"{fatal} (mid-run; what was judged before is in the label store)") from None
                lost = lost_worker(error)
                if lost is None or attempt == attempts:
                    raise
                # What the lost node held is gone with it (blocks made by actors cannot be recomputed); what was
                # judged is in the store. Run the steps again: only the pairs not yet stored are sent.
                progress(f"attempt {attempt} of {attempts} failed: {lost}; resuming from the label store")
                job.attempts_failed.append(lost)
        budget_state = ray.get(budget_handle.state.remote())
    finally:
        ray.kill(budget_handle)
    images, labels, error_counts, evaluation, stage_usage = done
    by_ranker = evaluation.rankers
    job.seconds["total"] = time.monotonic() - started
    status = "succeeded"
    if budget_state.get("stopped"):
        status = "stopped_at_cost_limit"
        progress(f"stopped sending at max_cost_usd={config.max_cost_usd}: the pairs not sent are in errors/")
    manifest = build_manifest(
        config=config, run_id=job.run_id, root=job.layout.root, started_at=started_at, counts=job.counts,
        stage_usage=stage_usage, error_counts=error_counts, seconds=job.seconds,
        rankers=sorted(by_ranker["ranker"].unique().to_list()) if by_ranker.height else [],
        status=status, store=job.store.uri if job.store else None,
        extra={**_image_counts(images, labels),
               # llm_calls and tokens count the last attempt; the calls of failed attempts are in the store.
               "attempts": 1 + len(job.attempts_failed), "attempts_failed": job.attempts_failed},
    )
    job.storage.write_json(job.layout.manifest, manifest)
    write_report(evaluation, manifest, job.storage, job.layout)
    return RunResult(root=job.layout.root, manifest=manifest, rankers=by_ranker, seconds=job.seconds)


def _image_counts(images: Images, labels) -> dict[str, Any]:
    """Manifest entries of the image steps: fetches by status, labels by image status."""
    if images.fetched is None:
        return {}
    by_status = dict(to_polars(images.fetched.groupby("image_status").count()).iter_rows())
    labels_by_status = dict(to_polars(labels.groupby("image_status").count()).iter_rows())
    return {"images": {"unique_urls": images.fetched.count(), "by_status": by_status},
            "labels_by_image_status": labels_by_status}


__all__ = ["RunResult", "run", "ensure_ray", "FatalEndpointError"]
