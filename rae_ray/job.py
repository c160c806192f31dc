"""The whole job, composed: validate -> retrieve -> images -> guidelines -> judge -> errors -> evaluate, then the
manifest and the report.

Each step lives in `steps/` and hands back its dataset and counts; the LLM steps run behind the label store
(`labelstore.cached`). When Ray loses a worker, node or object mid-run, the steps run again: what was judged is
in the store, so only the rest is sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import polars as pl

from rae_ray.config import RunConfig
from rae_ray.io import Storage, join_uri
from rae_ray.llm.client import FatalEndpointError
from rae_ray.manifest import build_manifest, usage_totals
from rae_ray.report import write_report
from rae_ray.runtime import (
    Job, ensure_ray, fatal_endpoint_error, llm_stages, lost_worker, make_job, needs_budget, partitions, progress,
    stage_config, stage_done, start_budget,
)
from rae_ray.stages.common import LLMStageConfig
from rae_ray.steps.errors import write_errors
from rae_ray.steps.evaluate import evaluate
from rae_ray.steps.examples import choose_examples
from rae_ray.steps.guidelines import write_guidelines
from rae_ray.steps.images import Images, attach_images, image_counts
from rae_ray.steps.judge import write_labels
from rae_ray.steps.retrieve import Inputs, build_pairs, read_log, validate


@dataclass
class RunResult:
    """What a finished run hands back to the CLI."""

    root: str
    manifest: dict[str, Any]
    rankers: pl.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)
    agreement: Any = None  # evaluation.AgreementTables when input.human_labels is set (its `matched` pairs: the sweep)


@dataclass
class Steps:
    """What the steps of one attempt produced."""

    images: Images
    labels: Any
    counts: dict[str, int]
    error_counts: dict[str, int]
    evaluation: Any
    stage_usage: dict[str, dict[str, Any]]
    confidence: dict[str, Any] | None = None  # the manifest's section, with votes (llm.annotate.samples, panel)


def timed(seconds: dict[str, float], name: str, started: float) -> float:
    """Add the time since `started` to `seconds[name]` (attempts add up); returns the total."""
    seconds[name] = seconds.get(name, 0.0) + time.monotonic() - started
    return seconds[name]


def open_job(config: RunConfig, storage: Storage | None = None, check_endpoints: bool = True) -> tuple[Job, Inputs]:
    """The run's checked inputs and its context, whose shuffles are sized by the log's rows (metadata only:
    nothing is read, nothing is sent)."""
    storage = storage or Storage(config.storage.s3_endpoint_url, config.storage.s3_region)
    inputs = validate(config, storage, check_endpoints=check_endpoints)
    return make_job(config, storage, log_rows=inputs.log_rows), inputs


def prepare_run_folder(job: Job) -> None:
    """A run id that exists already is resumed: its earlier outputs are replaced (the store keeps its labels)."""
    if not job.storage.exists(job.layout.root):
        return
    progress(f"run folder {job.layout.root} exists: resuming (reusing the label store, replacing its outputs)")
    for folder in ("labels", "guidelines", "captions", "errors", "metrics", "agreement", "review", "trec"):
        job.storage.delete_folder(job.layout.path(folder))


def _steps(job: Job, inputs: Inputs, stage_configs: dict[str, LLMStageConfig], seconds: dict[str, float]) -> Steps:
    """Every step after validation: read, pair, images, guidelines, annotation, errors, metrics."""
    prepare_run_folder(job)
    counts: dict[str, int] = {}

    t = time.monotonic()
    log, step_counts = read_log(job, inputs)
    counts.update(step_counts)
    job = replace(job, parts=partitions(counts["rows_selected"], job.config))  # shuffles of the selected rows
    pairs, step_counts = build_pairs(job, inputs, log.selected)
    counts.update(step_counts)
    timed(seconds, "prepare", t)

    t = time.monotonic()
    pairs, images, step_counts = attach_images(job, pairs, stage_configs.get("captions"))
    counts.update(step_counts)
    if images.fetched is not None:
        timed(seconds, "images", t)
    stage_done("captions")

    t = time.monotonic()
    guidelines, step_counts = write_guidelines(job, pairs, stage_configs.get("guidelines"))
    counts.update(step_counts)
    progress(f"guidelines: {counts['queries']} queries in {timed(seconds, 'guidelines', t):.1f}s"
             + ("" if guidelines is not None else " (off: llm.guidelines.enabled false)"))
    stage_done("guidelines")

    t = time.monotonic()
    examples = choose_examples(job, pairs)  # None without llm.annotate.examples
    labels, step_counts, votes, confidence = write_labels(job, pairs, guidelines, images,
                                                           stage_configs["annotate"], examples)
    counts.update(step_counts)
    progress(f"annotate: {counts['pairs_unique']} pairs in {timed(seconds, 'annotate', t):.1f}s")
    stage_done("annotate")

    error_counts = write_errors(job, log.checked, guidelines, labels, images)

    t = time.monotonic()
    evaluation = evaluate(job, inputs, log, pairs, labels, held_out=examples.pairs if examples else None)
    timed(seconds, "metrics", t)

    # Annotation is counted by vote (a pair judged 3 times is 3 calls, or 3 store hits); a panel is priced by judge.
    stage_usage = {"guidelines": usage_totals(guidelines), "annotate": usage_totals(votes)}
    if confidence is not None:
        stage_usage["annotate"]["by_model"] = confidence["judges"]
    if images.captioned is not None:
        stage_usage["captions"] = usage_totals(images.captioned)
    return Steps(images=images, labels=labels, counts=counts, error_counts=error_counts, evaluation=evaluation,
                 stage_usage=stage_usage, confidence=confidence)


def run(config: RunConfig, storage: Storage | None = None) -> RunResult:
    """Run the whole job; returns where it wrote and what it measured."""
    import ray

    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    seconds: dict[str, float] = {}
    attempts_failed: list[str] = []

    t = time.monotonic()
    job, inputs = open_job(config, storage)
    timed(seconds, "validate", t)
    progress(f"output: {job.layout.root}" + (f"; label store: {job.store.uri}" if job.store else ""))
    ensure_ray(config)
    # No limit to keep: no budget actor (a worker process of its own) and no call to it.
    budget, budget_handle = start_budget(config, job.run_id) if needs_budget(config) else (None, None)
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
                done = _steps(job, inputs, stage_configs, seconds)
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
                attempts_failed.append(lost)
        budget_state = ray.get(budget_handle.state.remote()) if budget_handle is not None else {}
    finally:
        if budget_handle is not None:
            ray.kill(budget_handle)
    by_ranker = done.evaluation.rankers
    seconds["total"] = time.monotonic() - started
    status = "succeeded"
    if budget_state.get("stopped"):
        status = "stopped_at_cost_limit"
        progress(f"stopped sending at max_cost_usd={config.max_cost_usd}: the pairs not sent are in errors/")
    manifest = build_manifest(
        config=config, run_id=job.run_id, root=job.layout.root, started_at=started_at, counts=done.counts,
        stage_usage=done.stage_usage, error_counts=done.error_counts, seconds=seconds,
        rankers=sorted(by_ranker["ranker"].unique().to_list()) if by_ranker.height else [],
        status=status, store=job.store.uri if job.store else None,
        extra={**image_counts(done.images, done.labels),
               # llm_calls and tokens count the last attempt; the calls of failed attempts are in the store.
               "attempts": 1 + len(attempts_failed), "attempts_failed": attempts_failed,
               "ideal": done.evaluation.ideal,
               **({"confidence": done.confidence} if done.confidence is not None else {})},
    )
    job.storage.write_json(job.layout.manifest, manifest)
    write_report(done.evaluation, manifest, job.storage, job.layout)
    return RunResult(root=job.layout.root, manifest=manifest, rankers=by_ranker, seconds=seconds,
                     agreement=done.evaluation.agreement)


__all__ = ["RunResult", "run", "open_job", "ensure_ray", "FatalEndpointError"]
