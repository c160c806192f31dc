"""Judge: one label per unique (query, product) pair: a person's grade from the label store (review import), else
an LLM label from the store, else the LLM's judgement against the query's guideline (and the image's caption or the
image itself, and people's examples of the query)."""

from __future__ import annotations

from typing import Any

from rae_ray.config import RunConfig
from rae_ray.labelstore.cached import LABEL_SPEC, cached_stage, output_schema
from rae_ray.labelstore.human import (
    HUMAN_KEY, HUMAN_KIND, HUMAN_LOOKUP, HUMAN_PREFIX, add_human_keys, human_labels, with_source,
)
from rae_ray.labelstore.keys import add_judge_context, add_label_keys, judge_context
from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION, GUIDELINE_PROMPT_VERSION, annotation_prompt_version
from rae_ray.runtime import Job, left_join, progress, write
from rae_ray.stages.annotate import NO_VISION, AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.steps.examples import Examples, attach_examples
from rae_ray.steps.images import Images


def run_judge_context(config: RunConfig) -> str:
    """The judging context of this run's labels (`labelstore.keys.judge_context`): judge, scale, image mode,
    guideline and caption stages."""
    guidelines, captions = config.llm.guidelines, config.llm.captions
    examples = config.llm.annotate.examples is not None
    return judge_context(
        config.llm.annotate.model, annotation_prompt_version(guidelines.enabled, examples=examples),
        config.scale.as_dicts(),
        config.images.mode, (guidelines.model, GUIDELINE_PROMPT_VERSION) if guidelines.enabled else None,
        (captions.model, CAPTION_PROMPT_VERSION) if config.images.mode == "caption" and captions else None,
    )


def by_people(job: Job, keyed) -> tuple[Any, Any]:
    """(labels people gave, the pairs left for the judge): pairs with a human record in the store (review import)
    become `source: human` labels and are sent to no LLM."""
    from ray.data.expressions import col

    if job.store is None:
        return None, keyed
    grades = [g.grade for g in job.config.scale.grades]
    looked = job.store.lookup(keyed.map_batches(add_human_keys, batch_format="pyarrow", fn_kwargs={"grades": grades}),
                              HUMAN_KIND, HUMAN_KEY, HUMAN_LOOKUP, HUMAN_PREFIX, job.parts).materialize()
    graded = col(HUMAN_PREFIX + "grade").is_not_null()
    people = looked.filter(expr=graded).map_batches(
        human_labels, batch_format="pyarrow", fn_kwargs={"schema": output_schema(LABEL_SPEC)}).materialize()
    rest = looked.filter(expr=~graded).drop_columns([HUMAN_KEY, *(HUMAN_PREFIX + name for name in HUMAN_LOOKUP)])
    return people, rest


def write_labels(job: Job, pairs, guidelines, images: Images, stage_config: LLMStageConfig,
                 examples: Examples | None = None) -> tuple[Any, dict[str, int]]:
    """One label per unique pair (people first, then the store, then the LLM against the query's guideline);
    written to labels/ with `source` (llm or human)."""
    from ray.data.expressions import col

    annotate = job.config.llm.annotate
    keyed = attach_examples(job, pairs, examples).map_batches(add_label_keys, batch_format="pyarrow", fn_kwargs={
        "model": annotate.model, "prompt_version": annotation_prompt_version(stage_config.guidelines),
        "examples_prompt_version": annotation_prompt_version(stage_config.guidelines, examples=True),
        "scale": job.config.scale.as_dicts(), "image_mode": job.config.images.mode}).map_batches(
        add_judge_context, batch_format="pyarrow", fn_kwargs={"context": run_judge_context(job.config)})
    people, keyed = by_people(job, keyed)

    def with_guidelines(misses):
        if guidelines is not None:  # None: llm.guidelines.enabled false, the judge needs no guideline
            guideline_text = guidelines.select_columns(["query", "guideline", "error"]).rename_columns(
                {"error": "guideline_error"})
            misses = left_join(misses, guideline_text, ("query",), job.parts)
        if images.data_urls is not None:  # direct mode: the image bytes travel only with the pairs sent to the judge
            misses = left_join(misses, images.data_urls, ("image_url",), job.parts)
        return misses

    labels = cached_stage(keyed, LABEL_SPEC, AnnotateStage, stage_config, job.config.compute.annotate,
                          store=job.store, run_id=job.run_id, parts=job.parts, prepare_misses=with_guidelines)
    labels = labels.map_batches(with_source, batch_format="pyarrow", fn_kwargs={"source": "llm"})
    counts = {"human_labels": people.count() if people is not None else 0,
              "example_pairs": examples.pairs.height if examples is not None else 0}
    if counts["human_labels"]:
        progress(f"annotate: {counts['human_labels']} pairs graded by people in review (label store), sent to no LLM")
        labels = labels.union(people)
    labels = labels.materialize()
    counts["labelled"] = labels.filter(expr=col("grade").is_not_null()).count()
    if job.config.images.mode == "direct":
        no_vision = labels.filter(expr=col("image_status") == NO_VISION).count()
        if no_vision:
            progress(f"annotate: endpoint {stage_config.endpoint.base_url} model {annotate.model} takes no images: "
                     f"{no_vision} pairs judged on text (image_status {NO_VISION})")
    write(labels, job.layout.labels, job.storage, "labels")
    return labels, counts
