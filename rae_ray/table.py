"""The per-ranker table printed at the end of a run."""

from __future__ import annotations

import polars as pl

COLUMNS = (("ndcg", "nDCG"), ("precision", "P"), ("share_irrelevant", "irrelevant"), ("mean_grade", "mean grade"))


def ranker_table(rankers: pl.DataFrame, k: int) -> str:
    """Fixed-width table: one line per ranker, best nDCG@k first, with 95% CIs for nDCG."""
    if rankers.is_empty():
        return "(no metrics: no ranker had a labelled product)"
    at_k = rankers.filter(pl.col("k") == k)
    if at_k.is_empty():
        k = int(rankers["k"].max())
        at_k = rankers.filter(pl.col("k") == k)
    wide = {}
    for row in at_k.iter_rows(named=True):
        wide.setdefault(row["ranker"], {"n": row["n_queries"]})[row["metric"]] = row
    order = sorted(wide, key=lambda r: -(wide[r].get("ndcg", {}).get("value") or 0.0))
    headers = ["ranker", f"nDCG@{k} [95% CI]", f"P@{k}", f"irrelevant@{k}", f"mean grade@{k}", "queries"]
    lines = []
    for ranker in order:
        entry = wide[ranker]

        def value(metric: str) -> str:
            return f"{entry[metric]['value']:.4f}" if metric in entry else "-"

        ndcg = entry.get("ndcg")
        ndcg_text = "-"
        bounds = (ndcg or {}).get("ci_low"), (ndcg or {}).get("ci_high")
        if ndcg and all(b is not None and b == b for b in bounds):  # b == b: not NaN
            ndcg_text = f"{ndcg['value']:.4f} [{ndcg['ci_low']:.3f}, {ndcg['ci_high']:.3f}]"
        elif ndcg:  # metrics.bootstrap = 0, or too few queries: no interval
            ndcg_text = f"{ndcg['value']:.4f} [no CI]"
        lines.append([ranker, ndcg_text, value("precision"), value("share_irrelevant"), value("mean_grade"), str(entry["n"])])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])
