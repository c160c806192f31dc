"""View model of the report's findings: worst queries, regressions, agreement with people, the review queue."""

from __future__ import annotations

import itertools

import polars as pl

from rae_ray.evaluation import EvaluationResult
from rae_ray.evaluation.review import REVIEW_REASONS
from rae_ray.report.charts import agreement_chart
from rae_ray.report.format import (
    DASH,
    clip,
    grade_pill,
    missing,
    num,
    pct,
    plural,
    signed,
    value_span,
)

__all__ = ["agreement_view", "regressions_view", "review_view", "worst_view"]

MAX_HARD = 25  # hard disagreements listed in the report
MAX_PRODUCTS = 3  # products listed per query in the report; the parquet files hold all
KIND_NAMES = {
    "judge_vs_human": "judge vs human", "judge_vs_rater": "judge vs one rater", "human_vs_human": "human vs human",
}  # fmt: skip
CHANGE_NAMES = {  # (tally, per product)
    "added_irrelevant": ("new irrelevant in top k", "new in top k"),
    "promoted_irrelevant": ("irrelevant ranked higher", "ranked higher"),
    "dropped_relevant": ("relevant dropped from top k", "dropped"),
    "reordered": ("relevant products reordered", "reordered"),
}
HEAT_SAME, HEAT_ONE_APART, HEAT_HARD = "227,240,231", "255,236,200", "250,214,210"  # RGB of the confusion cells
REASON_TEXT = {
    "hard_disagreement": "judge and human two or more grades apart",
    "disagreement": "judge and human one grade apart (more dissenting raters first)",
    "stage_error": "the judge gave no grade (stage error)",
    "boundary": "middle grade on a product a finding rests on (worst queries, regressions)",
    "low_confidence": "the judge's votes disagreed (confidence below 1; listed first, least confident first)",
}


def product_item(row: dict, names: dict[int, str], change: str | None = None) -> dict:
    """A product in a finding: rank, title (or id), grade, the judge's reasoning (or error), what changed."""
    reasoning = row.get("reasoning") or (f'error: {row["error"]}' if row.get("error") else "")
    return {
        "rank": None if missing(row.get("rank")) else f'#{row["rank"]} ', "title": clip(row.get("title"), 110) or None,
        "product_id": row["product_id"], "grade": grade_pill(row.get("grade"), names), "change": change,
        "reasoning": reasoning, "reasoning_short": clip(reasoning, 200),
    }  # fmt: skip


def _shown(items: list[dict]) -> dict:
    return {"items": items[:MAX_PRODUCTS], "more": max(0, len(items) - MAX_PRODUCTS)}


def worst_view(result: EvaluationResult, order: list[str], names: dict[int, str]) -> dict | None:
    worst = result.worst_queries
    if worst.height == 0:
        return None
    groups = []
    for ranker in order:
        rows = worst.filter(pl.col("ranker") == ranker)
        if rows.height == 0:
            continue
        queries = []
        for (position,), group in rows.group_by(["position"], maintain_order=True):
            first = group.row(0, named=True)
            items = [product_item(r, names) for r in group.iter_rows(named=True) if r["product_id"] is not None]
            queries.append({
                "position": position, "query": first["query"], "irrelevant": pct(first["share_irrelevant"], 0),
                "ndcg": num(first["ndcg"], 3), **_shown(items),
            })  # fmt: skip
        groups.append({"ranker": ranker, "n_queries": rows["query"].n_unique(), "queries": queries})
    return {"k": result.k, "n": result.config.worst_n, "groups": groups}


