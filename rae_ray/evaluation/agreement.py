"""Agreement tables of the judge with people (and of people with each other), built from `metrics.agreement`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from rae_ray.evaluation.sources import conform_labels
from rae_ray.io import InputError
from rae_ray.metrics.agreement import (
    RATER_AGREEMENT_SCHEMA,
    agreement,
    hard_disagreements,
    kendall_tau,
    rater_agreement,
)
from rae_ray.metrics.evaluate import query_metrics as compute_query_metrics, require_columns

__all__ = ["AGREEMENT_SUMMARY_SCHEMA", "AgreementTables", "HumanLabels", "agreement_tables"]

AGREEMENT_SUMMARY_SCHEMA = {"kind": pl.String, **RATER_AGREEMENT_SCHEMA}
SYSTEM_SCHEMA = {"metric": pl.String, "k": pl.Int32, "kendall_tau": pl.Float64, "n_rankers": pl.Int64,
                 "n_queries": pl.Int64}  # fmt: skip


@dataclass(frozen=True)
class HumanLabels:
    """Human grades on the project's scale: frame with query, product_id, grade and the rater columns (graded)."""

    frame: pl.DataFrame
    rater_columns: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        require_columns(self.frame, "human labels", ("query", "product_id", "grade", *self.rater_columns))


@dataclass
class AgreementTables:
    """Judge vs human: summary rows (kind judge_vs_human, judge_vs_rater, human_vs_human), confusion (judge rows,
    human columns, long form), per-grade precision/recall of the judge, hard disagreements, the rankers' nDCG
    under each set of labels and Kendall's tau between the two orders, and coverage counts (human_pairs,
    examples_held_out, human_overridden: pairs not scored; judged_pairs, judge_errors, not_judged: of the rest)."""

    summary: pl.DataFrame
    confusion: pl.DataFrame
    per_grade: pl.DataFrame
    hard_disagreements: pl.DataFrame
    rankers: pl.DataFrame
    system: pl.DataFrame
    coverage: dict[str, int]
    matched: pl.DataFrame  # every scored human-labelled pair with the judge's label (judge_grade null if none)

    def frames(self) -> dict[str, pl.DataFrame]:
        """The tables by file name (agreement/<name>.parquet)."""
        coverage = pl.DataFrame({name: [value] for name, value in self.coverage.items()})
        return {
            "summary": self.summary, "confusion": self.confusion, "per_grade": self.per_grade,
            "hard_disagreements": self.hard_disagreements, "rankers": self.rankers, "system": self.system,
            "coverage": coverage,
        }  # fmt: skip


def _check_scale(who: str, frame: pl.DataFrame, columns: Sequence[str], grades: Sequence[int]) -> None:
    for column in columns:
        off_scale = sorted(set(frame[column].drop_nulls().to_list()) - set(grades))
        if off_scale:
            what = "the label column" if column in ("human_grade", "judge_grade") else f"column '{column}'"
            raise InputError(
                f"{who}: {what} has grades {off_scale[:10]} outside the scale {list(grades)}; "
                "map them onto it (human_labels.grade_map, or --human-grade-map / --grade-map)"
            )


