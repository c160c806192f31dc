"""`rae-ray estimate`: calls, tokens and cost of a run before any LLM call (a dry run on Ray Data).

It runs the job's own steps up to the pairs (same validation, sampling, dedup), looks every key up in the
label store, and prices only the misses (with votes, llm.annotate.samples or a panel, every pair is samples x
judges calls less the votes the store holds, each judge at its own price). Prompt tokens come from the prompts the job would build (about 4
characters a token); a reply's length is `expected_output_tokens` of the stage, else the mean of that model's
replies in the label store, else a default. A guideline not yet written is assumed to be as long as a
guideline reply. Cached tokens: all products of a query share the prompt prefix (instructions, query,
guideline), which a caching provider bills as cached after the query's first product.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from rae_ray.config import RunConfig
from rae_ray.labelstore.keys import add_label_keys
from rae_ray.llm.protocol import prompt_tokens
from rae_ray.llm.prompts import annotation_messages, annotation_prompt_version, guideline_messages
from rae_ray.manifest import stage_cost
from rae_ray.stages.annotate import product_for_prompt
from rae_ray.stages.votes import explode_votes

DEFAULT_OUTPUT_TOKENS = {"guidelines": 300, "captions": 120, "annotate": 80}


@dataclass
class StageEstimate:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    output_tokens_source: str = ""
    cost_usd: float | None = None


@dataclass
class Estimate:
    pairs_unique: int
    queries: int
    stages: dict[str, StageEstimate] = field(default_factory=dict)

    @property
    def cost_usd(self) -> float | None:
        costs = [s.cost_usd for s in self.stages.values()]
        return None if any(c is None for c in costs) else sum(costs)

    def as_dict(self) -> dict[str, Any]:
        return {"pairs_unique": self.pairs_unique, "queries": self.queries, "cost_usd": self.cost_usd,
                "stages": {name: vars(stage) for name, stage in self.stages.items()}}


def guideline_prompt_tokens(batch: pa.Table, scale: list[dict]) -> pa.Table:
    tokens = [prompt_tokens(guideline_messages(q, scale)) for q in batch.column("query").to_pylist()]
    return pa.table({"query": batch.column("query"), "prompt_tokens": pa.array(tokens, pa.int64())})


def annotation_prompt_tokens(batch: pa.Table, scale: list[dict], guideline_chars: int | None) -> pa.Table:
    """Per pair: the prompt's tokens and those of its shared prefix (everything before the product).

    guideline_chars None: guidelines are off, the prompt has no guideline.
    """
    placeholder = {"guideline": "x" * guideline_chars} if guideline_chars is not None else None
    totals, prefixes = [], []
    for row in batch.to_pylist():
        examples = json.loads(row["examples"]) if row.get("examples") else None  # llm.annotate.examples
        messages = annotation_messages(row["query"], placeholder, scale, product_for_prompt(row), examples=examples)
        totals.append(prompt_tokens(messages))
        shared = messages[1]["content"].split('<data name="product">')[0]
        prefixes.append(prompt_tokens([messages[0], {"content": shared}]))
    return pa.table({
        "query": batch.column("query"),
        "prompt_tokens": pa.array(totals, pa.int64()),
        "prefix_tokens": pa.array(prefixes, pa.int64()),
    })


def _output_tokens(job, stage: str, kind: str) -> tuple[int, str]:
    model = getattr(job.config.llm, stage)
    if model.expected_output_tokens is not None:
        return model.expected_output_tokens, "config"
    stored = job.store.mean_completion_tokens(kind, model.model) if job.store is not None else None
    if stored is not None:
        return round(stored), "label store"
    return DEFAULT_OUTPUT_TOKENS[stage], "default"


def _price(config: RunConfig, stage: str, estimate: StageEstimate, model: str | None = None) -> float | None:
    """What the run's manifest will charge for these tokens (the same price rule, `manifest.stage_cost`);
    `model`: a judge panel's member, at its own price."""
    if model is not None:
        price = config.pricing.get(model)
        return None if price is None else price.cost(estimate.prompt_tokens, estimate.cached_tokens,
                                                     estimate.completion_tokens, batch=config.llm.annotate.batch)
    return stage_cost(config, stage, {"prompt_tokens": estimate.prompt_tokens, "cached_tokens": estimate.cached_tokens,
                                      "completion_tokens": estimate.completion_tokens})