def regressions_view(result: EvaluationResult, names: dict[int, str]) -> dict | None:
    regressed = result.regressions
    if regressed.height == 0:
        return None
    k = result.k
    comparisons = {(r["ranker_a"], r["ranker_b"]): r for r in result.comparisons.filter(
        (pl.col("metric") == "ndcg") & (pl.col("k") == k)).iter_rows(named=True)}  # fmt: skip
    groups = []
    for ranker, baseline in regressed.select("ranker", "baseline").unique(maintain_order=True).rows():
        rows = regressed.filter((pl.col("ranker") == ranker) & (pl.col("baseline") == baseline))
        overall, reverse = comparisons.get((ranker, baseline)), comparisons.get((baseline, ranker))
        delta = overall["delta"] if overall else (-reverse["delta"] if reverse else None)
        queries = []
        for (position,), group in rows.group_by(["position"], maintain_order=True):
            first = group.row(0, named=True)
            by_change: dict[str, list[dict]] = {}
            for r in group.iter_rows(named=True):
                if r["product_id"] is None:
                    continue
                was = ""
                if r["baseline_rank"] is not None:
                    was = f' (was #{r["baseline_rank"]}' + (f" in {baseline})" if r["rank"] is None else ")")
                change = CHANGE_NAMES.get(r["change"], (r["change"],) * 2)[1] + was
                by_change.setdefault(r["change"], []).append(product_item(r, names, change))
            # Round robin over the kinds of change, so the few products shown cover each kind.
            items = [item for batch in itertools.zip_longest(*by_change.values()) for item in batch if item]
            changes = group.filter(pl.col("product_id").is_not_null())["change"].value_counts(sort=True)
            tally = " · ".join(f"{n} {CHANGE_NAMES.get(c, (c,))[0]}" for c, n in changes.iter_rows())
            queries.append({"position": position, "query": first["query"], "value": num(first["value"], 3),
                            "baseline_value": num(first["baseline_value"], 3), "delta": signed(first["delta"], 3),
                            "tally": tally, **_shown(items)})  # fmt: skip
        groups.append({"ranker": ranker, "baseline": baseline, "delta": signed(delta),
                       "n_queries": rows["query"].n_unique(), "queries": queries})  # fmt: skip
    return {"k": k, "baseline": result.config.baseline, "groups": groups}


def _baseline_note(summary_rows: list[dict]) -> dict | None:
    """How far people agree with each other: the ceiling to hold the judge against."""
    people = [r for r in summary_rows if r["kind"] == "human_vs_human"]
    exact = [r["exact"] for r in people if not missing(r["exact"])]
    kappa = [r["cohen_kappa"] for r in people if not missing(r["cohen_kappa"])]
    if not (exact and kappa):
        return None
    versus_raters = [r["exact"] for r in summary_rows if r["kind"] == "judge_vs_rater" and not missing(r["exact"])]
    return {"exact": value_span(exact, pct), "kappa": value_span(kappa, lambda v: f"{v:.3f}"),
            "judge_vs_rater": value_span(versus_raters, pct) if versus_raters else None}  # fmt: skip


def _coverage_text(coverage: dict[str, int]) -> str:
    text = f'{coverage["judged_pairs"]} of {plural(coverage["human_pairs"], "human-labelled pair", "human-labelled pairs")}'
    text += " have a judge grade"
    if coverage["judge_errors"]:
        text += f'; {plural(coverage["judge_errors"], "judgement", "judgements")} failed'
    if coverage["not_judged"]:
        text += f'; {plural(coverage["not_judged"], "pair was", "pairs were")} not judged in this run'
    if coverage.get("examples_held_out"):
        text += (f'; {plural(coverage["examples_held_out"], "pair was", "pairs were")} shown to the judge as examples '
                 "and not scored")
    if coverage.get("human_overridden"):
        text += (f'; {plural(coverage["human_overridden"], "pair was", "pairs were")} graded by people in review '
                 "(source human) and not scored")
    return text + "."


