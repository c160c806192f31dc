"""Write what `evaluate` returned into the run folder (through `Storage`, so s3:// works):

    metrics/rankers.parquet, queries.parquet, comparisons.parquet, segments.parquet, worst_queries.parquet,
            regressions.parquet
    agreement/<table>.parquet   when human labels were given (summary, confusion, per_grade, hard_disagreements,
                                rankers, system, coverage)
    review/queue.parquet, queue.csv
    trec/...                    from the source, a piece at a time (`outputs.trec`)
"""

from __future__ import annotations

import dataclasses
import io

import polars as pl

from rae_ray.evaluation import EvaluationResult, EvaluationSource
from rae_ray.io import RunLayout, Storage
from rae_ray.outputs.trec import write_trec

__all__ = ["evaluation_tables", "write_evaluation", "write_tables"]


def evaluation_tables(result: EvaluationResult) -> dict[str, pl.DataFrame]:
    """Every Parquet table of the result by its path in the run folder."""
    tables = {
        "metrics/rankers.parquet": result.rankers,
        "metrics/queries.parquet": result.queries,
        "metrics/comparisons.parquet": result.comparisons,
        "metrics/segments.parquet": result.segments,
        "metrics/worst_queries.parquet": result.worst_queries,
        "metrics/regressions.parquet": result.regressions,
    }
    if result.agreement is not None:
        tables.update({f"agreement/{name}.parquet": frame for name, frame in result.agreement.frames().items()})
    tables["review/queue.parquet"] = result.review_queue
    return tables


def write_tables(result: EvaluationResult, storage: Storage, layout: RunLayout) -> dict[str, str]:
    """The Parquet tables and review/queue.csv; returns {relative path: URI}."""
    written = {}
    for relative, frame in evaluation_tables(result).items():
        written[relative] = layout.path(*relative.split("/"))
        storage.write_table(written[relative], frame.to_arrow())
    buffer = io.BytesIO()
    result.review_queue.write_csv(buffer)
    written["review/queue.csv"] = layout.path("review", "queue.csv")
    storage.write_bytes(written["review/queue.csv"], buffer.getvalue())
    return written


def write_evaluation(
    result: EvaluationResult, source: EvaluationSource, storage: Storage, layout: RunLayout
) -> EvaluationResult:
    """Tables and TREC files of an evaluation; returns the result with `root` and `files` set."""
    written = write_tables(result, storage, layout)
    trec = write_trec(source, result.queries["query"].unique().to_list(), result.ranker_names, storage, layout)
    written.update({f"trec/{name}": uri for name, uri in trec.items()})
    return dataclasses.replace(result, root=layout.root, files=written)
