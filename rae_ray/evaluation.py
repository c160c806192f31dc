"""Evaluate: everything after per-query metrics, for the Ray job and the offline `rae-ray metrics` alike.

From per-query scores and a source of ranked lists and judge labels, `evaluate` writes (via `Storage`, so s3://
works) under the run folder:

    metrics/rankers.parquet      ranker, metric, k, value, ci_low, ci_high, n_queries (bootstrap over queries)
    metrics/queries.parquet      ranker, query, metric, k, value
    metrics/comparisons.parquet  paired deltas, bootstrap CI, randomization p-value, Holm-adjusted, wins/ties/losses
    metrics/segments.parquet     per segment (traffic head/torso/tail, locale) and ranker
    metrics/worst_queries.parquet  worst queries per ranker (share irrelevant@k) with the offending products
    metrics/regressions.parquet  largest per-query nDCG@k drops against the baseline, with the products that cause them
    agreement/*.parquet          judge vs human (and human vs human) when human labels are given
    review/queue.parquet, .csv   pairs for human review, most doubtful first
    trec/qrels.txt, trec/<ranker>.run   for trec_eval, ir_measures, ranx

Only the queries and pairs a table needs are asked of the source, so a Ray-backed source never hands the whole
log to the driver (except for the TREC files, which are fetched in chunks of queries).

Review queue priority (lower first; a pair appears once, under its first reason):
    1 hard_disagreement  judge and human grades two or more grades apart
    2 disagreement       one grade apart (within it, pairs where more individual raters differ from the judge first)
    3 stage_error        the judge gave no grade (the label row carries an error)
    4 boundary           the judge gave a middle grade (neither the lowest nor the top one, e.g. "acceptable
                         substitute": where judges and people disagree most) to a product that a reported finding
                         rests on: the top k of a worst query or of a regression
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import polars as pl

from rae_ray.config import HumanLabelsConfig, MetricsConfig
from rae_ray.io import InputError, RunLayout, Storage
from rae_ray.metrics.agreement import RATER_AGREEMENT_SCHEMA, agreement, kendall_tau
from rae_ray.metrics.compare import compare_rankers
from rae_ray.metrics.evaluate import (
    QUERY_METRICS_SCHEMA,
    SEGMENT_METRICS_SCHEMA,
    query_metrics as compute_query_metrics,
    ranker_metrics,
    require_columns,
    segment_metrics,
    traffic_segments,
    worst_queries,
)
from rae_ray.metrics.trec import qrels_text, query_ids, run_text

__all__ = [
    "LABEL_SCHEMA",
    "RUN_SCHEMA",
    "AgreementTables",
    "EvaluationResult",
    "EvaluationSource",
    "FrameSource",
    "HumanLabels",
    "SIMULATED_MARK",
    "agreement_tables",
    "conform_labels",
    "evaluate",
    "load_human_labels",
    "locale_segments",
    "problem_queries",
    "regression_pairs",
    "regression_queries",
    "regressions",
    "review_queue",
    "safe_name",
    "segments_from_log",
    "write_trec",
]

SIMULATED_MARK = "[simulated judge]"

RUN_SCHEMA = {"ranker": pl.String, "query": pl.String, "rank": pl.Int64, "product_id": pl.String}
LABEL_SCHEMA = {
    "query": pl.String,
    "product_id": pl.String,
    "grade": pl.Int64,
    "label": pl.String,
    "reasoning": pl.String,
    "error": pl.String,
}
OPTIONAL_LABEL_COLUMNS = {"title": pl.String}  # carried through when the source has it

WORST_SCHEMA = {
    "ranker": pl.String, "position": pl.Int64, "query": pl.String, "k": pl.Int32,
    "share_irrelevant": pl.Float64, "ndcg": pl.Float64, "rank": pl.Int64, "product_id": pl.String,
    "title": pl.String, "grade": pl.Int64, "label": pl.String, "reasoning": pl.String, "error": pl.String,
}  # fmt: skip
REGRESSION_SCHEMA = {
    "ranker": pl.String, "baseline": pl.String, "position": pl.Int64, "query": pl.String, "metric": pl.String,
    "k": pl.Int32, "value": pl.Float64, "baseline_value": pl.Float64, "delta": pl.Float64, "change": pl.String,
    "product_id": pl.String, "title": pl.String, "rank": pl.Int64, "baseline_rank": pl.Int64, "grade": pl.Int64,
    "label": pl.String, "reasoning": pl.String, "error": pl.String,
}  # fmt: skip
REVIEW_SCHEMA = {
    "priority": pl.Int64, "review_reason": pl.String, "query": pl.String, "product_id": pl.String,
    "title": pl.String, "judge_grade": pl.Int64, "judge_label": pl.String, "reasoning": pl.String,
    "error": pl.String, "known_human_grade": pl.Int64, "human_grade": pl.Int64, "reviewer_note": pl.String,
}  # fmt: skip
AGREEMENT_SUMMARY_SCHEMA = {"kind": pl.String, **RATER_AGREEMENT_SCHEMA}
REVIEW_REASONS = {"hard_disagreement": 1, "disagreement": 2, "stage_error": 3, "boundary": 4}
CHANGE_ORDER = {"added_irrelevant": 0, "promoted_irrelevant": 1, "dropped_relevant": 2, "reordered": 3}


# --- where ranked lists and labels come from ---------------------------------------------------------------


class EvaluationSource(Protocol):
    """Ranked lists and judge labels, asked for by query or by pair (a Ray-backed source filters its datasets).

    Label frames have LABEL_SCHEMA's columns (query, product_id, grade, label, reasoning, error; grade null when
    the judge gave none) and may add `title`.
    """

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        """ranker, query, rank, product_id of those queries only."""
        ...

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        """Judge labels of every pair of those queries."""
        ...

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """Judge labels of the given (query, product_id) pairs (pairs the judge never saw are absent)."""
        ...

    def failed_labels(self, limit: int) -> pl.DataFrame:
        """At most `limit` label rows whose error is set."""
        ...

    def trec_chunks(self, rankers: Sequence[str]) -> Iterator[tuple[str, str]]:
        """TREC text in pieces, each (file, lines): file "qrels" (judge labels, relevance 2**g - 1) or "run:" +
        a ranker's name (its run). A query's lines of one file come in one piece; pieces come in no set order."""
        ...


def conform_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """LABEL_SCHEMA columns (missing optional ones as null) plus `title` when present, one row per pair."""
    require_columns(labels, "labels", ("query", "product_id", "grade"))
    columns = [
        (pl.col(name) if name in labels.columns else pl.lit(None)).cast(dtype).alias(name)
        for name, dtype in {**LABEL_SCHEMA, **OPTIONAL_LABEL_COLUMNS}.items()
        if name in LABEL_SCHEMA or name in labels.columns
    ]
    return labels.select(columns).unique(subset=["query", "product_id"], keep="first", maintain_order=True)


def _empty_labels() -> pl.DataFrame:
    return pl.DataFrame(schema=LABEL_SCHEMA)


class FrameSource:
    """An `EvaluationSource` over in-memory frames: run (ranker, query, rank, product_id) and labels.

    `products` (product_id, title), when given, supplies titles the labels lack.
    """

    def __init__(self, run: pl.DataFrame, labels: pl.DataFrame, products: pl.DataFrame | None = None):
        require_columns(run, "run", tuple(RUN_SCHEMA))
        self.run = run.select(pl.col(name).cast(dtype) for name, dtype in RUN_SCHEMA.items())
        labels = conform_labels(labels)
        if products is not None and "title" not in labels.columns:
            require_columns(products, "products", ("product_id", "title"))
            titles = products.select(pl.col("product_id").cast(pl.String), pl.col("title").cast(pl.String)).unique(
                subset=["product_id"], keep="first"
            )
            labels = labels.join(titles, on="product_id", how="left", maintain_order="left")
        self.labels = labels

    def ranked_lists(self, queries: list[str]) -> pl.DataFrame:
        return self.run.filter(pl.col("query").is_in(list(queries)))

    def labels_for(self, queries: list[str]) -> pl.DataFrame:
        return self.labels.filter(pl.col("query").is_in(list(queries)))

    def labels_matching(self, pairs: pl.DataFrame) -> pl.DataFrame:
        keys = pairs.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        return self.labels.join(keys, on=["query", "product_id"], how="semi", maintain_order="left")

    def failed_labels(self, limit: int) -> pl.DataFrame:
        return self.labels.filter(pl.col("error").is_not_null()).head(limit)

    def trec_chunks(self, rankers: Sequence[str], chunk: int = 10000) -> Iterator[tuple[str, str]]:
        queries = sorted(set(self.run["query"].to_list()))  # labels of queries no ranker answered are left out
        for start in range(0, len(queries), chunk):
            part = queries[start : start + chunk]
            yield QRELS, qrels_lines(self.labels_for(part))
            ranked = self.ranked_lists(part)
            present = set(ranked["ranker"].unique().to_list())
            for ranker in rankers:
                if ranker in present:
                    yield RUN + ranker, run_text(ranked, ranker)


# --- human labels -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HumanLabels:
    """Human grades on the project's scale: frame with query, product_id, grade and the rater columns (graded)."""

    frame: pl.DataFrame
    rater_columns: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        require_columns(self.frame, "human labels", ("query", "product_id", "grade", *self.rater_columns))