def _heat(tables, grades: list[int], names: dict[int, str]) -> dict:
    """The confusion matrix as shaded cells: green on the diagonal, red two or more grades apart."""
    counts = {(r["judge_grade"], r["human_grade"]): r["n"] for r in tables.confusion.iter_rows(named=True)}
    total = max(1, sum(counts.values()))
    rows = []
    for g_judge in reversed(grades):
        cells = []
        for g_human in reversed(grades):
            n = counts.get((g_judge, g_human), 0)
            share = n / total
            hue = HEAT_SAME if g_judge == g_human else (HEAT_HARD if abs(g_judge - g_human) >= 2 else HEAT_ONE_APART)
            alpha = 0.25 + 0.75 * min(1.0, share * 4)
            cells.append({"n": n, "share": pct(share), "background": f"rgba({hue},{alpha:.2f})"})
        rows.append({"grade": grade_pill(g_judge, names), "cells": cells})
    return {"columns": [grade_pill(g, names) for g in reversed(grades)], "rows": rows}


def agreement_view(result: EvaluationResult, names: dict[int, str]) -> dict | None:
    tables = result.agreement
    if tables is None:
        return None
    summary_rows = [
        {**r, "label": "judge vs human" if r["kind"] == "judge_vs_human" else f'{r["rater_a"]} vs {r["rater_b"]}'}
        for r in tables.summary.iter_rows(named=True)
    ]
    system = tables.system.row(0, named=True) if tables.system.height else {}
    hard = tables.hard_disagreements
    rater_columns = [c for c in hard.columns if c not in ("query", "product_id", "title", "judge_grade", "human_grade",
                                                          "distance", "label", "reasoning")]  # fmt: skip
    return {
        "k": result.k, "source": result.human_source, "coverage": _coverage_text(tables.coverage),
        "baseline_note": _baseline_note(summary_rows), "chart": agreement_chart(summary_rows),
        "summary": [{"kind": KIND_NAMES.get(r["kind"], r["kind"]), "label": r["label"], "n": r["n"],
                     "exact": pct(r["exact"]), "kappa": num(r["cohen_kappa"], 3),
                     "quadratic": num(r["quadratic_weighted_kappa"], 3)}
                    for r in summary_rows],
        "heat": _heat(tables, list(result.grades), names),
        "per_grade": [{"grade": grade_pill(r["grade"], names), "precision": pct(r["precision"]),
                       "recall": pct(r["recall"]), "n_judge": r["n_judge"], "n_human": r["n_human"]}
                      for r in tables.per_grade.sort("grade", descending=True).iter_rows(named=True)],
        "tau": num(system.get("kendall_tau"), 3), "tau_known": not missing(system.get("kendall_tau")),
        "n_queries": system.get("n_queries", 0), "n_rankers": system.get("n_rankers", 0),
        "orders": [{"ranker": r["ranker"], "judge": num(r["judge_value"]),
                    "judge_rank": DASH if r["judge_rank"] is None else r["judge_rank"], "human": num(r["human_value"]),
                    "human_rank": DASH if r["human_rank"] is None else r["human_rank"]}
                   for r in tables.rankers.iter_rows(named=True)],
        "hard_count": hard.height, "max_hard": MAX_HARD, "raters": rater_columns,
        "hard": [{"query": r["query"], "title": clip(r.get("title"), 90) if r.get("title") else None,
                  "product_id": r["product_id"], "judge": grade_pill(r["judge_grade"], names),
                  "human": grade_pill(r["human_grade"], names),
                  "raters": " · ".join(DASH if r[c] is None else str(r[c]) for c in rater_columns),
                  "reasoning": clip(r["reasoning"], 320)}
                 for r in hard.head(MAX_HARD).iter_rows(named=True)],
    }  # fmt: skip


def review_view(result: EvaluationResult) -> dict:
    queue = result.review_queue
    counts = dict(queue.group_by("review_reason").len().iter_rows()) if queue.height else {}
    rows = [{"priority": priority, "reason": reason, "meaning": REASON_TEXT[reason], "pairs": counts.get(reason, 0)}
            for reason, priority in sorted(REVIEW_REASONS.items(), key=lambda item: item[1])]  # fmt: skip
    return {"n_pairs": queue.height, "rows": rows}
