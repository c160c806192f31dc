"""Evaluate: per-query metrics on Ray, then `evaluation.evaluate` on the small per-query table; a Ray-backed
source answers its questions about ranked lists and labels, and streams the TREC files a block at a time."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from rae_ray.evaluation import LABEL_SCHEMA, QRELS, RUN, RUN_SCHEMA, locale_segments
from rae_ray.evaluation import evaluate as evaluate_run
from rae_ray.label_files import load_human_labels
from rae_ray.labelstore.cached import LABEL_SPEC
from rae_ray.labelstore.human import scale_text
from rae_ray.metrics.evaluate import QUERY_METRICS_SCHEMA, query_metrics
from rae_ray.metrics.ideal import store_pool, with_stored_labels
from rae_ray.metrics.trec import qrels_lines, run_text
from rae_ray.outputs import write_evaluation
from rae_ray.runtime import Job, progress, to_polars
from rae_ray.steps.judge import run_judge_context
from rae_ray.steps.retrieve import Inputs, LogRows

# One query's ranked lists and labels travel together as rows of this layout: a ranked row has its rank and no
# grade; a label row (one per judged pair) has no ranker and no rank; a stored label row (metrics.ideal store:
# in the query's ideal pool, in no ranking) has no rank and the ranker STORED_ROWS.
STORED_ROWS = "\x00stored"
_GRADED = pa.schema([("ranker", pa.string()), ("query", pa.string()), ("rank", pa.int64()),
                     ("product_id", pa.string()), ("grade", pa.int16())])


def _as_graded(batch: pa.Table) -> pa.Table:
    """Ranked rows (ranker, query, rank, product_id) or label rows (query, product_id, grade) in `_GRADED`."""
    n = batch.num_rows
    columns = [batch.column(f.name).cast(f.type) if f.name in batch.column_names else pa.nulls(n, f.type)
               for f in _GRADED]
    return pa.Table.from_arrays(columns, schema=_GRADED)


def per_query_metrics(group: pa.Table, ks: list[int], top_grade: int) -> pa.Table:
    """Whole queries' ranked rows, label rows and stored label rows (`_GRADED`) -> their metric rows.

    The ideal pool of nDCG is every product of the query judged in this run (the union of the rankers' top k),
    plus the stored labels the group carries.
    """
    frame = pl.from_arrow(group)
    ranked = frame.filter(pl.col("rank").is_not_null())
    run = ranked.select("ranker", "query", "rank", "product_id")
    label_rows = frame.filter(pl.col("rank").is_null())
    # One label per pair of the query's ranked lists (a pair without a label row counts as unlabelled).
    labels = ranked.select("query", "product_id").unique().join(
        label_rows.filter(pl.col("ranker").is_null()).select("query", "product_id", "grade")
        .unique(subset=["query", "product_id"]), on=["query", "product_id"], how="left")
    stored = label_rows.filter(pl.col("ranker") == STORED_ROWS)
    if stored.height:
        labels = with_stored_labels(labels, stored)
    return query_metrics(run, labels, ks=ks, top_grade=top_grade).to_arrow()


def stored_labels(job: Job, labels) -> tuple[pl.DataFrame, dict]:
    """metrics.ideal store: the label store's grades of this run's queries under its judging context (one per
    query and product), and what the manifest says of them. Read with the store's pushdown; small (the run's
    queries only)."""
    context = run_judge_context(job.config)
    queries = to_polars(labels.groupby(["query", "query_key"], num_partitions=job.parts).count(),
                        schema={"query": pl.String, "query_key": pl.String, "count()": pl.Int64})
    keys = queries["query_key"].drop_nulls().unique().to_list()
    records = pl.from_arrow(job.store.records_for(
        LABEL_SPEC.store_kind, "query_key", keys, ["query_key", "product_id", "grade", "judge_context"]))
    pool = store_pool(queries, records, context)
    info = {"mode": "store", "judge_context": context, "store": job.store.uri, "stored_labels": pool.height,
            "queries_with_stored_labels": pool["query"].n_unique()}
    progress(f"metrics: nDCG's ideal from the label store: {pool.height} stored labels of "
             f"{info['queries_with_stored_labels']} queries under judging context {context}")
    return pool, info


class RayEvaluationSource:
    """Ranked lists and labels for the evaluation step, filtered on Ray: only the answer reaches the driver."""

    def __init__(self, selected, labels, pairs, parts: int = 1):
        self.parts = parts
        self.run = selected.select_columns(list(RUN_SCHEMA))
        # With votes also the label's confidence and its votes (the review queue lists the least confident first).
        carried = [c for c in ("product_hash", "source", "confidence", "votes") if c in labels.columns()]
        self.labels = labels.select_columns([*LABEL_SCHEMA, *carried])
        self.titles = pairs.select_columns(["query", "product_id", "title"]) if "title" in pairs.columns() else None

    def _with_titles(self, labels: pl.DataFrame, queries: list[str]) -> pl.DataFrame:
        if self.titles is None or labels.is_empty():
            return labels
        from ray.data.expressions import col

        titles = to_polars(self.titles.filter(expr=col("query").is_in(queries)),
                           schema={"query": pl.String, "product_id": pl.String, "title": pl.String})
        return labels.join(titles, on=["query", "product_id"], how="left")

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        from ray.data.expressions import col

        return to_polars(self.run.filter(expr=col("query").is_in(list(queries))), schema=RUN_SCHEMA)

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        from ray.data.expressions import col

        labels = to_polars(self.labels.filter(expr=col("query").is_in(list(queries))), schema=LABEL_SCHEMA)
        return self._with_titles(labels, list(queries))

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        keys = pairs.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        return self.labels_for(keys["query"].unique().to_list()).join(keys, on=["query", "product_id"], how="semi")

    def failed_labels(self, limit: int) -> pl.DataFrame:
        from ray.data.expressions import col

        return to_polars(self.labels.filter(expr=col("error").is_not_null()).limit(limit), schema=LABEL_SCHEMA)

    def least_confident(self, limit: int) -> pl.DataFrame:
        """The `limit` labels of lowest confidence below 1, least confident first (none without votes)."""
        from ray.data.expressions import col

        if "confidence" not in self.labels.columns():
            return pl.DataFrame(schema=LABEL_SCHEMA)
        low = to_polars(self.labels.filter(expr=col("confidence") < 1.0).sort("confidence").limit(limit),
                        schema=LABEL_SCHEMA)
        if low.is_empty():
            return low
        return self._with_titles(low, low["query"].unique().to_list()).sort("confidence", maintain_order=True)

    def trec_chunks(self, rankers: list[str]):
        """The lines are made on Ray, a block at a time (a run's lines per query, so rankings stay whole); the
        driver only streams each block's text into its file."""
        from ray.data.expressions import col

        qrels = self.labels.filter(expr=col("grade").is_not_null()).map_batches(
            _qrels_piece, batch_format="pyarrow", batch_size=None)
        # Sorted by query, a block holds whole queries (what map_groups relies on): one piece per ranker per block.
        runs = self.run.sort("query").map_batches(
            _run_pieces, batch_format="pyarrow", batch_size=None, fn_kwargs={"rankers": list(rankers)})
        for pieces in (qrels, runs):
            for batch in pieces.iter_batches(batch_format="pyarrow", batch_size=None):
                yield from zip(batch.column("file").to_pylist(), batch.column("text").to_pylist())


_PIECES = pa.schema([("file", pa.string()), ("text", pa.large_string())])


def _qrels_piece(batch: pa.Table) -> pa.Table:
    text = qrels_lines(pl.from_arrow(batch.select(["query", "product_id", "grade"])))
    return pa.Table.from_pylist([{"file": QRELS, "text": text}] if text else [], schema=_PIECES)


def _run_pieces(group: pa.Table, rankers: list[str]) -> pa.Table:
    frame = pl.from_arrow(group)
    present = set(frame["ranker"].to_list())
    rows = [{"file": RUN + ranker, "text": run_text(frame, ranker)} for ranker in rankers if ranker in present]
    return pa.Table.from_pylist(rows, schema=_PIECES)


def _join_pieces(batch: pa.Table) -> pa.Table:
    """One piece per file per block (map_groups makes one per query)."""
    joined = pl.from_arrow(batch).group_by("file", maintain_order=True).agg(pl.col("text").str.join(""))
    return joined.to_arrow().cast(_PIECES)


def evaluate(job: Job, inputs: Inputs, log: LogRows, pairs, labels, held_out: pl.DataFrame | None = None):
    """Per-query metrics on Ray; rankers, comparisons, segments, problems, agreement on the small per-query table.

    held_out: (query, product_id) pairs shown to the judge as people's examples, never scored for agreement."""
    from ray.data.expressions import col

    import ray

    config = job.config
    # Ranked rows and labels meet in the per-query groups (a sort shuffle: tasks), not in a hash join (whose
    # aggregator actors are new worker processes, each some CPU-seconds to start).
    graded = log.selected.select_columns(["ranker", "query", "rank", "product_id"]).map_batches(
        _as_graded, batch_format="pyarrow").union(
        labels.select_columns(["query", "product_id", "grade"]).map_batches(_as_graded, batch_format="pyarrow"))
    ideal = {"mode": config.metrics.ideal}
    if config.metrics.ideal == "store":
        pool, ideal = stored_labels(job, labels)
        if pool.height:
            rows = pool.with_columns(pl.lit(STORED_ROWS, pl.String).alias("ranker"),
                                     pl.lit(None, pl.Int64).alias("rank"))
            graded = graded.union(ray.data.from_arrow(_as_graded(rows.to_arrow())))
    # Sorted by query, a block holds whole queries (what map_groups relies on): one call per block, not per query.
    by_query = to_polars(
        graded.sort("query").map_batches(
            per_query_metrics, batch_format="pyarrow", batch_size=None,
            fn_kwargs={"ks": config.metrics.ks, "top_grade": config.scale.top_grade},
        ),
        schema=QUERY_METRICS_SCHEMA,
    ).sort("query", maintain_order=True)
    segments = log.segments
    if "locale" in inputs.columns:
        locales = to_polars(log.checked.filter(expr=col("input_error").is_null()).groupby(
            ["query", "locale"], num_partitions=job.parts).count())
        segments = pl.concat([s for s in (segments, locale_segments(locales)) if s is not None])
    human = load_human_labels(config.input.human_labels, job.storage) if config.input.human_labels else None
    source = RayEvaluationSource(log.selected, labels, pairs, job.parts)
    result = evaluate_run(query_metrics=by_query, source=source, config=config.metrics, segments=segments,
                          human=human, grades=[g.grade for g in config.scale.grades], ideal=ideal,
                          held_out=held_out, scale=scale_text(config.scale.as_dicts()))
    return write_evaluation(result, source, job.storage, job.layout)
