"""Judge: one label per unique (query, product) pair, from the label store or else by the LLM against the
query's guideline (and the image's caption or the image itself).

With votes (llm.annotate.samples > 1 or a panel) each pair is judged by every judge `samples` times: the pairs
become vote rows, each looked up in the store under its own key, the misses judged by their judge (a panel's
judges side by side in one actor pool, `stages.panel`), and the votes of a pair become its label (`stages.votes`: majority, ties to the lower grade, confidence).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rae_ray.labelstore.cached import LABEL_SPEC, cached_stage
from rae_ray.llm.prompts import annotation_prompt_version
from rae_ray.runtime import Job, left_join, progress, write
from rae_ray.stages.annotate import NO_VISION, AnnotateStage
from rae_ray.stages.common import LLMStageConfig
from rae_ray.stages.panel import PanelStage
from rae_ray.stages.votes import PAIR, aggregate_votes, explode_votes
from rae_ray.steps.confidence import confidence_summary
from rae_ray.steps.images import Images

# Vote rows through the store: a label row, plus the vote's judge and sample, and the pair's own key.
VOTE_COLUMNS = ("pair_key", "vote_judge", "vote_sample")
VOTE_SPEC = replace(LABEL_SPEC, output=[*LABEL_SPEC.output, *VOTE_COLUMNS], unstored_columns=VOTE_COLUMNS)


def judge_stage_config(job: Job, first: LLMStageConfig, model: str, endpoint_name: str) -> LLMStageConfig:
    """A panel member's stage config: llm.annotate's, with its own model, endpoint and price."""
    config = job.config
    endpoint = config.llm.endpoints[endpoint_name]
    compute = config.compute.annotate
    in_flight = compute.max_concurrent_requests
    if endpoint.max_in_flight is not None:
        in_flight = max(1, min(in_flight, endpoint.max_in_flight // compute.max_actors))
    return first.model_copy(update={
        "endpoint": endpoint, "model": first.model.model_copy(update={"model": model}),
        "price": config.pricing.get(model), "max_concurrent_requests": in_flight})


def write_labels(job: Job, pairs, guidelines, images: Images,
                 stage_config: LLMStageConfig) -> tuple[Any, dict[str, int], Any, dict[str, Any] | None]:
    """One label per unique pair (store first, then the LLM against the query's guideline); written to labels/.

    Returns (labels, counts, votes: one row per vote, confidence: the manifest's section, None with one vote)."""
    from ray.data.expressions import col

    annotate = job.config.llm.annotate
    judges = annotate.judges
    votes = pairs.map_batches(explode_votes, batch_format="pyarrow", fn_kwargs={
        "models": [model for model, _ in judges], "samples": annotate.samples,
        "prompt_version": annotation_prompt_version(stage_config.guidelines),
        "scale": job.config.scale.as_dicts(), "image_mode": job.config.images.mode})

    def with_guidelines(misses):
        if guidelines is not None:  # None: llm.guidelines.enabled false, the judge needs no guideline
            guideline_text = guidelines.select_columns(["query", "guideline", "error"]).rename_columns(
                {"error": "guideline_error"})
            misses = left_join(misses, guideline_text, ("query",), job.parts)
        if images.data_urls is not None:  # direct mode: the image bytes travel only with the pairs sent to the judge
            misses = left_join(misses, images.data_urls, ("image_url",), job.parts)
        return misses

    if len(judges) == 1:
        stage_cls, configs = AnnotateStage, stage_config
    else:  # a panel: one actor pool, each actor holding every judge (its endpoint, limits and price)
        stage_cls = PanelStage
        configs = [stage_config, *(judge_stage_config(job, stage_config, model, endpoint)
                                   for model, endpoint in judges[1:])]
    votes = cached_stage(votes, VOTE_SPEC, stage_cls, configs, job.config.compute.annotate, store=job.store,
                         run_id=job.run_id, parts=job.parts, prepare_misses=with_guidelines)
    aggregate = {"fn": aggregate_votes, "batch_format": "pyarrow", "fn_kwargs": {"output": LABEL_SPEC.output}}
    if annotate.votes_per_pair == 1:  # one vote per pair: its label, no shuffle
        labels = votes.map_batches(**aggregate).materialize()
    else:
        labels = votes.groupby(PAIR, num_partitions=job.parts).map_groups(**aggregate).materialize()
    counts = {"labelled": labels.filter(expr=col("grade").is_not_null()).count()}
    if job.config.images.mode == "direct":
        no_vision = labels.filter(expr=col("image_status") == NO_VISION).count()
        if no_vision:
            progress(f"annotate: endpoint {stage_config.endpoint.base_url} model {annotate.model} takes no images: "
                     f"{no_vision} pairs judged on text (image_status {NO_VISION})")
    confidence = confidence_summary(job, labels, votes) if annotate.votes_per_pair > 1 else None
    write(labels, job.layout.labels, job.storage, "labels")
    return labels, counts, votes, confidence
