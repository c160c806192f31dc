"""The metrics step alone: metrics from any labels (human or LLM) and a search log, without Ray or an LLM."""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl
from pydantic import ValidationError

from rae_ray.config import HumanLabelsConfig, MetricsConfig
from rae_ray.evaluation import EvaluationResult, FrameSource, evaluate, segments_from_log
from rae_ray.io import InputError, RunLayout, Storage, resolve_uri
from rae_ray.label_files import judge_labels, load_human_labels, read_table
from rae_ray.metrics.evaluate import query_metrics
from rae_ray.outputs import write_evaluation
from rae_ray.report import write_report


@dataclass
class MetricsResult:
    root: str
    rankers: pl.DataFrame
    queries: pl.DataFrame
    evaluation: EvaluationResult | None = None
    report: str | None = None


def run_metrics(
    log_uri: str, labels_uri: str, label_column: str, grade_map: dict[int, int], out: str,
    ks: list[int] = (5, 10), k: int | None = None, top_grade: int | None = None, n_bootstrap: int = 1000, seed: int = 0,
    storage: Storage | None = None, *, n_permutations: int = 10000, baseline: str | None = None,
    adjust: str = "holm", worst_n: int = 10, human: HumanLabelsConfig | None = None, catalog_uri: str | None = None,
    report: bool = True,
) -> MetricsResult:
    """Metrics, comparisons, problems, agreement (when `human` is given), review queue, TREC files and report.html
    from a search log and any labels; reads OUT/manifest.json for the report when the folder holds a run."""
    storage = storage or Storage()
    log = read_table(log_uri, storage, "search log")
    for needed in ("query", "ranker", "rank", "product_id"):
        if needed not in log.columns:
            raise InputError(f"search log {log_uri}: missing column '{needed}'")
    cut = k or max(ks)
    run = log.select(
        pl.col("ranker").cast(pl.String), pl.col("query").cast(pl.String), pl.col("rank").cast(pl.Int64),
        pl.col("product_id").cast(pl.String),
    ).filter(pl.col("rank") <= cut)
    labels = judge_labels(read_table(labels_uri, storage, "labels"), label_column, grade_map, labels_uri)
    top = top_grade if top_grade is not None else int(labels["grade"].max())
    by_query = query_metrics(run, labels, ks=list(ks), top_grade=top)
    layout = RunLayout(resolve_uri(out))
    if baseline is not None and baseline not in set(run["ranker"].unique().to_list()):
        raise InputError(f"--baseline {baseline!r} is not a ranker of the log ({sorted(run['ranker'].unique())})")
    try:
        config = MetricsConfig(
            ks=list(ks), bootstrap=n_bootstrap, permutations=n_permutations, seed=seed, baseline=baseline,
            adjust=adjust, worst_n=worst_n,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(f"metrics settings: {problems}") from None
    products = None
    if catalog_uri is not None:
        products = read_table(catalog_uri, storage, "catalog")
        if "product_id" not in products.columns or "title" not in products.columns:
            raise InputError(f"catalog {catalog_uri}: needs columns 'product_id' and 'title'")
    elif "title" in log.columns:
        products = log.select("product_id", "title")
    human_labels = load_human_labels(human, storage) if human is not None else None
    manifest = json.loads(storage.read_bytes(layout.manifest)) if storage.exists(layout.manifest) else None
    grades = sorted(set(range(0, top + 1)))
    source = FrameSource(run, labels, products)
    result = evaluate(
        query_metrics=by_query, source=source, config=config, segments=segments_from_log(log), human=human_labels,
        grades=grades,
    )
    result = write_evaluation(result, source, storage, layout)
    report_uri = None
    if report:
        context = {"labels": labels_uri, "label_column": label_column, "log": log_uri, "human": human.uri if human else None}
        report_uri = write_report(result, manifest, storage, layout, context=context)
    return MetricsResult(root=layout.root, rankers=result.rankers, queries=by_query, evaluation=result, report=report_uri)
