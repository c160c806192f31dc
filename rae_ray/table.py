"""The tables printed at the end of a run and of `rae-ray metrics`: rankers, comparisons, agreement."""

from __future__ import annotations

import polars as pl

from rae_ray.metrics.evaluate import ranker_order

COLUMNS = (("ndcg", "nDCG"), ("precision", "P"), ("share_irrelevant", "irrelevant"), ("mean_grade", "mean grade"),
           ("judged", "judged"))


def ranker_table(rankers: pl.DataFrame, k: int) -> str:
    """Fixed-width table: one line per ranker, best nDCG@k first, with 95% CIs for nDCG; judged@k is coverage
    (share of the top k with a label)."""
    if rankers.is_empty():
        return "(no metrics: no ranker had a labelled product)"
    at_k = rankers.filter(pl.col("k") == k)
    if at_k.is_empty():
        k = int(rankers["k"].max())
        at_k = rankers.filter(pl.col("k") == k)
    wide = {}
    for row in at_k.iter_rows(named=True):
        wide.setdefault(row["ranker"], {"n": row["n_queries"]})[row["metric"]] = row
    order = ranker_order(at_k, k)
    headers = ["ranker", f"nDCG@{k} [95% CI]", f"P@{k}", f"irrelevant@{k}", f"mean grade@{k}", f"judged@{k}",
               "queries"]
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
        lines.append([ranker, ndcg_text, value("precision"), value("share_irrelevant"), value("mean_grade"),
                      value("judged"), str(entry["n"])])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)])


def comparison_lines(comparisons: pl.DataFrame, k: int, metric: str = "ndcg") -> list[str]:
    """Fixed-width lines of the comparisons of one metric@k: delta, CI, p, adjusted p, wins/ties/losses."""
    rows = comparisons.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    if rows.height == 0:
        return [f"(no comparisons of {metric}@{k}: fewer than two rankers)"]
    header = ["ranker_a", "ranker_b", f"delta {metric}@{k}", "95% CI", "p", "p adjusted", "W/T/L"]
    lines = [
        [r["ranker_a"], r["ranker_b"], f"{r['delta']:+.4f}",
         "-" if r["ci_low"] is None else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
         f"{r['p_value']:.4g}", f"{r['p_adjusted']:.4g}", f"{r['wins']}/{r['ties']}/{r['losses']}"]
        for r in rows.iter_rows(named=True)
    ]
    return _fixed_width(header, lines)


def agreement_lines(summary: pl.DataFrame, system: pl.DataFrame | None = None) -> list[str]:
    """Fixed-width lines of the agreement summary (judge vs human, judge vs rater, human vs human)."""
    header = ["kind", "a", "b", "pairs", "exact", "kappa", "quadratic kappa"]
    lines = [
        [r["kind"], r["rater_a"], r["rater_b"], str(r["n"]), f"{100 * r['exact']:.2f}%" if r["exact"] == r["exact"] else "-",
         f"{r['cohen_kappa']:.4f}", f"{r['quadratic_weighted_kappa']:.4f}"]
        for r in summary.iter_rows(named=True)
    ]
    out = _fixed_width(header, lines)
    if system is not None and system.height:
        row = system.row(0, named=True)
        out.append(f"Kendall's tau of the rankers' {row['metric']}@{row['k']}, judge vs human labels: "
                   f"{row['kendall_tau']:.4f} ({row['n_rankers']} rankers, {row['n_queries']} queries)")
    return out


def _fixed_width(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *(fmt(line) for line in lines)]
