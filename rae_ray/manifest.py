"""The run manifest: config (no secrets), versions, counts, tokens, cost, timings, status."""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from typing import Any

from rae_ray.config import RunConfig, redacted
from rae_ray.llm.prompts import CAPTION_PROMPT_VERSION, GUIDELINE_PROMPT_VERSION, annotation_prompt_version

STAGES = ("guidelines", "captions", "annotate")


def usage_totals(ds) -> dict[str, int | float]:
    """Sums of a stage output's usage columns, in one pass over the dataset (zeros for None: a stage not run)."""
    from ray.data.aggregate import Count, Sum
    from ray.data.expressions import col

    if ds is None or ds.count() == 0:
        return {"rows": 0, "llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
                "seconds": 0.0, "cache_hits": 0}
    totals = ds.aggregate(
        Count(), Sum("llm_calls"), Sum("prompt_tokens"), Sum("completion_tokens"), Sum("cached_tokens"),
        Sum("seconds"),
    )
    cache_hits = ds.filter(expr=col("cache_hit") == True).count()  # noqa: E712
    return {
        "rows": int(totals["count()"]),
        "llm_calls": int(totals["sum(llm_calls)"] or 0),
        "prompt_tokens": int(totals["sum(prompt_tokens)"] or 0),
        "completion_tokens": int(totals["sum(completion_tokens)"] or 0),
        "cached_tokens": int(totals["sum(cached_tokens)"] or 0),
        "seconds": float(totals["sum(seconds)"] or 0.0),
        "cache_hits": cache_hits,
    }


def stage_cost(config: RunConfig, stage: str, usage: dict[str, Any]) -> float | None:
    """USD from the price table; None when the stage's model has no price. A judge panel's usage carries its
    judges' own costs (`by_model`, each None when that model has no price)."""
    if usage.get("by_model"):
        costs = [judge["cost_usd"] for judge in usage["by_model"].values()]
        return None if any(c is None for c in costs) else sum(costs)
    price = config.pricing.get(getattr(config.llm, stage).model)
    if price is None:
        return None
    batch = bool(getattr(getattr(config.llm, stage), "batch", False))
    return price.cost(usage["prompt_tokens"], usage["cached_tokens"], usage["completion_tokens"], batch=batch)


def versions(guidelines: bool = True, examples: bool = False) -> dict[str, str]:
    import openai
    import polars
    import pyarrow
    import ray

    from rae_ray import __version__

    return {
        "rae_ray": __version__, "ray": ray.__version__, "pyarrow": pyarrow.__version__, "polars": polars.__version__,
        "openai": openai.__version__, "python": platform.python_version(),
        "prompts": {"guidelines": GUIDELINE_PROMPT_VERSION if guidelines else None, "captions": CAPTION_PROMPT_VERSION,
                    "annotate": annotation_prompt_version(guidelines),
                    # llm.annotate.examples: the version of the judgements that showed people's examples
                    **({"annotate_examples": annotation_prompt_version(guidelines, examples=True)} if examples else {})},
    }


def build_manifest(
    *, config: RunConfig, run_id: str, root: str, started_at: datetime, counts: dict[str, int],
    stage_usage: dict[str, dict[str, Any]], error_counts: dict[str, int], seconds: dict[str, float],
    rankers: list[str], status: str, store: str | None = None, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Counts by stage cover every stage of this run (captions only when images.mode is caption)."""
    stages = [s for s in STAGES if s in stage_usage]
    costs = {stage: stage_cost(config, stage, stage_usage[stage]) for stage in stages}
    known = [c for c in costs.values() if c is not None]
    return {
        "run_id": run_id,
        "output": root,
        "status": status,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "rankers": rankers,
        "label_store": store,
        **counts,
        "llm_calls": {s: stage_usage[s]["llm_calls"] for s in stages},
        "cache_hits": {s: stage_usage[s]["cache_hits"] for s in stages},
        "errors": {s: error_counts.get(s, 0) for s in ("input", *(["images"] if extra and "images" in extra else []), *stages)},
        "tokens": {
            s: {k: stage_usage[s][f"{k}_tokens"] for k in ("prompt", "completion", "cached")} for s in stages
        },
        **(extra or {}),
        "cost_usd": {**{s: (round(c, 6) if c is not None else None) for s, c in costs.items()},
                     "total": round(sum(known), 6) if known else None},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": versions(config.llm.guidelines.enabled, config.llm.annotate.examples is not None),
        "config": redacted(config),
    }