def estimate(config: RunConfig) -> Estimate:
    """Counts, tokens and cost of running `config`, without any LLM call."""
    from ray.data.aggregate import Count, Sum
    from ray.data.expressions import col

    from rae_ray.job import open_job
    from rae_ray.labelstore.cached import GUIDELINE_SPEC, LABEL_SPEC, lookup
    from rae_ray.runtime import ensure_ray, partitions
    from rae_ray.steps.examples import attach_examples, choose_examples
    from rae_ray.steps.judge import by_people
    from rae_ray.steps.retrieve import build_pairs, read_log

    if config.images.mode != "text":
        raise ValueError("rae-ray estimate covers images.mode 'text' only for now")
    job, inputs = open_job(config, check_endpoints=False)
    ensure_ray(config)
    log, counts = read_log(job, inputs)
    job = replace(job, parts=partitions(counts["rows_selected"], config))
    pairs, counts = build_pairs(job, inputs, log.selected)
    scale = config.scale.as_dicts()
    result = Estimate(pairs_unique=counts["pairs_unique"], queries=0)

    def misses_of(ds, spec):
        if job.store is None:
            return ds, 0
        hits, misses = lookup(job.store, ds, spec, job.parts)
        return misses, hits.count()

    from ray.data.aggregate import Max

    judgeable = pairs.filter(expr=col("pair_error").is_null())
    if config.llm.guidelines.enabled:
        queries = judgeable.groupby("query", num_partitions=job.parts).aggregate(
            Max("guideline_id", alias_name="guideline_id"))
        result.queries = queries.count()
        output, source = _output_tokens(job, "guidelines", "guidelines")
        missing, hits = misses_of(queries, GUIDELINE_SPEC)
        stage = StageEstimate(cache_hits=hits, output_tokens_source=source)
        sums = missing.map_batches(guideline_prompt_tokens, batch_format="pyarrow", fn_kwargs={"scale": scale}).aggregate(
            Count(), Sum("prompt_tokens"))
        stage.calls = int(sums["count()"] or 0)
        stage.prompt_tokens = int(sums["sum(prompt_tokens)"] or 0)
        stage.completion_tokens = stage.calls * output
        stage.cost_usd = _price(config, "guidelines", stage)
        guideline_chars = 4 * output
    else:  # llm.guidelines.enabled false: no guideline calls, and no guideline in the judge's prompt
        result.queries = judgeable.groupby("query", num_partitions=job.parts).count().count()
        stage = StageEstimate(output_tokens_source="off", cost_usd=0.0)
        guideline_chars = None
    result.stages["guidelines"] = stage

    annotate = config.llm.annotate
    examples = choose_examples(job, pairs)  # people's examples change the prompt and the label key
    prompt_versions = {"prompt_version": annotation_prompt_version(config.llm.guidelines.enabled),
                       "examples_prompt_version": annotation_prompt_version(config.llm.guidelines.enabled, examples=True)}
    keyed = attach_examples(job, judgeable, examples).map_batches(add_label_keys, batch_format="pyarrow", fn_kwargs={
        "model": annotate.model, **prompt_versions, "scale": scale, "image_mode": "text"})
    _, keyed = by_people(job, keyed)  # pairs people graded in review: no call
    # Every vote (judge x sample) of a pair is a call unless the store holds it (`stages.votes`).
    votes = keyed.map_batches(explode_votes, batch_format="pyarrow", fn_kwargs={
        "models": [model for model, _ in annotate.judges], "samples": annotate.samples, **prompt_versions,
        "scale": scale, "image_mode": "text"})
    output, source = _output_tokens(job, "annotate", "labels")
    missing, hits = misses_of(votes, LABEL_SPEC)
    stage = StageEstimate(cache_hits=hits, output_tokens_source=source)
    by_judge = {}
    for index, (model, _) in enumerate(annotate.judges):
        mine = missing if len(annotate.judges) == 1 else missing.filter(expr=col("vote_judge") == index)
        by_judge[model] = _judge_tokens(job, mine, scale, guideline_chars, output)
        for name in ("calls", "prompt_tokens", "cached_tokens", "completion_tokens"):
            setattr(stage, name, getattr(stage, name) + getattr(by_judge[model], name))
    if len(by_judge) == 1:
        stage.cost_usd = _price(config, "annotate", stage)
    else:  # a panel: each judge at its own price
        costs = [_price(config, "annotate", judge, model) for model, judge in by_judge.items()]
        stage.cost_usd = None if any(c is None for c in costs) else sum(costs)
    result.stages["annotate"] = stage
    return result


def _judge_tokens(job, missing, scale: list[dict], guideline_chars: int | None, output: int) -> StageEstimate:
    """Calls and tokens of one judge's votes not in the store; a query's first call pays its prefix in full."""
    from ray.data.aggregate import Count, Max, Sum

    tokens = missing.map_batches(annotation_prompt_tokens, batch_format="pyarrow",
                                 fn_kwargs={"scale": scale, "guideline_chars": guideline_chars}).materialize()
    stage = StageEstimate()
    sums = tokens.aggregate(Count(), Sum("prompt_tokens"), Sum("prefix_tokens"))
    stage.calls = int(sums["count()"] or 0)
    stage.prompt_tokens = int(sums["sum(prompt_tokens)"] or 0)
    if stage.calls:
        first_per_query = tokens.groupby("query", num_partitions=job.parts).aggregate(
            Max("prefix_tokens", alias_name="prefix")).sum("prefix")
        stage.cached_tokens = int(sums["sum(prefix_tokens)"] or 0) - int(first_per_query or 0)
    stage.completion_tokens = stage.calls * output
    return stage


def format_estimate(result: Estimate) -> str:
    lines = [f"{result.pairs_unique} unique pairs, {result.queries} queries (no LLM call was made)",
             f"{'stage':<12}{'calls':>8}{'store hits':>12}{'prompt tok':>12}{'cached tok':>12}{'output tok':>12}{'USD':>10}"]
    for name, stage in result.stages.items():
        cost = f"{stage.cost_usd:.4f}" if stage.cost_usd is not None else "n/a"
        lines.append(f"{name:<12}{stage.calls:>8}{stage.cache_hits:>12}{stage.prompt_tokens:>12}"
                     f"{stage.cached_tokens:>12}{stage.completion_tokens:>12}{cost:>10}")
    total = result.cost_usd
    lines.append(f"total cost: {'$%.4f' % total if total is not None else 'n/a (add the models to pricing)'}; "
                 "reply lengths from: " + ", ".join(f"{n} {s.output_tokens_source}" for n, s in result.stages.items()))
    return "\n".join(lines)


def estimate_json(result: Estimate) -> str:
    return json.dumps(result.as_dict(), indent=2)