def load_human_labels(config: HumanLabelsConfig, storage: Storage | None = None) -> HumanLabels:
    """Read human labels (Parquet/CSV, local or s3://) and map the label and rater columns through grade_map."""
    from rae_ray.offline import map_label_columns, read_table

    storage = storage or Storage()
    raw = read_table(config.uri, storage, "human labels")
    columns = [config.column, *[c for c in config.rater_columns if c != config.column]]
    mapped = map_label_columns(raw, columns, dict(config.grade_map), config.uri)
    frame = mapped.rename({config.column: "grade"})
    raters = tuple("grade" if c == config.column else c for c in config.rater_columns)
    return HumanLabels(frame=frame, rater_columns=raters, source=config.uri)


# --- segments -----------------------------------------------------------------------------------------------


def locale_segments(query_locales: pl.DataFrame) -> pl.DataFrame:
    """(query, locale) rows -> segment rows (query, "locale", locale); a query in several locales is in each."""
    require_columns(query_locales, "query_locales", ("query", "locale"))
    return query_locales.select(
        pl.col("query").cast(pl.String), pl.lit("locale").alias("segment_type"), pl.col("locale").cast(pl.String).alias("segment")
    ).drop_nulls().unique().sort("segment", "query")


def segments_from_log(log: pl.DataFrame, head: float = 0.2, torso: float = 0.3) -> pl.DataFrame | None:
    """Traffic segments from `query_count` and locale segments from `locale`, where the log has them."""
    parts = []
    if "query_count" in log.columns:
        counts = log.group_by(pl.col("query").cast(pl.String)).agg(pl.col("query_count").max())
        parts.append(traffic_segments(counts, head, torso))
    if "locale" in log.columns:
        parts.append(locale_segments(log.select("query", "locale")))
    return pl.concat(parts) if parts else None


