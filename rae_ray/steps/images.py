"""Images: fetch each unique image once; caption it (caption mode) or hand its bytes to the judge (direct mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from rae_ray.io import join_uri, s3_endpoint
from rae_ray.labelstore.cached import CAPTION_SPEC, cached_stage, output_schema
from rae_ray.labelstore.keys import add_caption_ids
from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION
from rae_ray.llm.protocol import NO_IMAGES_ERROR
from rae_ray.runtime import Job, actor_map, compact, left_join, progress, to_polars, with_schema, write
from rae_ray.stages.annotate import NO_IMAGE
from rae_ray.stages.captions import CAPTION_COLUMNS, CaptionStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.images import IMAGE_SCHEMA, ImageStage, ImageStageConfig


@dataclass
class Images:
    """What the image steps produced: fetch results per URL, captions per image (caption mode)."""

    fetched: Any = None
    captions: Any = None  # caption mode: one row per image URL (captions/)
    captioned: Any = None  # caption mode: one row per unique image, with the calls and tokens it took
    data_urls: Any = None  # direct mode: image_url -> image_data_url, joined onto the pairs that go to the judge


def attach_images(job: Job, pairs, caption_config: LLMStageConfig | None) -> tuple[Any, Images, dict[str, int]]:
    """Fetch each unique image once; caption it (caption mode); put image columns on the pairs."""
    from ray.data.expressions import col

    config = job.config
    mode = config.images.mode
    if mode == "text" or "image_url" not in pairs.columns():
        return pairs.map_batches(_without_images, batch_format="pyarrow"), Images(), {}
    urls = pairs.filter(expr=col("image_url").is_not_null() & col("pair_error").is_null()).groupby(
        "image_url", num_partitions=job.parts).count().select_columns(["image_url"])
    stage_config = ImageStageConfig(
        images=config.images, s3_endpoint_url=s3_endpoint(config.storage.s3_endpoint_url),
        s3_region=config.storage.s3_region, max_concurrent_requests=config.compute.images.max_concurrent_requests,
    )
    fetched = actor_map(urls, ImageStage, {"config": stage_config}, config.compute.images).materialize()
    fetched = with_schema(compact(fetched), IMAGE_SCHEMA)  # no product with an image: no row, same columns
    counts = {"images": fetched.count()}
    progress(f"images: {counts['images']} unique URLs fetched")
    images = Images(fetched=fetched)
    if counts["images"] == 0:  # no product has an image: nothing to caption or join, every pair is judged on text
        if mode == "caption":
            images.captioned = with_schema(fetched, output_schema(CAPTION_SPEC))
            images.captions = images.captioned.select_columns(CAPTION_COLUMNS)
            job.storage.write_table(join_uri(job.layout.path("captions"), "captions-empty.parquet"),
                                    output_schema(CAPTION_SPEC).empty_table().select(CAPTION_COLUMNS))
        return pairs.map_batches(_without_images, batch_format="pyarrow").materialize(), images, counts
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
        no_vision = captioned.map_batches(_refused_for_no_vision, batch_format="pyarrow").count()
        if no_vision:  # the actors' own warnings stay in Ray's logs: the console hears it once, here
            progress(f"captions: endpoint {caption_config.endpoint.base_url} model {config.llm.captions.model} takes "
                     f"no images: {no_vision} images not described; their pairs are judged on text "
                     "(image_status caption_failed)")
        captions = _captions_per_url(job, keyed, captioned).materialize()
        write(captions, job.layout.path("captions"), job.storage, "captions")
        images.captions = captions
        side = captions.select_columns(["image_url", "caption_id", "caption", "image_status"])
    else:
        side = fetched.select_columns(["image_url", "image_id", "image_status"])
        images.data_urls = fetched.select_columns(["image_url", "image_data_url"])
    with_images = left_join(pairs, side, ("image_url",), job.parts).map_batches(_no_image_status, batch_format="pyarrow")
    return with_images.materialize(), images, counts


def _without_images(batch: pa.Table) -> pa.Table:
    return batch.append_column("image_status", pa.array([NO_IMAGE] * batch.num_rows, pa.string()))


def _refused_for_no_vision(batch: pa.Table) -> pa.Table:
    """The caption rows whose call the endpoint refused because its model takes no images."""
    return pl.from_arrow(batch.select(["error"])).filter(pl.col("error").str.starts_with(NO_IMAGES_ERROR)).to_arrow()


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
    # No image captioned (every fetch failed): no row to join, each URL gets its fetch problem as the error.
    return left_join(urls, by_image, ("image_key",), job.parts).map_batches(lay_out, batch_format="pyarrow")


def _no_image_status(batch: pa.Table) -> pa.Table:
    """Pairs without an image URL (or whose URL was not fetched) say so."""
    status = pl.from_arrow(batch.select(["image_status"]))["image_status"].fill_null(NO_IMAGE).to_arrow()
    return batch.set_column(batch.column_names.index("image_status"), "image_status", status)


def image_counts(images: Images, labels) -> dict[str, Any]:
    """Manifest entries of the image steps: fetches by status, labels by image status."""
    if images.fetched is None:
        return {}
    by_status = dict(to_polars(images.fetched.groupby("image_status").count()).iter_rows())
    labels_by_status = dict(to_polars(labels.groupby("image_status").count()).iter_rows())
    return {"images": {"unique_urls": images.fetched.count(), "by_status": by_status},
            "labels_by_image_status": labels_by_status}
