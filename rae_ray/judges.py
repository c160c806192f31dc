"""The judges table of a sweep: how well each variant's judge agrees with people, and what it cost.

One row per variant (kind `judge`): agreement of its labels with the human label column on the human-labelled
pairs it judged, with bootstrap intervals over queries (`metrics.agreement.agreement_by_query`), Kendall's tau
between the rankers' order under its labels and under people's, and the calls, tokens, cost and seconds of its
run. One row per pair of rater columns (kind `human_vs_human`): people's agreement with each other on the pairs
the sweep judged, the bar a judge is held to.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from rae_ray.metrics.agreement import AGREEMENT_MEASURES, agreement_by_query
from rae_ray.metrics.evaluate import require_columns

JUDGE = "judge"
HUMAN_VS_HUMAN = "human_vs_human"

JUDGES_SCHEMA = {
    "kind": pl.String,
    "variant": pl.String,
    "run_id": pl.String,
    "annotate_model": pl.String,
    "guidelines_model": pl.String,
    "rater_a": pl.String,
    "rater_b": pl.String,
    "n_pairs": pl.Int64,
    "n_queries": pl.Int64,
    "examples_held_out": pl.Int64,
    "human_overridden": pl.Int64,
    **{f"{name}{part}": pl.Float64 for name in AGREEMENT_MEASURES for part in ("", "_ci_low", "_ci_high")},
    "kendall_tau": pl.Float64,
    "llm_calls": pl.Int64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cached_tokens": pl.Int64,
    "cost_usd": pl.Float64,
    "seconds": pl.Float64,
}


@dataclass(frozen=True)
class JudgeRun:
    """One variant of a sweep as the judges table needs it.

    matched: the human-labelled pairs with the judge's grade (query, product_id, judge_grade, human_grade and the
    rater columns; judge_grade null where the run did not judge the pair), as `evaluation.AgreementTables`.
    guidelines_model: "none" when the variant wrote no guidelines. examples_held_out, human_overridden: the
    human-labelled pairs left out of its agreement (shown to its judge as examples; graded by people in review).
    """

    variant: str
    run_id: str
    annotate_model: str
    guidelines_model: str
    matched: pl.DataFrame
    kendall_tau: float | None
    manifest: Mapping[str, Any]
    examples_held_out: int = 0
    human_overridden: int = 0


def run_usage(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Calls, tokens, cost and seconds of a run, summed over its stages, from its manifest."""
    tokens = manifest.get("tokens") or {}
    cost = (manifest.get("cost_usd") or {}).get("total")
    seconds = (manifest.get("seconds") or {}).get("total")
    return {
        "llm_calls": int(sum((manifest.get("llm_calls") or {}).values())),
        **{f"{kind}_tokens": int(sum(stage.get(kind, 0) for stage in tokens.values()))
           for kind in ("prompt", "completion", "cached")},
        "cost_usd": None if cost is None else float(cost),
        "seconds": None if seconds is None else float(seconds),
    }