# --- problem discovery --------------------------------------------------------------------------------------


def _irrelevant(grade: pl.Expr) -> pl.Expr:
    """Grade 0, or no grade (gain 0 in every metric)."""
    return grade.is_null() | (grade <= 0)


def problem_queries(
    query_metrics: pl.DataFrame, ranked: pl.DataFrame, labels: pl.DataFrame, k: int, n: int
) -> pl.DataFrame:
    """The n worst queries per ranker by share irrelevant@k (ties: lower nDCG@k first), with their offending
    products: the top-k products judged irrelevant or left without a grade. A worst query whose top k has no
    such product keeps one row with null product columns. Columns: WORST_SCHEMA."""
    worst = worst_queries(query_metrics, "share_irrelevant", k, n, tie_metric="ndcg")
    if worst.height == 0:
        return pl.DataFrame(schema=WORST_SCHEMA)
    ndcg = query_metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == k)).select(
        "ranker", "query", pl.col("value").alias("ndcg")
    )
    top = _top_k(ranked, k).join(worst.select("ranker", "query"), on=["ranker", "query"], how="semi")
    offending = top.join(labels, on=["query", "product_id"], how="left").filter(_irrelevant(pl.col("grade")))
    table = (
        worst.select("ranker", "position", "query", "k", pl.col("value").alias("share_irrelevant"))
        .join(ndcg, on=["ranker", "query"], how="left")
        .join(offending, on=["ranker", "query"], how="left")
        .sort("ranker", "position", "rank", nulls_last=True)
    )
    return _conform(table, WORST_SCHEMA)


def _top_k(ranked: pl.DataFrame, k: int) -> pl.DataFrame:
    """Each ranking sorted by rank (ties by product_id) and renumbered 1..n, cut at k (as the metrics see it)."""
    return (
        ranked.select(pl.col(name).cast(dtype) for name, dtype in RUN_SCHEMA.items())
        .sort("ranker", "query", "rank", "product_id")
        .with_columns((pl.int_range(pl.len()).over("ranker", "query") + 1).cast(pl.Int64).alias("rank"))
        .filter(pl.col("rank") <= k)
    )


def _conform(table: pl.DataFrame, schema: dict) -> pl.DataFrame:
    return table.select(
        (pl.col(name) if name in table.columns else pl.lit(None)).cast(dtype).alias(name) for name, dtype in schema.items()
    )


def regression_pairs(rankers: Sequence[str], baseline: str | None) -> list[tuple[str, str]]:
    """(ranker, against): every other ranker against the baseline, or without one every ordered pair."""
    rankers = sorted(rankers)
    if baseline is not None:
        return [(r, baseline) for r in rankers if r != baseline]
    return [(a, b) for a in rankers for b in rankers if a != b]


