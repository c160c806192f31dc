"""The report's view model: what the page shows, in its order, as plain values (no HTML) for the templates.

Decided here, for display only: the order of the rankers (`metrics.evaluate.ranker_order`, best nDCG@k first)
and, with no baseline, which side of a comparison is on the left (the better ranker: delta and interval negated,
wins and losses swapped; `significant` is read from the comparisons table, symmetric, never recomputed).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import polars as pl

from rae_ray.evaluation import EvaluationResult
from rae_ray.metrics.compare import ALPHA
from rae_ray.metrics.evaluate import ranker_order
from rae_ray.metrics.measures import MEASURES
from rae_ray.report.confidence import confidence_view
from rae_ray.report.findings import agreement_view, regressions_view, review_view, worst_view
from rae_ray.report.charts import ci_bar, forest_chart
from rae_ray.report.format import DASH, grade_names, interval, missing, num, p_text, pct, signed, when

__all__ = ["page_view"]


def metric_label(metric: str, k: int | None = None) -> str:
    """"nDCG@10": a measure's display name (the metric's own name when it is not a known measure)."""
    if metric in MEASURES:
        return MEASURES[metric].at(k) if k is not None else MEASURES[metric].label
    return f"{metric}@{k}" if k is not None else metric


def _higher_is_better(metric: str) -> bool:
    return MEASURES[metric].higher_is_better if metric in MEASURES else True


# --- rankers ---------------------------------------------------------------------------------------------------


def rankers_view(result: EvaluationResult, order: list[str]) -> dict:
    k = result.k
    rows_by = {(r["ranker"], r["metric"], r["k"]): r for r in result.rankers.iter_rows(named=True)}
    metrics = [m for m in MEASURES if m != "ndcg" and any(key[1] == m for key in rows_by)]
    mains = [r for key, r in rows_by.items() if key[1] == "ndcg" and key[2] == k]
    lows = [r["value"] if missing(r["ci_low"]) else r["ci_low"] for r in mains]
    highs = [r["value"] if missing(r["ci_high"]) else r["ci_high"] for r in mains]
    # One scale for every interval bar of the table: the tenths around all intervals, within [0, 1].
    scale = (max(0.0, math.floor(min(lows, default=0.0) * 10) / 10),
             min(1.0, math.ceil(max(highs, default=1.0) * 10) / 10))  # fmt: skip
    rows = []
    for i, ranker in enumerate(order):
        main = rows_by.get((ranker, "ndcg", k))
        rows.append({
            "ranker": ranker, "best": i == 0 and len(order) > 1,
            "main": None if main is None else {
                "value": num(main["value"]), "interval": interval(main["ci_low"], main["ci_high"]),
                "bar": ci_bar(main["value"], main["ci_low"], main["ci_high"], scale),
            },
            "others": [num(rows_by[(ranker, m, k)]["value"]) if (ranker, m, k) in rows_by else DASH for m in metrics],
            "n_queries": max((r["n_queries"] for key, r in rows_by.items() if key[0] == ranker and key[2] == k),
                             default=0),
        })  # fmt: skip
    every = [
        {"ranker": ranker, "metric": metric_label(m, kk), "value": num(row["value"]),
         "interval": interval(row["ci_low"], row["ci_high"]), "n_queries": row["n_queries"]}
        for ranker in order
        for (r, m, kk), row in sorted(rows_by.items(), key=lambda item: (item[0][1], item[0][2])) if r == ranker
    ]  # fmt: skip
    return {
        "k": k, "main_label": metric_label("ndcg", k), "scale": f"{scale[0]:.1f} – {scale[1]:.1f}",
        "ideal": ideal_text(result.ideal),
        "metrics": [metric_label(m, k) for m in metrics], "rows": rows, "every": every,
        "ks": ", ".join(map(str, sorted(set(result.rankers["k"].to_list())))), "bootstrap": result.config.bootstrap,
    }  # fmt: skip


def ideal_text(ideal: dict) -> str:
    """What nDCG's ideal was built from (`metrics.ideal`), for the sentence under the ranker table."""
    if ideal.get("mode") != "store":
        return "every labelled product of the query in this run (metrics.ideal: run)"
    return (f"every labelled product of the query in this run and in the label store under the same judging "
            f"context ({ideal.get('judge_context')}; metrics.ideal: store): {ideal.get('stored_labels', 0)} stored "
            f"labels of {ideal.get('queries_with_stored_labels', 0)} queries")


# --- comparisons -----------------------------------------------------------------------------------------------


def oriented(row: dict, baseline: str | None) -> dict:
    """A comparison as displayed: with no baseline, the better ranker on the left (delta >= 0 when higher is
    better). Adds `label` ("a − b") and `worse` (the left ranker does worse on this metric)."""
    row = dict(row)
    better_high = _higher_is_better(row["metric"])
    if baseline is None and ((row["delta"] < 0) == better_high) and row["delta"] != 0:
        row.update(
            ranker_a=row["ranker_b"], ranker_b=row["ranker_a"], delta=-row["delta"],
            ci_low=None if missing(row["ci_high"]) else -row["ci_high"],
            ci_high=None if missing(row["ci_low"]) else -row["ci_low"],
            wins=row["losses"], losses=row["wins"],
        )
    row["label"] = f'{row["ranker_a"]} − {row["ranker_b"]}'
    row["worse"] = row["delta"] < 0 if better_high else row["delta"] > 0
    return row


