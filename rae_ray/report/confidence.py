"""The report's confidence section (runs with votes): the histogram of confidence from the manifest, agreement
between samples and judges, and the least confident labels with their votes (from the review queue)."""

from __future__ import annotations

from typing import Any

import polars as pl

LEAST_CONFIDENT_SHOWN = 20
BAR_WIDTH = 100  # percent of the widest bar


def _figure(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def confidence_view(queue: pl.DataFrame, manifest: dict | None) -> dict | None:
    section = (manifest or {}).get("confidence")
    if not section:
        return None
    most = max((b["pairs"] for b in section["histogram"]), default=0) or 1
    bins = [{"range": f'{b["low"]:.1f}–{b["high"]:.1f}', "pairs": b["pairs"],
             "width": round(BAR_WIDTH * b["pairs"] / most, 1)} for b in section["histogram"]]
    agreement = section.get("agreement") or {}
    agree_rows = [{"between": name, "slot_pairs": part.get("slot_pairs", 0), "exact": _figure(part.get("exact")),
                   "kappa": _figure(part.get("cohen_kappa"))}
                  for name, part in (("all votes", agreement), ("samples of one judge", agreement.get("between_samples")),
                                     ("different judges", agreement.get("between_judges"))) if part and part.get("slot_pairs")]
    least = []
    if queue.height and "confidence" in queue.columns:
        low = queue.filter(pl.col("confidence") < 1).sort("confidence", maintain_order=True).head(LEAST_CONFIDENT_SHOWN)
        least = [{"query": r["query"], "product": r["title"] or r["product_id"], "product_id": r["product_id"],
                  "grade": r["judge_grade"], "confidence": _figure(r["confidence"]), "votes": r["votes"] or ""}
                 for r in low.iter_rows(named=True)]
    return {
        "judges": ", ".join(section.get("judges") or []), "samples": section.get("samples"),
        "votes_per_pair": section.get("votes_per_pair"), "mean": _figure(section.get("mean_confidence")),
        "unanimous": _figure(section.get("unanimous_share")), "failed": section.get("pairs_with_failed_votes", 0),
        "bins": bins, "agreement": agree_rows, "least": least,
    }