def regression_queries(
    query_metrics: pl.DataFrame, pairs: Sequence[tuple[str, str]], k: int, n: int, metric: str = "ndcg"
) -> pl.DataFrame:
    """Per (ranker, baseline) the n queries where metric@k drops most (delta = ranker - baseline < 0)."""
    at_k = query_metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k)).select("ranker", "query", "value")
    parts = []
    for ranker, baseline in pairs:
        mine = at_k.filter(pl.col("ranker") == ranker)
        theirs = at_k.filter(pl.col("ranker") == baseline).select("query", pl.col("value").alias("baseline_value"))
        parts.append(
            mine.join(theirs, on="query", how="inner")
            .with_columns(pl.lit(baseline).alias("baseline"), (pl.col("value") - pl.col("baseline_value")).alias("delta"))
            .filter(pl.col("delta") < -1e-12)
            .sort("delta", "query")
            .head(n)
            .with_columns((pl.int_range(pl.len()) + 1).cast(pl.Int64).alias("position"))
        )
    schema = {"ranker": pl.String, "baseline": pl.String, "position": pl.Int64, "query": pl.String,
              "value": pl.Float64, "baseline_value": pl.Float64, "delta": pl.Float64}  # fmt: skip
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat([p.select(list(schema)) for p in parts]).with_columns(
        pl.lit(metric).alias("metric"), pl.lit(k, dtype=pl.Int32).alias("k")
    )


def regressions(
    query_metrics: pl.DataFrame, ranked: pl.DataFrame, labels: pl.DataFrame, pairs: Sequence[tuple[str, str]],
    k: int, n: int,
) -> pl.DataFrame:
    """The largest per-query nDCG@k regressions of each ranker against its baseline, with the products behind them.

    `change` says what a product did: added_irrelevant (in the ranker's top k, not the baseline's, grade 0 or
    none), promoted_irrelevant (in both, ranked higher by the ranker), dropped_relevant (grade >= 1 in the
    baseline's top k, missing from the ranker's). A regression from reordering relevant products alone keeps
    one row with change "reordered" and no product. Columns: REGRESSION_SCHEMA.
    """
    worst = regression_queries(query_metrics, pairs, k, n)
    if worst.height == 0:
        return pl.DataFrame(schema=REGRESSION_SCHEMA)
    top = _top_k(ranked, k)
    keys = worst.select("ranker", "baseline", "query")
    mine = keys.join(top.select("ranker", "query", "product_id", "rank"), on=["ranker", "query"], how="inner")
    theirs = keys.join(
        top.select(pl.col("ranker").alias("baseline"), "query", "product_id", pl.col("rank").alias("baseline_rank")),
        on=["baseline", "query"], how="inner",
    )
    products = mine.join(
        theirs, on=["ranker", "baseline", "query", "product_id"], how="full", coalesce=True
    ).join(labels, on=["query", "product_id"], how="left")
    irrelevant = _irrelevant(pl.col("grade"))
    change = (
        pl.when(pl.col("baseline_rank").is_null() & irrelevant).then(pl.lit("added_irrelevant"))
        .when(pl.col("rank").is_not_null() & (pl.col("rank") < pl.col("baseline_rank")) & irrelevant)
        .then(pl.lit("promoted_irrelevant"))
        .when(pl.col("rank").is_null() & ~irrelevant).then(pl.lit("dropped_relevant"))
        .otherwise(None)
    )
    products = products.with_columns(change.alias("change")).filter(pl.col("change").is_not_null())
    table = worst.join(products, on=["ranker", "baseline", "query"], how="left").with_columns(
        pl.col("change").fill_null("reordered"),
    )
    table = table.with_columns(pl.col("change").replace_strict(CHANGE_ORDER, return_dtype=pl.Int64).alias("_order"))
    table = table.sort("ranker", "baseline", "position", "_order", "rank", "baseline_rank", nulls_last=True)
    return _conform(table, REGRESSION_SCHEMA)


# --- agreement with people ----------------------------------------------------------------------------------


@dataclass
class AgreementTables:
    """Judge vs human: summary rows (kind judge_vs_human, judge_vs_rater, human_vs_human), confusion (judge rows,
    human columns, long form), per-grade precision/recall of the judge, hard disagreements, the rankers' nDCG
    under each set of labels and Kendall's tau between the two orders, and coverage counts."""

    summary: pl.DataFrame
    confusion: pl.DataFrame
    per_grade: pl.DataFrame
    hard_disagreements: pl.DataFrame
    rankers: pl.DataFrame
    system: pl.DataFrame
    coverage: dict[str, int]
    matched: pl.DataFrame  # every human-labelled pair with the judge's label (judge_grade null if none)

    def frames(self) -> dict[str, pl.DataFrame]:
        coverage = pl.DataFrame({name: [value] for name, value in self.coverage.items()})
        return {
            "summary": self.summary, "confusion": self.confusion, "per_grade": self.per_grade,
            "hard_disagreements": self.hard_disagreements, "rankers": self.rankers, "system": self.system,
            "coverage": coverage,
        }  # fmt: skip


def _summary_row(kind: str, a: str, b: str, result: dict) -> dict:
    return {"kind": kind, "rater_a": a, "rater_b": b, **{n: result[n] for n in ("n", "exact", "cohen_kappa", "quadratic_weighted_kappa")}}