def _comparison_cells(r: dict) -> dict:
    return {
        "ranker_a": r["ranker_a"], "ranker_b": r["ranker_b"], "metric": metric_label(r["metric"], r["k"]),
        "delta": signed(r["delta"]), "worse": r["worse"], "interval": interval(r["ci_low"], r["ci_high"], sign=True),
        "p_value": p_text(r["p_value"]), "p_adjusted": p_text(r["p_adjusted"]), "significant": r["significant"],
        "wins_ties_losses": f'{r["wins"]} / {r["ties"]} / {r["losses"]}', "n_queries": r["n_queries"],
    }  # fmt: skip


def comparisons_view(result: EvaluationResult) -> dict | None:
    if result.comparisons.height == 0:
        return None
    k, baseline = result.k, result.config.baseline
    rows = [oriented(r, baseline) for r in result.comparisons.iter_rows(named=True)]
    main = sorted([r for r in rows if r["metric"] == "ndcg" and r["k"] == k], key=lambda r: -r["delta"])
    shown = sorted(
        [r for r in rows if r["k"] == k],
        key=lambda r: (list(MEASURES).index(r["metric"]) if r["metric"] in MEASURES else 99, -abs(r["delta"])),
    )
    return {
        "baseline": baseline, "bootstrap": result.config.bootstrap, "permutations": result.config.permutations,
        "n_rows": len(rows), "adjust": result.config.adjust, "alpha": ALPHA,
        "chart": forest_chart(main, f"Δ {metric_label('ndcg', k)} (left ranker minus right ranker)"),
        "shown": [_comparison_cells(r) for r in shown],
        "others": [_comparison_cells(r) for r in rows if r["k"] != k],
    }  # fmt: skip


# --- segments --------------------------------------------------------------------------------------------------


SEGMENT_ORDER = {"head": 0, "torso": 1, "tail": 2}


def segments_view(result: EvaluationResult, order: list[str]) -> dict | None:
    segments = result.segments.filter(pl.col("k") == result.k)
    if segments.height == 0:
        return None
    values = {(r["ranker"], r["segment_type"], r["segment"]): r
              for r in segments.filter(pl.col("metric") == "ndcg").iter_rows(named=True)}  # fmt: skip
    irrelevant = {(r["ranker"], r["segment_type"], r["segment"]): r["value"]
                  for r in segments.filter(pl.col("metric") == "share_irrelevant").iter_rows(named=True)}  # fmt: skip
    keys = sorted({key[1:] for key in values},
                  key=lambda key: (key[0] != "traffic", key[0], SEGMENT_ORDER.get(key[1], 9), key[1]))  # fmt: skip
    rows = []
    for segment_type, segment in keys:
        present = [values[(r, segment_type, segment)] for r in order if (r, segment_type, segment) in values]
        best = max((v["value"] for v in present), default=None)
        cells = []
        for ranker in order:
            row = values.get((ranker, segment_type, segment))
            cells.append(None if row is None else {
                "value": num(row["value"]), "best": len(order) > 1 and row["value"] == best,
                "irrelevant": num(irrelevant.get((ranker, segment_type, segment)), 3),
            })  # fmt: skip
        rows.append({"type": segment_type, "segment": segment,
                     "n_queries": max((v["n_queries"] for v in present), default=0), "cells": cells})  # fmt: skip
    return {"rankers": order, "label": metric_label("ndcg", result.k), "rows": rows}


# --- run: cost, tokens, time -------------------------------------------------------------------------------------


def _stage_names(manifest: dict) -> list[str]:
    stages = []
    for key in ("llm_calls", "tokens", "cost_usd", "seconds"):
        for stage in manifest.get(key) or {}:
            if stage not in stages and stage != "total":
                stages.append(stage)
    return stages


def _money(value: Any) -> str:
    return DASH if value is None else f"${value:.4f}"


def _seconds(value: Any) -> str:
    return DASH if value is None else f"{value:.1f}s"


