"""Judge: one label per unique (query, product) pair: a person's grade from the label store (review import), else
an LLM label from the store, else the LLM's judgement against the query's guideline (and the image's caption or the
image itself, and people's examples of the query).

With votes (llm.annotate.samples > 1 or a panel) each pair is judged by every judge `samples` times: the pairs
become vote rows, each looked up in the store under its own key, the misses judged by their judge (a panel's
judges side by side in one actor pool, `stages.panel`), and the votes of a pair become its label
(`stages.votes`: majority, ties to the lower grade, confidence).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pyarrow as pa

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
from rae_ray.stages.panel import PanelStage
from rae_ray.stages.votes import CONFIDENCE_COLUMNS, PAIR, aggregate_votes, explode_votes
from rae_ray.steps.confidence import confidence_summary
from rae_ray.steps.images import Images

# Vote rows through the store: a label row, plus the vote's judge and sample, and the pair's own key.
VOTE_COLUMNS = ("pair_key", "vote_judge", "vote_sample")
VOTE_SPEC = replace(LABEL_SPEC, output=[*LABEL_SPEC.output, *VOTE_COLUMNS], unstored_columns=VOTE_COLUMNS)

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
    schema = output_schema(LABEL_SPEC)
    for name, dtype in CONFIDENCE_COLUMNS.items():  # the label rows' layout after the votes (`conform_labels`)
        schema = schema.append(pa.field(name, dtype))
    people = looked.filter(expr=graded).map_batches(
        human_labels, batch_format="pyarrow", fn_kwargs={"schema": schema}).materialize()
    rest = looked.filter(expr=~graded).drop_columns([HUMAN_KEY, *(HUMAN_PREFIX + name for name in HUMAN_LOOKUP)])
    return people, rest


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



def write_labels(job: Job, pairs, guidelines, images: Images, stage_config: LLMStageConfig,
                 examples: Examples | None = None) -> tuple[Any, dict[str, int], Any, dict[str, Any] | None]:
    """One label per unique pair (people first, then the store, then the LLM against the query's guideline);
    written to labels/ with `source` (llm or human).

    Returns (labels, counts, votes: one row per vote, confidence: the manifest's section, None with one vote)."""
    from ray.data.expressions import col

    annotate = job.config.llm.annotate
    judges = annotate.judges
    prompt_versions = {"prompt_version": annotation_prompt_version(stage_config.guidelines),
                       "examples_prompt_version": annotation_prompt_version(stage_config.guidelines, examples=True)}
    keyed = attach_examples(job, pairs, examples).map_batches(add_label_keys, batch_format="pyarrow", fn_kwargs={
        "model": annotate.model, **prompt_versions,
        "scale": job.config.scale.as_dicts(), "image_mode": job.config.images.mode}).map_batches(
        add_judge_context, batch_format="pyarrow", fn_kwargs={"context": run_judge_context(job.config)})
    people, keyed = by_people(job, keyed)
    votes = keyed.map_batches(explode_votes, batch_format="pyarrow", fn_kwargs={
        "models": [model for model, _ in judges], "samples": annotate.samples, **prompt_versions,
        "scale": job.config.scale.as_dicts(), "image_mode": job.config.images.mode})

    def with_guidelines(misses):
        if guidelines is not None:  # None: llm.guidelines.enabled false, the judge needs no guideline
            guideline_text = guidelines.select_columns(["query", "guideline", "error"]).rename_columns(
                {"error": "guideline_error"})
            misses = with_guideline(misses, guideline_text, job.parts)
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
        labels = votes.map_batches(**aggregate)
    else:
        labels = votes.groupby(PAIR, num_partitions=job.parts).map_groups(**aggregate)
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
    confidence = confidence_summary(job, labels, votes) if annotate.votes_per_pair > 1 else None
    write(labels, job.layout.labels, job.storage, "labels")
    return labels, counts, votes, confidence


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