def _pair_agreement(frame: pl.DataFrame, col_a: str, col_b: str, grades: Sequence[int]) -> dict:
    both = frame.select(pl.col(col_a).cast(pl.Float64), pl.col(col_b).cast(pl.Float64)).drop_nulls()
    return agreement(both[col_a].to_numpy(), both[col_b].to_numpy(), grades)


def agreement_tables(
    human: HumanLabels,
    judge_labels: pl.DataFrame,
    judge_query_metrics: pl.DataFrame,
    ranked: pl.DataFrame,
    grades: Sequence[int] = (0, 1, 2),
    k: int = 10,
) -> AgreementTables:
    """Agreement of the judge with people, and of people with each other, on the pairs both labelled.

    judge_labels: the judge's labels of the human-labelled pairs; ranked: the ranked lists of the human-labelled
    queries (to score the rankers with human labels); judge_query_metrics: the run's per-query scores (restricted
    here to the human-labelled queries, so both orders of the rankers rest on the same queries).
    """
    grades = sorted(grades)
    raters = list(human.rater_columns)
    people = human.frame.select(
        pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), pl.col("grade").cast(pl.Int64).alias("human_grade"),
        *[pl.col(c).cast(pl.Int64) for c in raters if c != "grade"],
    ).unique(subset=["query", "product_id"], keep="first", maintain_order=True)
    judge = conform_labels(judge_labels).rename({"grade": "judge_grade"})
    human_name = f"human labels {human.source}".strip()
    for who, frame, columns in ((human_name, people, ["human_grade", *[c for c in raters if c != "grade"]]),
                                ("judge labels", judge, ["judge_grade"])):
        for column in columns:
            off_scale = sorted(set(frame[column].drop_nulls().to_list()) - set(grades))
            if off_scale:
                what = "the label column" if column in ("human_grade", "judge_grade") else f"column '{column}'"
                raise InputError(
                    f"{who}: {what} has grades {off_scale[:10]} outside the scale {grades}; "
                    "map them onto it (human_labels.grade_map, or --human-grade-map / --grade-map)"
                )
    matched = people.join(judge, on=["query", "product_id"], how="left", maintain_order="left")
    rater_view = {c: ("human_grade" if c == "grade" else c) for c in raters}

    rows = [_summary_row("judge_vs_human", "judge", "human", main := _pair_agreement(matched, "judge_grade", "human_grade", grades))]
    for rater in raters:
        if rater == "grade":
            continue
        rows.append(_summary_row("judge_vs_rater", "judge", rater, _pair_agreement(matched, "judge_grade", rater, grades)))
    for i, a in enumerate(raters):
        for b in raters[i + 1 :]:
            rows.append(_summary_row("human_vs_human", a, b, _pair_agreement(matched, rater_view[a], rater_view[b], grades)))
    summary = pl.DataFrame(rows, schema=AGREEMENT_SUMMARY_SCHEMA, orient="row")

    confusion = pl.DataFrame(
        [(g_judge, g_human, main["confusion"][i][j]) for i, g_judge in enumerate(grades) for j, g_human in enumerate(grades)],
        schema={"judge_grade": pl.Int64, "human_grade": pl.Int64, "n": pl.Int64}, orient="row",
    )
    per_grade = pl.DataFrame(
        [(g, v["precision"], v["recall"], v["n_a"], v["n_b"]) for g, v in main["per_grade"].items()],
        schema={"grade": pl.Int64, "precision": pl.Float64, "recall": pl.Float64, "n_judge": pl.Int64, "n_human": pl.Int64},
        orient="row",
    )
    distance = (pl.col("judge_grade") - pl.col("human_grade")).abs()
    hard = (
        matched.with_columns(distance.alias("distance"))
        .filter(pl.col("distance") >= 2)
        .sort(["distance", "query", "product_id"], descending=[True, False, False])
        .select("query", "product_id", *(["title"] if "title" in matched.columns else []), "judge_grade",
                "human_grade", "distance", "label", "reasoning", *[c for c in raters if c != "grade"])
    )

    queries = people["query"].unique().to_list()
    human_metrics = compute_query_metrics(
        ranked.filter(pl.col("query").is_in(queries)), people.select("query", "product_id", pl.col("human_grade").alias("grade")),
        ks=[k], top_grade=max(grades), metrics=["ndcg"],
    )
    judge_metrics = judge_query_metrics.filter(
        (pl.col("metric") == "ndcg") & (pl.col("k") == k) & pl.col("query").is_in(queries)
    )
    by_judge = judge_metrics.group_by("ranker").agg(pl.col("value").mean().alias("judge_value"), pl.len().alias("n_queries_judge"))
    by_human = human_metrics.group_by("ranker").agg(pl.col("value").mean().alias("human_value"), pl.len().alias("n_queries_human"))
    rankers = (
        by_judge.join(by_human, on="ranker", how="full", coalesce=True)
        .with_columns(
            pl.lit("ndcg").alias("metric"), pl.lit(k, dtype=pl.Int32).alias("k"),
            pl.col("judge_value").rank("min", descending=True).cast(pl.Int64).alias("judge_rank"),
            pl.col("human_value").rank("min", descending=True).cast(pl.Int64).alias("human_rank"),
        )
        .sort("human_value", "ranker", descending=[True, False], nulls_last=True)
        .select("ranker", "metric", "k", "judge_value", "human_value", "judge_rank", "human_rank", "n_queries_judge", "n_queries_human")
    )
    both = rankers.drop_nulls(["judge_value", "human_value"])
    tau = kendall_tau(both["judge_value"].to_numpy(), both["human_value"].to_numpy()) if both.height >= 2 else float("nan")
    # The queries the two orders were compared on: human-labelled queries the run scored under both sets of labels.
    compared = judge_metrics.select("query").unique().join(human_metrics.select("query").unique(), on="query", how="semi")
    system = pl.DataFrame(
        {"metric": ["ndcg"], "k": [k], "kendall_tau": [tau], "n_rankers": [both.height], "n_queries": [compared.height]},
        schema={"metric": pl.String, "k": pl.Int32, "kendall_tau": pl.Float64, "n_rankers": pl.Int64, "n_queries": pl.Int64},
    )
    coverage = {
        "human_pairs": people.height,
        "judged_pairs": int(matched["judge_grade"].is_not_null().sum()),
        "judge_errors": int((matched["judge_grade"].is_null() & matched["error"].is_not_null()).sum()),
        "not_judged": int((matched["judge_grade"].is_null() & matched["error"].is_null()).sum()),
    }
    return AgreementTables(summary, confusion, per_grade, hard, rankers, system, coverage, matched)