def run_view(manifest: dict | None, context: dict | None) -> dict:
    if not manifest:
        return {"manifest": False, "sources": [(k, v) for k, v in (context or {}).items() if v]}
    stages = _stage_names(manifest)
    tokens, cost = manifest.get("tokens") or {}, manifest.get("cost_usd") or {}
    seconds, calls = manifest.get("seconds") or {}, manifest.get("llm_calls") or {}
    hits, errors = manifest.get("cache_hits") or {}, manifest.get("errors") or {}
    rows = []
    for stage in stages:
        t = tokens.get(stage)
        count = lambda name: DASH if not t else f"{t.get(name, 0):,}"  # noqa: E731
        rows.append({
            "stage": stage, "calls": calls.get(stage, DASH), "hits": hits.get(stage, DASH),
            "errors": errors.get(stage, DASH), "prompt": count("prompt"), "cached": count("cached"),
            "completion": count("completion"), "cost": _money(cost.get(stage)), "time": _seconds(seconds.get(stage)),
        })  # fmt: skip
    total_tokens = {k: sum((tokens.get(s) or {}).get(k, 0) for s in stages) for k in ("prompt", "cached", "completion")}
    total = {
        "calls": sum(v for v in calls.values() if isinstance(v, int)),
        "hits": sum(v for v in hits.values() if isinstance(v, int)),
        "errors": sum(v for v in errors.values() if isinstance(v, int)),
        **{k: f"{v:,}" for k, v in total_tokens.items()},
        "cost": None if cost.get("total") is None else _money(cost["total"]),
        "time": None if seconds.get("total") is None else _seconds(seconds["total"]),
    }
    llm = (manifest.get("config") or {}).get("llm") or {}
    models = [(stage, (llm.get(stage) or {}).get("model")) for stage in ("guidelines", "captions", "annotate")
              if llm.get(stage)]  # fmt: skip
    facts = [("run", manifest.get("run_id")), ("status", manifest.get("status")),
             ("started", when(manifest.get("started_at"))), ("finished", when(manifest.get("finished_at"))),
             ("log rows", manifest.get("pairs_in_log")), ("unique pairs", manifest.get("pairs_unique")),
             ("queries", manifest.get("queries")), ("rae-ray", (manifest.get("versions") or {}).get("rae_ray"))]
    return {"manifest": True, "facts": [(k, v) for k, v in facts if v is not None], "models": models, "rows": rows,
            "total": total}  # fmt: skip


# --- the page --------------------------------------------------------------------------------------------------


def _cards(result: EvaluationResult, manifest: dict | None, order: list[str]) -> list[tuple[str, str]]:
    cards = [("rankers", str(result.rankers["ranker"].n_unique())),
             ("queries", f'{result.queries["query"].n_unique():,}')]  # fmt: skip
    if order:
        cards.append((f"best nDCG@{result.k}", order[0]))
    if manifest:
        if manifest.get("pairs_unique") is not None:
            cards.append(("judged pairs", f'{manifest["pairs_unique"]:,}'))
        cards.append(("cost", _money((manifest.get("cost_usd") or {}).get("total"))))
        tokens = manifest.get("tokens") or {}
        total_tokens = sum(sum(v for v in (t or {}).values() if isinstance(v, int)) for t in tokens.values()
                           if isinstance(t, dict))  # fmt: skip
        cards.append(("tokens", f"{total_tokens:,}"))
        if (manifest.get("seconds") or {}).get("total") is not None:
            cards.append(("wall time", _seconds(manifest["seconds"]["total"])))
    if result.agreement is not None:
        main = result.agreement.summary.filter(pl.col("kind") == "judge_vs_human")
        if main.height:
            cards.append(("judge vs human", pct(main["exact"][0])))
    return cards


def _labels_from(manifest: dict | None, context: dict | None) -> dict:
    if context and context.get("labels"):
        return {"file": context["labels"], "column": context.get("label_column")}
    if manifest:
        return {"model": (((manifest.get("config") or {}).get("llm") or {}).get("annotate") or {}).get("model")}
    return {}


def _sample_data(manifest: dict | None, context: dict | None) -> bool:
    """The inputs are the bundled chorus / Icecat sample (its attribution travels with it)."""
    sources = []
    if manifest:
        sources.append(str(((manifest.get("config") or {}).get("input") or {}).get("log", "")))
    if context:
        sources += [str(v) for v in context.values() if v]
    return any("sample:" in s or "chorus" in s for s in sources)


def page_view(result: EvaluationResult, manifest: dict | None, context: dict | None = None) -> dict:
    """Everything the page shows; context: where the inputs came from (offline runs: labels, label_column, log,
    human)."""
    names = grade_names(manifest)
    order = ranker_order(result.rankers, result.k)
    return {
        "run_id": (manifest or {}).get("run_id") or result.root.rstrip("/").rsplit("/", 1)[-1],
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "simulated": result.simulated or bool((manifest or {}).get("simulated")),
        "labels_from": _labels_from(manifest, context),
        "cards": _cards(result, manifest, order),
        "rankers": rankers_view(result, order) if order else None,
        "comparisons": comparisons_view(result),
        "segments": segments_view(result, order),
        "worst": worst_view(result, order, names),
        "regressions": regressions_view(result, names),
        "agreement": agreement_view(result, names),
        "review": review_view(result),
        "confidence": confidence_view(result.review_queue, manifest),
        "run": run_view(manifest, context),
        "files": sorted(result.files),
        "sample_data": _sample_data(manifest, context),
        "root": result.root,
    }  # fmt: skip