def _agreement_row(frame: pl.DataFrame, col_a: str, col_b: str, grades: Sequence[int], n_bootstrap: int,
                   seed: int, confidence: float) -> dict[str, Any]:
    both = frame.select("query", pl.col(col_a).cast(pl.Float64).alias("a"), pl.col(col_b).cast(pl.Float64).alias("b"))
    both = both.drop_nulls()
    result = agreement_by_query(both["a"].to_numpy(), both["b"].to_numpy(), both["query"].to_numpy(), grades,
                                n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    row = {"n_pairs": result.pop("n"), **result}
    return {name: (None if isinstance(value, float) and math.isnan(value) else value) for name, value in row.items()}


def judges_table(
    runs: Sequence[JudgeRun],
    raters: Mapping[str, str],
    grades: Sequence[int] = (0, 1, 2),
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pl.DataFrame:
    """The judges table (JUDGES_SCHEMA): a `judge` row per run, then a `human_vs_human` row per pair of raters.

    raters: rater name -> its column in the runs' matched frames (in order; pairs are taken in that order).
    People are compared on the pairs at least one run judged, each pair once. NaN measures become null.
    """
    grades = sorted(grades)
    rows = []
    for run in runs:
        require_columns(run.matched, f"matched pairs of {run.variant}", ("query", "product_id", "judge_grade", "human_grade"))
        kendall = run.kendall_tau
        rows.append({
            "kind": JUDGE, "variant": run.variant, "run_id": run.run_id, "annotate_model": run.annotate_model,
            "guidelines_model": run.guidelines_model, "examples_held_out": run.examples_held_out,
            "human_overridden": run.human_overridden,
            **_agreement_row(run.matched, "judge_grade", "human_grade", grades, n_bootstrap, seed, confidence),
            "kendall_tau": None if kendall is None or math.isnan(kendall) else float(kendall),
            **run_usage(run.manifest),
        })
    judged = [run.matched.filter(pl.col("judge_grade").is_not_null()).select("query", "product_id", *raters.values())
              for run in runs]
    if judged and len(raters) >= 2:
        pairs = pl.concat(judged, how="vertical_relaxed").unique(["query", "product_id"], keep="first", maintain_order=True)
        for a, b in itertools.combinations(raters, 2):
            rows.append({"kind": HUMAN_VS_HUMAN, "rater_a": a, "rater_b": b,
                         **_agreement_row(pairs, raters[a], raters[b], grades, n_bootstrap, seed, confidence)})
    return pl.DataFrame(rows, schema=JUDGES_SCHEMA)


def best_judge(table: pl.DataFrame) -> str | None:
    """The variant with the highest Cohen's kappa (the first of equals); None without one."""
    judges = table.filter((pl.col("kind") == JUDGE) & pl.col("cohen_kappa").is_not_null())
    if judges.is_empty():
        return None
    return judges.sort("cohen_kappa", descending=True, maintain_order=True)["variant"][0]


def _with_interval(row: Mapping[str, Any], name: str) -> str:
    value, low, high = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{low:.2f},{high:.2f}]" if low is not None and high is not None else "")


def _fixed_width(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
            for line in (header, *rows)]


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def judges_lines(table: pl.DataFrame) -> list[str]:
    """The judges table for a terminal: agreement (best judge by Cohen's kappa marked *), then cost."""
    best = best_judge(table)
    rows = list(table.iter_rows(named=True))
    judges = [r for r in rows if r["kind"] == JUDGE]

    def name(row: Mapping[str, Any]) -> str:
        return _clip(row["variant"] if row["kind"] == JUDGE else f"people: {row['rater_a']} vs {row['rater_b']}", 32)

    agreement_rows = [
        ["*" if r["kind"] == JUDGE and r["variant"] == best else "", name(r), str(r["n_pairs"]), str(r["n_queries"]),
         "-" if r["examples_held_out"] is None else str(r["examples_held_out"]),
         *(_with_interval(r, m) for m in AGREEMENT_MEASURES),
         "-" if r["kendall_tau"] is None else f"{r['kendall_tau']:.2f}"]
        for r in rows
    ]
    lines = ["judges vs people (95% intervals: bootstrap over queries; tau: rankers' order by nDCG, judge vs people; "
             "held out: people's examples shown to the judge, not scored)"]
    lines += _fixed_width(["", "judge", "pairs", "queries", "held out", "exact", "cohen_kappa", "quadratic_kappa", "tau"],
                          agreement_rows, left=2)
    cost_rows = [
        [name(r), _clip(r["annotate_model"]), _clip(r["guidelines_model"]), str(r["llm_calls"]),
         str(r["prompt_tokens"]), str(r["completion_tokens"]), str(r["cached_tokens"]),
         "-" if r["cost_usd"] is None else f"{r['cost_usd']:.4f}", "-" if r["seconds"] is None else f"{r['seconds']:.1f}"]
        for r in judges
    ]
    if cost_rows:
        lines.append("")
        lines += _fixed_width(["judge", "annotate model", "guidelines model", "llm calls", "prompt tok", "output tok",
                               "cached tok", "cost $", "seconds"], cost_rows, left=3)
    if best is not None:
        top = next(r for r in judges if r["variant"] == best)
        lines += ["", f"* best judge by Cohen's kappa: {best} ({_with_interval(top, 'cohen_kappa')})"]
        close = [r["variant"] for r in judges if r["variant"] != best and r["cohen_kappa"] is not None
                 and top["cohen_kappa_ci_low"] is not None and r["cohen_kappa"] >= top["cohen_kappa_ci_low"]]
        if close:
            lines.append(f"  not clearly better than {', '.join(close)} (their kappa is within its interval)")
        people = [r["cohen_kappa"] for r in rows if r["kind"] == HUMAN_VS_HUMAN and r["cohen_kappa"] is not None]
        if people:
            spread = f"{min(people):.3f}" + (f" to {max(people):.3f}" if len(people) > 1 else "")
            lines.append(f"  people vs people: kappa {spread}")
    lines.append("(calls and cost are what each run paid: a variant reuses what the shared label store already holds)")
    return lines