# --- review queue -------------------------------------------------------------------------------------------


def review_queue(
    *,
    agreement: AgreementTables | None,
    failed: pl.DataFrame,
    finding_labels: pl.DataFrame,
    grades: Sequence[int] = (0, 1, 2),
    limit: int = 2000,
) -> pl.DataFrame:
    """Pairs for human review, most doubtful first (see the module docstring for the priority); REVIEW_SCHEMA.

    finding_labels: the judge's labels of the top-k products behind the worst queries and regressions.
    """
    grades = sorted(grades)
    parts = []
    if agreement is not None:
        matched = agreement.matched.filter(pl.col("judge_grade").is_not_null() & pl.col("human_grade").is_not_null())
        raters = [c for c in matched.columns if c not in (*LABEL_SCHEMA, "judge_grade", "human_grade", "title")]
        disagreeing_raters = pl.sum_horizontal(
            [(pl.col(c).is_not_null() & (pl.col(c) != pl.col("judge_grade"))).cast(pl.Int64) for c in raters]
        ) if raters else pl.lit(0)
        distance = (pl.col("judge_grade") - pl.col("human_grade")).abs()
        parts.append(
            matched.filter(distance >= 1)
            .with_columns(
                pl.when(distance >= 2).then(pl.lit("hard_disagreement")).otherwise(pl.lit("disagreement")).alias("review_reason"),
                distance.alias("_distance"), disagreeing_raters.alias("_raters"),
                pl.col("human_grade").alias("known_human_grade"),
            )
        )
    if failed.height:
        parts.append(conform_labels(failed).rename({"grade": "judge_grade"}).with_columns(
            pl.lit("stage_error").alias("review_reason"), pl.lit(0).alias("_distance"), pl.lit(0).alias("_raters"),
        ))
    middle = [g for g in grades if g not in (grades[0], grades[-1])]
    if finding_labels.height and middle:
        parts.append(
            conform_labels(finding_labels).rename({"grade": "judge_grade"})
            .filter(pl.col("judge_grade").is_in(middle))
            .with_columns(pl.lit("boundary").alias("review_reason"), pl.lit(0).alias("_distance"), pl.lit(0).alias("_raters"))
        )
    if not parts:
        return pl.DataFrame(schema=REVIEW_SCHEMA)
    common = ["query", "product_id", "judge_grade", "label", "reasoning", "error", "review_reason", "_distance", "_raters"]
    optional = {"title": pl.String, "known_human_grade": pl.Int64}
    frames = [
        p.select(
            *[pl.col(c) for c in common],
            *[(pl.col(c) if c in p.columns else pl.lit(None)).cast(t).alias(c) for c, t in optional.items()],
        ).with_columns(pl.col("judge_grade").cast(pl.Int64), pl.col("_distance").cast(pl.Int64), pl.col("_raters").cast(pl.Int64))
        for p in parts
    ]
    queue = (
        pl.concat(frames, how="vertical_relaxed")
        .with_columns(pl.col("review_reason").replace_strict(REVIEW_REASONS, return_dtype=pl.Int64).alias("priority"))
        .sort(["priority", "_distance", "_raters", "query", "product_id"], descending=[False, True, True, False, False])
        .unique(subset=["query", "product_id"], keep="first", maintain_order=True)
        .head(limit)
    )
    # Titles known for a pair under another reason fill in where this row lacks one.
    titles = pl.concat(
        [f.select("query", "product_id", "title") for f in frames], how="vertical_relaxed"
    ).drop_nulls("title").unique(subset=["query", "product_id"], keep="first")
    queue = queue.drop("title").join(titles, on=["query", "product_id"], how="left", maintain_order="left")
    queue = queue.rename({"label": "judge_label"}).with_columns(
        pl.lit(None, dtype=pl.Int64).alias("human_grade"), pl.lit(None, dtype=pl.String).alias("reviewer_note")
    )
    return _conform(queue, REVIEW_SCHEMA)