def _summary(matched: pl.DataFrame, raters: Sequence[str], grades: Sequence[int]) -> pl.DataFrame:
    """judge_vs_human, judge_vs_rater (each individual rater) and human_vs_human rows, by `rater_agreement`."""

    def rows(kind: str, frame: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
        table = rater_agreement(frame, list(frame.columns), grades)
        return table.with_columns(
            pl.lit(kind).alias("kind"), pl.col("rater_a").replace(names), pl.col("rater_b").replace(names)
        )

    individual = [c for c in raters if c != "grade"]
    parts = [rows("judge_vs_human", matched.select("judge_grade", "human_grade"),
                  {"judge_grade": "judge", "human_grade": "human"})]
    parts += [
        rows("judge_vs_rater", matched.select("judge_grade", rater), {"judge_grade": "judge"}) for rater in individual
    ]
    # The label column may be one of the raters too ("grade" here, "human_grade" in matched).
    people = matched.select(pl.col("human_grade" if c == "grade" else c).alias(c) for c in raters)
    parts.append(rows("human_vs_human", people, {}))
    return pl.concat(parts).select(list(AGREEMENT_SUMMARY_SCHEMA))


def _ranker_orders(
    people: pl.DataFrame, judge_query_metrics: pl.DataFrame, ranked: pl.DataFrame, grades: Sequence[int], k: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rankers' mean nDCG@k under judge and under human labels on the human-labelled queries, and Kendall's
    tau between the two orders (system: n_queries = the queries scored under both sets of labels)."""
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
    compared = judge_metrics.select("query").unique().join(human_metrics.select("query").unique(), on="query", how="semi")
    system = pl.DataFrame(
        {"metric": ["ndcg"], "k": [k], "kendall_tau": [tau], "n_rankers": [both.height], "n_queries": [compared.height]},
        schema=SYSTEM_SCHEMA,
    )
    return rankers, system


def agreement_tables(
    human: HumanLabels,
    judge_labels: pl.DataFrame,
    judge_query_metrics: pl.DataFrame,
    ranked: pl.DataFrame,
    grades: Sequence[int] = (0, 1, 2),
    k: int = 10,
    held_out: pl.DataFrame | None = None,
) -> AgreementTables:
    """Agreement of the judge with people, and of people with each other, on the pairs both labelled.

    judge_labels: the judge's labels of the human-labelled pairs; ranked: the ranked lists of the human-labelled
    queries (to score the rankers with human labels); judge_query_metrics: the run's per-query scores (restricted
    here to the human-labelled queries, so both orders of the rankers rest on the same queries).
    Not the judge's, so never scored (counted in coverage): pairs in `held_out` (query, product_id: shown to the judge
    as people's examples; `examples_held_out`) and pairs whose label has `source` "human" (a person's grade from
    review import; `human_overridden`). The rankers' order under people's labels uses every human label.
    """
    grades = sorted(grades)
    raters = list(human.rater_columns)
    individual = [c for c in raters if c != "grade"]
    everyone = human.frame.select(
        pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String), pl.col("grade").cast(pl.Int64).alias("human_grade"),
        *[pl.col(c).cast(pl.Int64) for c in individual],
    ).unique(subset=["query", "product_id"], keep="first", maintain_order=True)
    judge = conform_labels(judge_labels).rename({"grade": "judge_grade"})
    _check_scale(f"human labels {human.source}".strip(), everyone, ["human_grade", *individual], grades)
    people = everyone
    examples = pl.DataFrame(schema={"query": pl.String, "product_id": pl.String})
    if held_out is not None:
        examples = held_out.select(pl.col("query").cast(pl.String), pl.col("product_id").cast(pl.String)).unique()
    people = people.join(examples, on=["query", "product_id"], how="anti", maintain_order="left")
    n_held_out = everyone.height - people.height
    if "source" in judge.columns:
        by_people = judge.filter(pl.col("source") == "human").select("query", "product_id")
        judge = judge.filter(pl.col("source").is_null() | (pl.col("source") != "human"))
        scored = people.join(by_people, on=["query", "product_id"], how="anti", maintain_order="left")
        n_overridden, people = people.height - scored.height, scored
    else:
        n_overridden = 0
    _check_scale("judge labels", judge, ["judge_grade"], grades)
    matched = people.join(judge, on=["query", "product_id"], how="left", maintain_order="left")

    main = agreement(
        matched["judge_grade"].cast(pl.Float64).to_numpy(), matched["human_grade"].cast(pl.Float64).to_numpy(), grades
    )
    confusion = pl.DataFrame(
        [(g_judge, g_human, main["confusion"][i][j]) for i, g_judge in enumerate(grades) for j, g_human in enumerate(grades)],
        schema={"judge_grade": pl.Int64, "human_grade": pl.Int64, "n": pl.Int64}, orient="row",
    )
    per_grade = pl.DataFrame(
        [(g, v["precision"], v["recall"], v["n_a"], v["n_b"]) for g, v in main["per_grade"].items()],
        schema={"grade": pl.Int64, "precision": pl.Float64, "recall": pl.Float64, "n_judge": pl.Int64, "n_human": pl.Int64},
        orient="row",
    )
    # hard_disagreements keeps the input order within a distance: by query and product here.
    hard = (
        hard_disagreements(matched.sort("query", "product_id"), "judge_grade", "human_grade")
        .with_columns(pl.col("distance").cast(pl.Int64))
        .select("query", "product_id", *(["title"] if "title" in matched.columns else []), "judge_grade",
                "human_grade", "distance", "label", "reasoning", *individual)
    )
    rankers, system = _ranker_orders(everyone, judge_query_metrics, ranked, grades, k)
    coverage = {
        "human_pairs": everyone.height,
        "examples_held_out": n_held_out,
        "human_overridden": n_overridden,
        "judged_pairs": int(matched["judge_grade"].is_not_null().sum()),
        "judge_errors": int((matched["judge_grade"].is_null() & matched["error"].is_not_null()).sum()),
        "not_judged": int((matched["judge_grade"].is_null() & matched["error"].is_null()).sum()),
    }
    return AgreementTables(
        summary=_summary(matched, raters, grades), confusion=confusion, per_grade=per_grade, hard_disagreements=hard,
        rankers=rankers, system=system, coverage=coverage, matched=matched,
    )
