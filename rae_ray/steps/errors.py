"""Errors: every log row, image, caption, query and pair that failed, with its reason, into errors/."""

from __future__ import annotations

import polars as pl

from rae_ray.io import join_uri
from rae_ray.runtime import Job, write
from rae_ray.stages.prepare import ERROR_SCHEMA, error_records, invalid_rows
from rae_ray.steps.images import Images


def _stage_errors(ds, stage: str, reason: pl.Expr, failed):
    return ds.filter(expr=failed).map_batches(
        lambda b: error_records(pl.from_arrow(b), stage, reason), batch_format="pyarrow"
    )


def write_errors(job: Job, checked, guidelines, labels, images: Images) -> dict[str, int]:
    """Bad log rows, failed images, captions, guidelines, failed or unjudgeable pairs: each with its reason.

    Returns the errors by stage (empty when there are none).
    """
    from ray.data.expressions import col

    parts = {
        "input": checked.filter(expr=col("input_error").is_not_null()).map_batches(invalid_rows, batch_format="pyarrow"),
        **({"guidelines": _stage_errors(guidelines, "guidelines", pl.col("error"), col("error").is_not_null())}
           if guidelines is not None else {}),  # None: guidelines off
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