# --- TREC files ---------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file-name-safe version of a ranker name (anything but letters, digits, '.', '_', '-' becomes '_')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "ranker"


TREC_README = """TREC files of this run, for trec_eval, ir_measures or ranx.

qrels.txt      query_id 0 product_id relevance   (judge labels; relevance = 2**grade - 1, so trec_eval's
               nDCG, which uses the relevance as the gain, equals this project's nDCG with gain 2**g - 1)
<ranker>.run   query_id Q0 product_id rank score ranker   (score = n + 1 - rank)
queries.parquet  query_id -> query text (query_id = "q" + the first 16 hex digits of SHA-1 of the text)
product_id     as in the labels, but "%" and whitespace percent-encoded ("SKU 12" -> "SKU%2012")

P@k of trec_eval counts relevance >= 1, i.e. grade >= 1, as this project's precision does.
Example: ir_measures qrels.txt bm25-v1.run nDCG@10 P@10
"""


QRELS, RUN = "qrels", "run:"  # the file keys of `trec_chunks`


def qrels_lines(labels: pl.DataFrame) -> str:
    """qrels lines of the graded pairs of `labels` (relevance 2**g - 1, so trec_eval's nDCG uses our gains)."""
    graded = labels.filter(pl.col("grade").is_not_null() & (pl.col("grade") >= 0))
    if graded.is_empty():
        return ""
    return qrels_text(graded, {g: 2**g - 1 for g in graded["grade"].unique().to_list()})[0]


def write_trec(
    source: EvaluationSource, queries: Sequence[str], rankers: Sequence[str], storage: Storage, layout: RunLayout,
) -> dict[str, str]:
    """qrels.txt (judge labels, relevance 2**g - 1), one <ranker>.run per ranker, queries.parquet, README.txt.

    The source hands the lines over in pieces (`trec_chunks`), each written as it comes: no file is held whole.
    Returns {file name: URI}.
    """
    names: dict[str, str] = {QRELS: "qrels.txt"}
    for ranker in rankers:
        name = safe_name(ranker) + ".run"
        if name in names.values():
            name = f"{safe_name(ranker)}-{len(names) - 1}.run"
        names[RUN + ranker] = name
    written = {name: layout.path("trec", name) for name in names.values()}
    with contextlib.ExitStack() as stack:
        streams = {key: stack.enter_context(storage.open_writer(written[name])) for key, name in names.items()}
        for key, text in source.trec_chunks(rankers):
            streams[key].write(text.encode("utf-8"))
    written["README.txt"] = layout.path("trec", "README.txt")
    storage.write_bytes(written["README.txt"], TREC_README.encode("utf-8"))
    uri = layout.path("trec", "queries.parquet")
    storage.write_table(uri, query_ids(sorted(set(queries))).to_arrow())
    written["queries.parquet"] = uri
    return written


# --- the whole step -----------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """What `evaluate` computed and wrote; `write_report` renders it."""

    root: str
    k: int
    config: MetricsConfig
    rankers: pl.DataFrame
    queries: pl.DataFrame
    comparisons: pl.DataFrame
    segments: pl.DataFrame
    worst_queries: pl.DataFrame
    regressions: pl.DataFrame
    review_queue: pl.DataFrame
    agreement: AgreementTables | None = None
    human_source: str | None = None
    simulated: bool = False
    grades: tuple[int, ...] = (0, 1, 2)
    files: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None


def _is_simulated(manifest: dict | None, *label_frames: pl.DataFrame) -> bool:
    if manifest and manifest.get("simulated"):
        return True
    for frame in label_frames:
        if frame is not None and "reasoning" in frame.columns and frame.height:
            if frame["reasoning"].str.starts_with(SIMULATED_MARK).any():
                return True
    return False


