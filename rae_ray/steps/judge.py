"""Judge: one label per unique (query, product) pair, from the label store or else by the LLM against the
query's guideline (and the image's caption or the image itself)."""

from __future__ import annotations

from typing import Any

from rae_ray.labelstore.cached import LABEL_SPEC, cached_stage
from rae_ray.labelstore.keys import add_label_keys
from rae_ray.llm.prompts import annotation_prompt_version
from rae_ray.runtime import Job, left_join, progress, write
from rae_ray.stages.annotate import NO_VISION, AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.steps.images import Images


def write_labels(job: Job, pairs, guidelines, images: Images, stage_config: LLMStageConfig) -> tuple[Any, dict[str, int]]:
    """One label per unique pair (store first, then the LLM against the query's guideline); written to labels/."""
    from ray.data.expressions import col

    annotate = job.config.llm.annotate
    keyed = pairs.map_batches(add_label_keys, batch_format="pyarrow", fn_kwargs={
        "model": annotate.model, "prompt_version": annotation_prompt_version(stage_config.guidelines),
        "scale": job.config.scale.as_dicts(), "image_mode": job.config.images.mode})

    def with_guidelines(misses):
        if guidelines is not None:  # None: llm.guidelines.enabled false, the judge needs no guideline
            guideline_text = guidelines.select_columns(["query", "guideline", "error"]).rename_columns(
                {"error": "guideline_error"})
            misses = with_guideline(misses, guideline_text, job.parts)
        if images.data_urls is not None:  # direct mode: the image bytes travel only with the pairs sent to the judge
            misses = left_join(misses, images.data_urls, ("image_url",), job.parts)
        return misses

    labels = cached_stage(keyed, LABEL_SPEC, AnnotateStage, stage_config, job.config.compute.annotate,
                          store=job.store, run_id=job.run_id, parts=job.parts, prepare_misses=with_guidelines)
    counts = {"labelled": labels.filter(expr=col("grade").is_not_null()).count()}
    if job.config.images.mode == "direct":
        no_vision = labels.filter(expr=col("image_status") == NO_VISION).count()
        if no_vision:
            progress(f"annotate: endpoint {stage_config.endpoint.base_url} model {annotate.model} takes no images: "
                     f"{no_vision} pairs judged on text (image_status {NO_VISION})")
    write(labels, job.layout.labels, job.storage, "labels")
    return labels, counts


_GUIDELINE_ROW = "_guideline_row"


def with_guideline(misses, guideline_text, parts: int):
    """`misses` with their query's `guideline` and `guideline_error` (null when the query has none).

    Pairs and guidelines meet in per-query groups (a sort shuffle: tasks), not in a hash join, whose aggregator
    actor is a new worker process (some CPU-seconds) for every run.
    """
    import pyarrow as pa

    schema = misses.schema().base_schema
    columns = {"guideline": pa.string(), "guideline_error": pa.string(), _GUIDELINE_ROW: pa.bool_()}
    layout = pa.schema([*schema, *(pa.field(name, dtype) for name, dtype in columns.items())])
    rows = misses.map_batches(_in_layout, batch_format="pyarrow", fn_kwargs={"layout": layout, "guideline_row": False})
    guides = guideline_text.map_batches(_in_layout, batch_format="pyarrow",
                                        fn_kwargs={"layout": layout, "guideline_row": True})
    return rows.union(guides).groupby("query", num_partitions=parts).map_groups(
        _attach_guideline, batch_format="pyarrow")


def _in_layout(batch, layout, guideline_row: bool):
    import pyarrow as pa

    n = batch.num_rows
    arrays = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
              for f in layout if f.name != _GUIDELINE_ROW]
    return pa.Table.from_arrays([*arrays, pa.array([guideline_row] * n, pa.bool_())], schema=layout)


def _attach_guideline(group):
    """One query's pair rows, each given the query's guideline row's two columns; the guideline row dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc

    marked = group.column(_GUIDELINE_ROW)
    guide = group.filter(marked)
    pairs = group.filter(pc.invert(marked)).drop_columns([_GUIDELINE_ROW])
    n = pairs.num_rows
    for name in ("guideline", "guideline_error"):
        value = guide.column(name)[0].as_py() if guide.num_rows else None
        index = pairs.schema.get_field_index(name)
        pairs = pairs.set_column(index, name, pa.array([value] * n, pairs.schema.field(name).type))
    return pairs