def evaluate(
    *,
    query_metrics: pl.DataFrame,
    source: EvaluationSource,
    config: MetricsConfig,
    storage: Storage,
    layout: RunLayout,
    segments: pl.DataFrame | None = None,
    human: HumanLabels | None = None,
    manifest: dict | None = None,
    grades: Sequence[int] = (0, 1, 2),
    review_limit: int = 2000,
) -> EvaluationResult:
    """Ranker table, comparisons, segments, problems, agreement, review queue and TREC files; writes them all.

    query_metrics: per-query scores (QUERY_METRICS_SCHEMA); grades: the label scale (for agreement and the
    "boundary" review reason). The main cut-off of the problem tables is max(config.ks).
    """
    require_columns(query_metrics, "query_metrics", tuple(QUERY_METRICS_SCHEMA))
    query_metrics = query_metrics.select(pl.col(n).cast(t) for n, t in QUERY_METRICS_SCHEMA.items())
    grades = tuple(sorted(grades))
    k = max(config.ks)
    written: dict[str, str] = {}

    def write(relative: str, frame: pl.DataFrame) -> None:
        uri = layout.path(*relative.split("/"))
        storage.write_table(uri, frame.to_arrow())
        written[relative] = uri

    by_ranker = ranker_metrics(query_metrics, n_bootstrap=config.bootstrap, seed=config.seed)
    write("metrics/rankers.parquet", by_ranker)
    write("metrics/queries.parquet", query_metrics)
    comparisons = compare_rankers(
        query_metrics, baseline=config.baseline, n_bootstrap=config.bootstrap, n_permutations=config.permutations,
        seed=config.seed, adjust=config.adjust,
    )
    write("metrics/comparisons.parquet", comparisons)
    if segments is not None and segments.height:
        by_segment = segment_metrics(query_metrics, segments)
    else:
        by_segment = pl.DataFrame(schema=SEGMENT_METRICS_SCHEMA)
    write("metrics/segments.parquet", by_segment)

    rankers = sorted(query_metrics["ranker"].unique().to_list())
    worst_keys = worst_queries(query_metrics, "share_irrelevant", k, config.worst_n, tie_metric="ndcg")
    pairs = regression_pairs(rankers, config.baseline)
    regression_keys = regression_queries(query_metrics, pairs, k, config.worst_n)
    finding_queries = sorted(set(worst_keys["query"].to_list()) | set(regression_keys["query"].to_list()))
    ranked = source.ranked_lists(finding_queries) if finding_queries else pl.DataFrame(schema=RUN_SCHEMA)
    labels = conform_labels(source.labels_for(finding_queries)) if finding_queries else conform_labels(_empty_labels())
    worst = problem_queries(query_metrics, ranked, labels, k, config.worst_n)
    regressed = regressions(query_metrics, ranked, labels, pairs, k, config.worst_n)
    write("metrics/worst_queries.parquet", worst)
    write("metrics/regressions.parquet", regressed)

    agreement_result = None
    judge_matched = None
    if human is not None:
        pairs_frame = human.frame.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
        judge_matched = source.labels_matching(pairs_frame)
        human_queries = sorted(pairs_frame["query"].unique().to_list())
        agreement_result = agreement_tables(
            human, judge_matched, query_metrics, source.ranked_lists(human_queries), grades, k
        )
        for name, frame in agreement_result.frames().items():
            write(f"agreement/{name}.parquet", frame)

    failed = conform_labels(source.failed_labels(review_limit))
    # Labels of the products a finding rests on: the top k of the worst queries and of both sides of a regression.
    evidence = _top_k(ranked, k).join(
        pl.concat([
            worst_keys.select("ranker", "query"),
            regression_keys.select("ranker", "query"),
            regression_keys.select(pl.col("baseline").alias("ranker"), "query"),
        ]).unique(),
        on=["ranker", "query"], how="semi",
    ).select("query", "product_id").unique()
    finding_labels = labels.join(evidence, on=["query", "product_id"], how="semi")
    queue = review_queue(agreement=agreement_result, failed=failed, finding_labels=finding_labels, grades=grades,
                         limit=review_limit)
    write("review/queue.parquet", queue)
    buffer = io.BytesIO()
    queue.write_csv(buffer)
    storage.write_bytes(layout.path("review", "queue.csv"), buffer.getvalue())
    written["review/queue.csv"] = layout.path("review", "queue.csv")

    all_queries = query_metrics["query"].unique().to_list()
    for name, uri in write_trec(source, all_queries, rankers, storage, layout).items():
        written[f"trec/{name}"] = uri

    return EvaluationResult(
        root=layout.root, k=k, config=config, rankers=by_ranker, queries=query_metrics, comparisons=comparisons,
        segments=by_segment, worst_queries=worst, regressions=regressed, review_queue=queue,
        agreement=agreement_result, human_source=human.source if human is not None else None,
        simulated=_is_simulated(manifest, labels, failed, judge_matched), grades=grades, files=written,
        manifest=manifest,
    )
