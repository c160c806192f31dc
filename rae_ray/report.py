"""report.html: one self-contained page a person reads (no scripts, no external styles, fonts or images).

Charts are inline SVG. Every piece of data (queries, product titles, reasoning, ranker names) goes through
`esc`, and a Content-Security-Policy forbids scripts altogether, so an untrusted product title stays text.
"""

from __future__ import annotations

import html
import itertools
import math
from datetime import datetime, timezone
from typing import Any

import polars as pl

from rae_ray.evaluation import EvaluationResult
from rae_ray.io import RunLayout, Storage
from rae_ray.metrics.compare import ALPHA
from rae_ray.metrics.measures import MEASURES

__all__ = ["render_report", "write_report"]

MAX_HARD = 25  # hard disagreements listed in the report
MAX_PRODUCTS = 3  # products listed per query in the report; the parquet files hold all
METRIC_NAMES = {
    "ndcg": "nDCG",
    "precision": "P",
    "precision_top": "P(top grade)",
    "share_irrelevant": "irrelevant",
    "mean_grade": "mean grade",
}
DEFAULT_GRADE_NAMES = {2: "highly relevant", 1: "acceptable substitute", 0: "irrelevant"}
KIND_NAMES = {"judge_vs_human": "judge vs human", "judge_vs_rater": "judge vs one rater", "human_vs_human": "human vs human"}
CHANGE_NAMES = {  # (tally, per product)
    "added_irrelevant": ("new irrelevant in top k", "new in top k"),
    "promoted_irrelevant": ("irrelevant ranked higher", "ranked higher"),
    "dropped_relevant": ("relevant dropped from top k", "dropped"),
    "reordered": ("relevant products reordered", "reordered"),
}
REASON_TEXT = {
    "hard_disagreement": "judge and human two or more grades apart",
    "disagreement": "judge and human one grade apart (more dissenting raters first)",
    "stage_error": "the judge gave no grade (stage error)",
    "boundary": "middle grade on a product a finding rests on (worst queries, regressions)",
}

CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#d9dee7; --soft:#f4f6f9; --accent:#1f5fbf; --good:#1d7a46;
  --bad:#b3261e; --warn-bg:#fff4d6; --warn-line:#e0a800; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color:var(--ink); background:#fff; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:19px; margin:36px 0 10px; padding-top:8px; border-top:2px solid var(--line); }
h3 { font-size:15px; margin:20px 0 8px; }
p { margin:6px 0 10px; }
.sub { color:var(--muted); }
.small { font-size:12px; }
nav { margin:14px 0 4px; display:flex; flex-wrap:wrap; gap:6px 14px; }
nav a { color:var(--accent); text-decoration:none; }
nav a:hover { text-decoration:underline; }
.banner { border:2px solid var(--warn-line); background:var(--warn-bg); border-radius:8px; padding:12px 16px;
  margin:16px 0; font-size:15px; }
.banner strong { color:#7a4b00; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(150px, 1fr)); gap:10px; margin:16px 0; }
.card { background:var(--soft); border-radius:8px; padding:10px 12px; }
.card .v { font-size:20px; font-weight:600; }
.card .l { color:var(--muted); font-size:12px; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; margin:6px 0 12px; font-variant-numeric:tabular-nums; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; font-size:13px; white-space:nowrap; }
td.n, th.n { text-align:right; white-space:nowrap; }
td.c { text-align:center; }
tr.best td:first-child { font-weight:600; }
.sig { color:var(--good); font-weight:600; }
.ns { color:var(--muted); }
.neg { color:var(--bad); }
.pill { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; background:var(--soft);
  border:1px solid var(--line); white-space:nowrap; }
.g0 { background:#fde8e6; border-color:#f3b8b2; }
.g1 { background:#fff1d1; border-color:#f0d08a; }
.g2 { background:#e3f3e8; border-color:#a9d8b8; }
.gnull { background:#eceff3; }
.reason { color:var(--muted); font-size:12.5px; max-width:520px; }
.q { font-weight:600; }
details { margin:6px 0; border:1px solid var(--line); border-radius:6px; padding:4px 10px; }
details > summary { cursor:pointer; padding:4px 0; font-weight:600; }
details[open] > summary { margin-bottom:4px; }
ul.products { margin:2px 0; padding-left:18px; }
ul.products li { margin:3px 0; }
svg { display:block; max-width:100%; height:auto; }
svg text { font-family:inherit; }
.legend { color:var(--muted); font-size:12px; margin:2px 0 8px; }
.heat td.cell { text-align:center; min-width:64px; }
.grid2 { display:flex; flex-wrap:wrap; gap:0 48px; align-items:flex-start; }
.note { background:var(--soft); border-left:3px solid var(--line); padding:8px 12px; border-radius:4px; }
footer { margin-top:40px; color:var(--muted); font-size:12px; border-top:1px solid var(--line); padding-top:12px; }
code { font-size:12.5px; background:var(--soft); padding:1px 4px; border-radius:3px; }
"""


# --- formatting ----------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """HTML-escaped text of any value ('' for None)."""
    return "" if value is None else html.escape(str(value), quote=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 4) -> str:
    return "–" if _missing(value) else f"{value:.{digits}f}"


def signed(value: Any, digits: int = 4) -> str:
    return "–" if _missing(value) else f"{value:+.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    return "–" if _missing(value) else f"{100 * value:.{digits}f}%"


def p_text(value: Any) -> str:
    if _missing(value):
        return "–"
    return "&lt;0.0001" if value < 1e-4 else f"{value:.4f}"


def clip(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def metric_label(metric: str, k: int | None = None) -> str:
    name = METRIC_NAMES.get(metric, metric)
    return f"{name}@{k}" if k is not None else name


def grade_pill(grade: Any, names: dict[int, str]) -> str:
    if _missing(grade):
        return '<span class="pill gnull">no grade</span>'
    grade = int(grade)
    css = f"g{min(grade, 2)}" if grade >= 0 else "gnull"
    return f'<span class="pill {css}" title="{esc(names.get(grade, ""))}">{grade} {esc(names.get(grade, ""))}</span>'


def table(headers: list[tuple[str, str]], rows: list[list[str]], css: str = "") -> str:
    """headers: (html, class); rows: cells as html (already escaped)."""
    head = "".join(f'<th class="{c}">{h}</th>' for h, c in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="{headers[i][1]}">{cell}</td>' for i, cell in enumerate(row)) + "</tr>" for row in rows
    )
    return f'<div class="scroll"><table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


# --- charts --------------------------------------------------------------------------------------------------


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    span = max(high - low, 1e-9)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-6:
        ticks.append(round(value, 10))
        value += step
    return ticks


def ci_bar(value: Any, low: Any, high: Any, scale: tuple[float, float] = (0.0, 1.0)) -> str:
    """A 150x14 inline SVG: the interval as a bar on the scale (shared by the rows of a table), the value as a dot."""
    if _missing(value):
        return ""
    width, pad = 150, 4
    span = max(scale[1] - scale[0], 1e-9)
    x = lambda v: pad + (width - 2 * pad) * max(0.0, min(1.0, (v - scale[0]) / span))  # noqa: E731
    parts = [f'<svg width="{width}" height="14" viewBox="0 0 {width} 14" role="img" aria-label="interval">',
             f'<line x1="{pad}" y1="7" x2="{width - pad}" y2="7" stroke="#d9dee7" stroke-width="2"/>']
    if not _missing(low) and not _missing(high):
        parts.append(f'<rect x="{x(low):.1f}" y="3" width="{max(1.0, x(high) - x(low)):.1f}" height="8" rx="3" fill="#a9c3ea"/>')
    parts.append(f'<circle cx="{x(value):.1f}" cy="7" r="3.5" fill="#1f5fbf"/></svg>')
    return "".join(parts)


def forest_chart(rows: list[dict], title: str) -> str:
    """Deltas with CI whiskers, one line per comparison; filled dot = significant after adjustment."""
    if not rows:
        return ""
    label_w, value_w, plot_w, row_h, top, bottom = 230, 270, 420, 30, 34, 34
    width, height = label_w + plot_w + value_w, top + row_h * len(rows) + bottom
    lows = [r["ci_low"] if not _missing(r["ci_low"]) else r["delta"] for r in rows]
    highs = [r["ci_high"] if not _missing(r["ci_high"]) else r["delta"] for r in rows]
    low, high = min(min(lows), 0.0), max(max(highs), 0.0)
    pad = 0.08 * max(high - low, 1e-6)
    ticks = _nice_ticks(low - pad, high + pad)
    low, high = min(ticks[0], low - pad), max(ticks[-1], high + pad)
    x = lambda v: label_w + plot_w * (v - low) / (high - low)  # noqa: E731
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
           f'<text x="{label_w}" y="16" font-size="13" font-weight="600" fill="#1d2330">{esc(title)}</text>']
    axis_y = top + row_h * len(rows) + 4
    for tick in ticks:
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{axis_y}" stroke="#eef1f5"/>')
        tick_text = "0" if abs(tick) < 1e-12 else f"{tick:+.2f}"
        out.append(f'<text x="{tx:.1f}" y="{axis_y + 16}" font-size="11" fill="#5b6475" text-anchor="middle">{tick_text}</text>')
    out.append(f'<line x1="{x(0):.1f}" y1="{top - 8}" x2="{x(0):.1f}" y2="{axis_y}" stroke="#5b6475" stroke-width="1.2"/>')
    out.append(f'<text x="{label_w + plot_w + 12}" y="16" font-size="11" fill="#5b6475">Δ [95% CI]   p adj.</text>')
    for i, row in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        significant = row["significant"]
        color = "#1f5fbf" if significant else "#8a93a3"
        if i % 2 == 0:
            out.append(f'<rect x="0" y="{cy - row_h / 2:.1f}" width="{width}" height="{row_h}" fill="#f8f9fb"/>')
        out.append(f'<text x="{label_w - 12}" y="{cy + 4:.1f}" font-size="12.5" fill="#1d2330" text-anchor="end">'
                   f'{esc(clip(row["label"], 40))}</text>')
        if not _missing(row["ci_low"]) and not _missing(row["ci_high"]):
            x1, x2 = x(row["ci_low"]), x(row["ci_high"])
            out.append(f'<line x1="{x1:.1f}" y1="{cy:.1f}" x2="{x2:.1f}" y2="{cy:.1f}" stroke="{color}" stroke-width="2"/>')
            for xe in (x1, x2):
                out.append(f'<line x1="{xe:.1f}" y1="{cy - 6:.1f}" x2="{xe:.1f}" y2="{cy + 6:.1f}" stroke="{color}" stroke-width="2"/>')
        fill = color if significant else "#ffffff"
        out.append(f'<circle cx="{x(row["delta"]):.1f}" cy="{cy:.1f}" r="5" fill="{fill}" stroke="{color}" stroke-width="2">'
                   f'<title>{esc(row["label"])}: {signed(row["delta"])}</title></circle>')
        ci = f'[{signed(row["ci_low"], 3)}, {signed(row["ci_high"], 3)}]'
        out.append(f'<text x="{label_w + plot_w + 12}" y="{cy + 4:.1f}" font-size="12" fill="{color}">'
                   f'{signed(row["delta"])} {ci}  {p_text(row["p_adjusted"])}</text>')
    out.append("</svg>")
    return "".join(out)


def agreement_chart(rows: list[dict]) -> str:
    """Paired horizontal bars: exact agreement and Cohen's kappa per comparison, coloured by kind."""
    if not rows:
        return ""
    colors = {"judge_vs_human": "#1f5fbf", "judge_vs_rater": "#6f9be0", "human_vs_human": "#2f9e5b"}
    label_w, plot_w, row_h, top = 190, 280, 34, 50
    width, height = label_w + 2 * plot_w + 60, top + row_h * len(rows) + 12
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="agreement">']
    for j, (name, key) in enumerate((("exact agreement", "exact"), ("Cohen's kappa", "cohen_kappa"))):
        x0 = label_w + j * (plot_w + 30)
        out.append(f'<text x="{x0}" y="16" font-size="12.5" font-weight="600" fill="#1d2330">{name}</text>')
        for tick in (0, 0.25, 0.5, 0.75, 1.0):
            tx = x0 + plot_w * tick
            out.append(f'<line x1="{tx:.1f}" y1="{top - 8}" x2="{tx:.1f}" y2="{height - 8}" stroke="#eef1f5"/>')
            out.append(f'<text x="{tx:.1f}" y="{top - 16}" font-size="10" fill="#5b6475" text-anchor="middle">{tick:g}</text>')
        out.append(f'<line x1="{x0}" y1="{top - 8}" x2="{x0}" y2="{height - 8}" stroke="#b9c0cc"/>')
        for i, row in enumerate(rows):
            value = row[key]
            y = top + row_h * i + 6
            if _missing(value):
                continue
            w = plot_w * max(0.0, min(1.0, value))
            out.append(f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{row_h - 14}" rx="3" fill="{colors.get(row["kind"], "#888")}">'
                       f'<title>{esc(row["label"])}: {value:.4f}</title></rect>')
            text = pct(value) if key == "exact" else f"{value:.3f}"
            out.append(f'<text x="{x0 + w + 4:.1f}" y="{y + 14}" font-size="11" fill="#1d2330">{text}</text>')
    for i, row in enumerate(rows):
        y = top + row_h * i + 20
        out.append(f'<text x="{label_w - 10}" y="{y}" font-size="12" fill="#1d2330" text-anchor="end">{esc(clip(row["label"], 30))}</text>')
    out.append("</svg>")
    return "".join(out)


# --- sections ------------------------------------------------------------------------------------------------


def _grade_names(manifest: dict | None) -> dict[int, str]:
    try:
        grades = manifest["config"]["scale"]["grades"]
        return {int(g["grade"]): str(g["name"]).replace("_", " ") for g in grades}
    except (KeyError, TypeError, ValueError):
        return dict(DEFAULT_GRADE_NAMES)


def _ranker_order(result: EvaluationResult) -> list[str]:
    main = result.rankers.filter((pl.col("metric") == "ndcg") & (pl.col("k") == result.k))
    ordered = main.sort(["value", "ranker"], descending=[True, False])["ranker"].to_list()
    rest = sorted(set(result.rankers["ranker"].to_list()) - set(ordered))
    return ordered + rest


def section_rankers(result: EvaluationResult) -> str:
    k = result.k
    order = _ranker_order(result)
    if not order:
        return '<h2 id="rankers">Rankers</h2><p class="note">No metrics: no ranker had a labelled product.</p>'
    rows_by = {(r["ranker"], r["metric"], r["k"]): r for r in result.rankers.iter_rows(named=True)}
    metrics = [m for m in MEASURES if any(key[1] == m for key in rows_by)]
    mains = [r for key, r in rows_by.items() if key[1] == "ndcg" and key[2] == k]
    lows = [r["ci_low"] if not _missing(r["ci_low"]) else r["value"] for r in mains]
    highs = [r["ci_high"] if not _missing(r["ci_high"]) else r["value"] for r in mains]
    scale = (max(0.0, math.floor(min(lows, default=0.0) * 10) / 10), min(1.0, math.ceil(max(highs, default=1.0) * 10) / 10))
    scale_text = f"{scale[0]:.1f} – {scale[1]:.1f}"
    headers = [("ranker", ""), (f"{metric_label('ndcg', k)} [95% CI]", "n"), (f'<span class="sub small">{scale_text}</span>', "")]
    headers += [(esc(metric_label(m, k)), "n") for m in metrics if m != "ndcg"] + [("queries", "n")]
    rows = []
    for i, ranker in enumerate(order):
        main = rows_by.get((ranker, "ndcg", k))
        cells = [f'<span class="q">{esc(ranker)}</span>' + (' <span class="pill g2">best</span>' if i == 0 and len(order) > 1 else "")]
        if main:
            cells += [f'{num(main["value"])} <span class="sub">[{num(main["ci_low"], 3)}, {num(main["ci_high"], 3)}]</span>',
                      ci_bar(main["value"], main["ci_low"], main["ci_high"], scale)]
        else:
            cells += ["–", ""]
        for m in metrics:
            if m == "ndcg":
                continue
            row = rows_by.get((ranker, m, k))
            cells.append(num(row["value"]) if row else "–")
        n = max((r["n_queries"] for key, r in rows_by.items() if key[0] == ranker and key[2] == k), default=0)
        cells.append(str(n))
        rows.append(cells)
    all_rows = []
    for ranker in order:
        for (r, m, kk), row in sorted(rows_by.items(), key=lambda item: (item[0][1], item[0][2])):
            if r == ranker:
                all_rows.append([esc(ranker), esc(metric_label(m, kk)), num(row["value"]),
                                 f'[{num(row["ci_low"], 3)}, {num(row["ci_high"], 3)}]', str(row["n_queries"])])
    ks = sorted(set(result.rankers["k"].to_list()))
    return (
        '<h2 id="rankers">Rankers</h2>'
        f'<p class="sub">Mean over queries at k = {k}, best nDCG first; 95% intervals from {result.config.bootstrap} '
        'bootstrap resamples of the queries. nDCG uses gain 2<sup>g</sup>−1 and the ideal order of every labelled '
        'product of the query; P counts grade ≥ 1; "irrelevant" is the share of labelled top-k products with grade 0 '
        '(lower is better).</p>'
        + table(headers, rows)
        + f'<details><summary>Every metric at k = {", ".join(map(str, ks))}</summary>'
        + table([("ranker", ""), ("metric", ""), ("value", "n"), ("95% CI", "n"), ("queries", "n")], all_rows)
        + "</details>"
    )


def _worse(row: dict) -> bool:
    """The left ranker does worse on this row's metric (a negative delta where higher is better, and vice versa)."""
    higher_is_better = MEASURES[row["metric"]].higher_is_better if row["metric"] in MEASURES else True
    return row["delta"] < 0 if higher_is_better else row["delta"] > 0


def _oriented(row: dict, baseline: str | None) -> dict:
    """A comparison as displayed: with no baseline, the better ranker on the left (delta >= 0 for higher-is-better)."""
    row = dict(row)
    better_high = MEASURES[row["metric"]].higher_is_better if row["metric"] in MEASURES else True
    flip = baseline is None and ((row["delta"] < 0) == better_high) and row["delta"] != 0
    if flip:
        row.update(
            ranker_a=row["ranker_b"], ranker_b=row["ranker_a"], delta=-row["delta"],
            ci_low=None if _missing(row["ci_high"]) else -row["ci_high"],
            ci_high=None if _missing(row["ci_low"]) else -row["ci_low"],
            wins=row["losses"], losses=row["wins"],
        )
    row["label"] = f'{row["ranker_a"]} − {row["ranker_b"]}'
    return row


def section_comparisons(result: EvaluationResult) -> str:
    table_rows = result.comparisons
    if table_rows.height == 0:
        return '<h2 id="comparisons">Comparisons</h2><p class="note">Fewer than two rankers with common queries.</p>'
    k, baseline = result.k, result.config.baseline
    rows = [_oriented(r, baseline) for r in table_rows.iter_rows(named=True)]
    main = sorted([r for r in rows if r["metric"] == "ndcg" and r["k"] == k], key=lambda r: -r["delta"])
    chart = forest_chart(main, f"Δ {metric_label('ndcg', k)} (left ranker minus right ranker)")
    shown = [r for r in rows if r["k"] == k]
    shown.sort(key=lambda r: (list(MEASURES).index(r["metric"]) if r["metric"] in MEASURES else 99, -abs(r["delta"])))

    def cells(r: dict) -> list[str]:
        mark = '<span class="sig">yes</span>' if r["significant"] else '<span class="ns">no</span>'
        return [esc(r["ranker_a"]), esc(r["ranker_b"]), esc(metric_label(r["metric"], r["k"])),
                f'<span class="{"neg" if _worse(r) else ""}">{signed(r["delta"])}</span>',
                f'[{signed(r["ci_low"], 3)}, {signed(r["ci_high"], 3)}]', p_text(r["p_value"]), p_text(r["p_adjusted"]),
                mark, f'{r["wins"]} / {r["ties"]} / {r["losses"]}', str(r["n_queries"])]

    headers = [("ranker", ""), ("vs", ""), ("metric", ""), ("Δ", "n"), ("95% CI", "n"), ("p", "n"),
               (f"p ({esc(result.config.adjust)})", "n"), (f"significant (α={ALPHA})", "c"), ("wins / ties / losses", "n"),
               ("queries", "n")]
    others = [r for r in rows if r["k"] != k]
    pairing = (f"each ranker against the baseline <b>{esc(baseline)}</b>" if baseline
               else "every pair of rankers, the better one on the left")
    return (
        '<h2 id="comparisons">Comparisons</h2>'
        f'<p class="sub">Paired over the queries both rankers answered: {pairing}. Δ is the mean per-query '
        f'difference; 95% CI from {result.config.bootstrap} paired bootstrap resamples; p from a two-sided paired '
        f'randomization test ({result.config.permutations} sign flips), adjusted for the {len(rows)} comparisons of '
        f'the table ({esc(result.config.adjust)}). Filled dot: significant after adjustment. Wins count queries where '
        'the left ranker scores higher (for "irrelevant", higher is worse); red: the left ranker does worse.</p>'
        + chart
        + table(headers, [cells(r) for r in shown])
        + (f'<details><summary>Other cut-offs ({len(others)} rows)</summary>' + table(headers, [cells(r) for r in others])
           + "</details>" if others else "")
    )


def section_segments(result: EvaluationResult) -> str:
    segments = result.segments.filter(pl.col("k") == result.k)
    head = '<h2 id="segments">Segments</h2>'
    if segments.height == 0:
        return head + ('<p class="note">No segments: the log has neither <code>query_count</code> (head / torso / '
                       'tail traffic) nor <code>locale</code>.</p>')
    order = _ranker_order(result)
    ndcg = segments.filter(pl.col("metric") == "ndcg")
    irrelevant = segments.filter(pl.col("metric") == "share_irrelevant")
    segment_order = {"head": 0, "torso": 1, "tail": 2}
    keys = sorted({(r["segment_type"], r["segment"]) for r in ndcg.iter_rows(named=True)},
                  key=lambda key: (key[0] != "traffic", key[0], segment_order.get(key[1], 9), key[1]))
    values = {(r["ranker"], r["segment_type"], r["segment"]): r for r in ndcg.iter_rows(named=True)}
    irr = {(r["ranker"], r["segment_type"], r["segment"]): r["value"] for r in irrelevant.iter_rows(named=True)}
    headers = [("segment", ""), ("queries", "n")] + [(f"{esc(r)}<br><span class='sub'>{metric_label('ndcg', result.k)}"
                                                     f" · irrelevant</span>", "n") for r in order]
    rows = []
    for segment_type, segment in keys:
        n = max((v["n_queries"] for key, v in values.items() if key[1:] == (segment_type, segment)), default=0)
        cells = [f'<span class="sub">{esc(segment_type)}</span> <span class="q">{esc(segment)}</span>', str(n)]
        best = max((values[(r, segment_type, segment)]["value"] for r in order if (r, segment_type, segment) in values),
                   default=None)
        for ranker in order:
            row = values.get((ranker, segment_type, segment))
            if row is None:
                cells.append("–")
                continue
            strong = "<b>{}</b>" if len(order) > 1 and row["value"] == best else "{}"
            cells.append(strong.format(num(row["value"])) + f' <span class="sub">· {num(irr.get((ranker, segment_type, segment)), 3)}</span>')
        rows.append(cells)
    return (
        head + '<p class="sub">Mean per segment of queries. Traffic: head = the most frequent 20% of queries by '
        '<code>query_count</code>, torso the next 30%, tail the rest; locale where the log has one (a query seen in '
        'several locales counts in each). Bold: the best ranker of the segment.</p>' + table(headers, rows)
    )


def _product_item(row: dict, names: dict[int, str], extra: str = "") -> str:
    title = row.get("title")
    name = f'<span class="q">{esc(clip(title, 110))}</span> <span class="sub small">({esc(row["product_id"])})</span>' if title \
        else f'<span class="q">{esc(row["product_id"])}</span>'
    rank = f'#{row["rank"]} ' if not _missing(row.get("rank")) else ""
    reasoning = row.get("reasoning") or (f'error: {row["error"]}' if row.get("error") else "")
    return (f'<li>{esc(rank)}{name} {grade_pill(row.get("grade"), names)} {extra}'
            f'<div class="reason" title="{esc(reasoning)}">{esc(clip(reasoning, 200))}</div></li>')


def section_worst(result: EvaluationResult, names: dict[int, str]) -> str:
    worst = result.worst_queries
    head = '<h2 id="worst">Worst queries</h2>'
    if worst.height == 0:
        return head + '<p class="note">No worst queries.</p>'
    k = result.k
    parts = [head, f'<p class="sub">Per ranker, the {result.config.worst_n} queries with the largest share of '
             f'irrelevant products in the top {k} (ties: lower nDCG@{k} first), with the products the judge found '
             'irrelevant (or could not grade) and its reasoning.</p>']
    for i, ranker in enumerate(_ranker_order(result)):
        rows = worst.filter(pl.col("ranker") == ranker)
        if rows.height == 0:
            continue
        table_rows = []
        for (position,), group in rows.group_by(["position"], maintain_order=True):
            first = group.row(0, named=True)
            items = [_product_item(r, names) for r in group.iter_rows(named=True) if r["product_id"] is not None]
            more = ""
            if len(items) > MAX_PRODUCTS:
                more = f'<li class="sub">… and {len(items) - MAX_PRODUCTS} more in metrics/worst_queries.parquet</li>'
            products = (f'<ul class="products">{"".join(items[:MAX_PRODUCTS])}{more}</ul>' if items
                        else '<span class="sub">none</span>')
            table_rows.append([str(position), f'<span class="q">{esc(first["query"])}</span>',
                               pct(first["share_irrelevant"], 0), num(first["ndcg"], 3), products])
        parts.append(
            f'<details{" open" if i == 0 else ""}><summary>{esc(ranker)} <span class="sub">— {rows["query"].n_unique()} '
            'queries</span></summary>'
            + table([("#", "n"), ("query", ""), (f"irrelevant@{k}", "n"), (f"nDCG@{k}", "n"), ("offending products", "")],
                    table_rows) + "</details>"
        )
    return "".join(parts)


def section_regressions(result: EvaluationResult, names: dict[int, str]) -> str:
    regressed = result.regressions
    head = '<h2 id="regressions">Regressions</h2>'
    if regressed.height == 0:
        return head + '<p class="note">No query scores lower than under the baseline.</p>'
    k = result.k
    against = (f"against the baseline <b>{esc(result.config.baseline)}</b>" if result.config.baseline
               else "against each other ranker (no baseline was set; set one with <code>--baseline</code>)")
    parts = [head, f'<p class="sub">The largest per-query drops of nDCG@{k} of each ranker {against}, with the '
             'products behind them.</p>']
    pairs = regressed.select("ranker", "baseline").unique(maintain_order=True).rows()
    comparisons = {(r["ranker_a"], r["ranker_b"]): r for r in result.comparisons.filter(
        (pl.col("metric") == "ndcg") & (pl.col("k") == k)).iter_rows(named=True)}
    for i, (ranker, baseline) in enumerate(pairs):
        rows = regressed.filter((pl.col("ranker") == ranker) & (pl.col("baseline") == baseline))
        overall = comparisons.get((ranker, baseline))
        reverse = comparisons.get((baseline, ranker))
        delta = overall["delta"] if overall else (-reverse["delta"] if reverse else None)
        table_rows = []
        for (position,), group in rows.group_by(["position"], maintain_order=True):
            first = group.row(0, named=True)
            by_change: dict[str, list[str]] = {}
            for r in group.iter_rows(named=True):
                if r["product_id"] is None:
                    continue
                was = ""
                if r["baseline_rank"] is not None:
                    was = f' (was #{r["baseline_rank"]}' + (f' in {esc(baseline)})' if r["rank"] is None else ")")
                where = f'<span class="pill">{esc(CHANGE_NAMES.get(r["change"], (r["change"],) * 2)[1])}{was}</span>'
                by_change.setdefault(r["change"], []).append(_product_item(r, names, where))
            # Round robin over the kinds of change, so the few products shown cover each kind.
            items = [item for batch in itertools.zip_longest(*by_change.values()) for item in batch if item]
            changes = group.filter(pl.col("product_id").is_not_null())["change"].value_counts(sort=True)
            tally = " · ".join(f'{n} {esc(CHANGE_NAMES.get(c, (c,))[0])}' for c, n in changes.iter_rows())
            more = ""
            if len(items) > MAX_PRODUCTS:
                more = f'<li class="sub">… and {len(items) - MAX_PRODUCTS} more in metrics/regressions.parquet</li>'
            products = (f'<div class="small">{tally}</div><ul class="products">{"".join(items[:MAX_PRODUCTS])}{more}</ul>'
                        if items else '<span class="sub">relevant products reordered</span>')
            table_rows.append([str(position), f'<span class="q">{esc(first["query"])}</span>', num(first["value"], 3),
                               num(first["baseline_value"], 3), f'<span class="neg">{signed(first["delta"], 3)}</span>', products])
        summary = (f'{esc(ranker)} vs {esc(baseline)} <span class="sub">— overall Δ nDCG@{k} {signed(delta)}; '
                   f'{rows["query"].n_unique()} queries</span>')
        parts.append(
            f'<details{" open" if i == 0 else ""}><summary>{summary}</summary>'
            + table([("#", "n"), ("query", ""), (esc(ranker), "n"), (esc(baseline), "n"), ("Δ", "n"), ("products", "")],
                    table_rows) + "</details>"
        )
    return "".join(parts)


def _span(values: list[float], fmt) -> str:
    """"a–b" of the smallest and largest value, or "a" when they are equal."""
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def section_agreement(result: EvaluationResult, names: dict[int, str]) -> str:
    head = '<h2 id="agreement">Agreement with people</h2>'
    tables = result.agreement
    if tables is None:
        return head + ('<p class="note">No human labels were given. Pass <code>--human FILE --human-column COL '
                       '[--rater-columns a,b,c]</code> to <code>rae-ray metrics</code>, or set '
                       '<code>input.human_labels</code> in the run config, to see how far the judge can be trusted.</p>')
    coverage = tables.coverage
    summary_rows = []
    for r in tables.summary.iter_rows(named=True):
        label = "judge vs human" if r["kind"] == "judge_vs_human" else f'{r["rater_a"]} vs {r["rater_b"]}'
        summary_rows.append({**r, "label": label})
    chart = agreement_chart(summary_rows)
    rows = [[esc(KIND_NAMES.get(r["kind"], r["kind"])), esc(r["label"]), str(r["n"]), pct(r["exact"]),
             num(r["cohen_kappa"], 3), num(r["quadratic_weighted_kappa"], 3)] for r in summary_rows]
    people = [r for r in summary_rows if r["kind"] == "human_vs_human"]
    judge = [r for r in summary_rows if r["kind"] in ("judge_vs_human", "judge_vs_rater")]
    baseline_note = ""
    if people:
        exact = [r["exact"] for r in people if not _missing(r["exact"])]
        kappa = [r["cohen_kappa"] for r in people if not _missing(r["cohen_kappa"])]
        if exact and kappa:
            baseline_note = (f'<p>People agree with each other on {_span(exact, pct)} of pairs '
                             f'(Cohen\'s κ {_span(kappa, lambda v: f"{v:.3f}")}): the ceiling to hold the judge against.')
            versus_raters = [r["exact"] for r in judge if r["kind"] == "judge_vs_rater" and not _missing(r["exact"])]
            if versus_raters:
                baseline_note += f' The judge agrees with a single rater on {_span(versus_raters, pct)}.'
            baseline_note += "</p>"

    grades = list(result.grades)
    counts = {(r["judge_grade"], r["human_grade"]): r["n"] for r in tables.confusion.iter_rows(named=True)}
    total = max(1, sum(counts.values()))
    heat_rows = []
    for g_judge in reversed(grades):
        cells = [f'judge {grade_pill(g_judge, names)}']
        for g_human in reversed(grades):
            n = counts.get((g_judge, g_human), 0)
            share = n / total
            hue = "227,240,231" if g_judge == g_human else ("250,214,210" if abs(g_judge - g_human) >= 2 else "255,236,200")
            alpha = 0.25 + 0.75 * min(1.0, share * 4)
            cells.append(f'<span style="display:block;background:rgba({hue},{alpha:.2f});padding:4px 2px;border-radius:3px">'
                         f'{n}<br><span class="sub small">{pct(share)}</span></span>')
        heat_rows.append(cells)
    heat = table([("", "")] + [(f"human {grade_pill(g, names)}", "c") for g in reversed(grades)],
                 heat_rows, css="heat")
    per_grade = table(
        [("judge grade", ""), ("precision", "n"), ("recall", "n"), ("judge", "n"), ("human", "n")],
        [[grade_pill(r["grade"], names), pct(r["precision"]), pct(r["recall"]), str(r["n_judge"]), str(r["n_human"])]
         for r in tables.per_grade.sort("grade", descending=True).iter_rows(named=True)],
    )
    system = tables.system.row(0, named=True) if tables.system.height else {}
    order_rows = [[esc(r["ranker"]), num(r["judge_value"]), "–" if r["judge_rank"] is None else str(r["judge_rank"]),
                   num(r["human_value"]), "–" if r["human_rank"] is None else str(r["human_rank"])]
                  for r in tables.rankers.iter_rows(named=True)]
    tau = system.get("kendall_tau")
    order = (f'<h3>Do judge and people order the rankers alike?</h3><p>Kendall\'s τ between the rankers\' '
             f'nDCG@{result.k} under judge labels and under human labels, on the {system.get("n_queries", 0)} '
             f'human-labelled queries: <b>{num(tau, 3)}</b> over {system.get("n_rankers", 0)} rankers'
             + (" (1 = same order)." if not _missing(tau) else ".") + "</p>"
             + table([("ranker", ""), (f"nDCG@{result.k} judge", "n"), ("rank", "n"), (f"nDCG@{result.k} human", "n"),
                      ("rank", "n")], order_rows))
    hard = tables.hard_disagreements
    rater_cols = [c for c in hard.columns if c not in ("query", "product_id", "title", "judge_grade", "human_grade",
                                                        "distance", "label", "reasoning")]
    hard_rows = []
    for r in hard.head(MAX_HARD).iter_rows(named=True):
        product = (f'{esc(clip(r.get("title"), 90))} <span class="sub small">({esc(r["product_id"])})</span>'
                   if r.get("title") else esc(r["product_id"]))
        raters = " · ".join(esc(r[c]) if r[c] is not None else "–" for c in rater_cols)
        hard_rows.append([f'<span class="q">{esc(r["query"])}</span>', product, grade_pill(r["judge_grade"], names),
                          grade_pill(r["human_grade"], names), f'<span class="small">{raters}</span>',
                          f'<div class="reason">{esc(clip(r["reasoning"], 320))}</div>'])
    rater_header = f'raters<br><span class="sub small">{" · ".join(esc(c) for c in rater_cols)}</span>'
    hard_html = (
        f'<h3>Hard disagreements ({hard.height})</h3><p class="sub">Judge and human two grades apart: in the paper, '
        f'half of these were human mistakes. First {MAX_HARD} here; all in <code>agreement/hard_disagreements.parquet</code>, '
        'and at the top of the review queue.</p>'
        + (table([("query", ""), ("product", ""), ("judge", ""), ("human", ""), (rater_header, "c"),
                  ("judge's reasoning", "")], hard_rows) if hard_rows else '<p class="sub">None.</p>')
    )
    coverage_text = (f'{coverage["judged_pairs"]} of {_plural(coverage["human_pairs"], "human-labelled pair", "human-labelled pairs")} '
                     'have a judge grade'
                     + (f'; {_plural(coverage["judge_errors"], "judgement", "judgements")} failed' if coverage["judge_errors"] else "")
                     + (f'; {_plural(coverage["not_judged"], "pair was", "pairs were")} not judged in this run'
                        if coverage["not_judged"] else "") + ".")
    return (
        head + f'<p class="sub">Human labels: <code>{esc(result.human_source)}</code>. {esc(coverage_text)} '
        'Exact agreement, Cohen\'s κ and quadratic-weighted κ on the project\'s grades; "judge vs one rater" and '
        '"human vs human" use the individual raters, each pair on the pairs both labelled.</p>'
        + baseline_note + chart
        + '<p class="legend">■ <span style="color:#1f5fbf">judge vs human</span> · ■ <span style="color:#6f9be0">judge '
        'vs one rater</span> · ■ <span style="color:#2f9e5b">human vs human</span></p>'
        + table([("kind", ""), ("comparison", ""), ("pairs", "n"), ("exact", "n"), ("Cohen's κ", "n"),
                 ("quadratic κ", "n")], rows)
        + '<div class="grid2"><div><h3>Confusion (judge vs human)</h3>' + heat + '</div><div>'
        + '<h3>Judge per grade, against human</h3>' + per_grade + "</div></div>"
        + order + hard_html
    )


def section_review(result: EvaluationResult) -> str:
    queue = result.review_queue
    counts = dict(queue.group_by("review_reason").len().iter_rows()) if queue.height else {}
    rows = [[str(priority), f'<code>{esc(reason)}</code>', esc(REASON_TEXT[reason]), str(counts.get(reason, 0))]
            for reason, priority in sorted({"hard_disagreement": 1, "disagreement": 2, "stage_error": 3,
                                            "boundary": 4}.items(), key=lambda item: item[1])]
    return (
        '<h2 id="review">Review queue</h2>'
        f'<p class="sub">{queue.height} pairs for human annotators in <code>review/queue.csv</code> (and .parquet), '
        'most doubtful first; each pair once, under its first reason. Fill in the empty <code>human_grade</code> '
        'column.</p>'
        + table([("priority", "n"), ("reason", ""), ("meaning", ""), ("pairs", "n")], rows)
    )


def _stage_names(manifest: dict) -> list[str]:
    stages = []
    for key in ("llm_calls", "tokens", "cost_usd", "seconds"):
        for stage in (manifest.get(key) or {}):
            if stage not in stages and stage != "total":
                stages.append(stage)
    return stages


def _when(stamp: Any) -> Any:
    """An ISO timestamp as "YYYY-MM-DD HH:MM:SS UTC" (as given when it does not parse)."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def section_run(manifest: dict | None, context: dict | None) -> str:
    head = '<h2 id="run">Run: cost, tokens, time</h2>'
    if not manifest:
        source = ""
        if context:
            source = "".join(f"<li>{esc(k)}: <code>{esc(v)}</code></li>" for k, v in context.items() if v)
        return head + ('<p class="note">No run manifest: these metrics come from labels given to '
                       '<code>rae-ray metrics</code>, so no LLM cost or time was spent here.</p>'
                       + (f"<ul>{source}</ul>" if source else ""))
    stages = _stage_names(manifest)
    tokens = manifest.get("tokens") or {}
    cost = manifest.get("cost_usd") or {}
    seconds = manifest.get("seconds") or {}
    calls = manifest.get("llm_calls") or {}
    hits = manifest.get("cache_hits") or {}
    errors = manifest.get("errors") or {}
    rows = []
    for stage in stages:
        t = tokens.get(stage)
        count = lambda name: "–" if not t else f'{t.get(name, 0):,}'  # noqa: E731
        rows.append([esc(stage), str(calls.get(stage, "–")), str(hits.get(stage, "–")), str(errors.get(stage, "–")),
                     count("prompt"), count("cached"), count("completion"),
                     "–" if cost.get(stage) is None else f'${cost[stage]:.4f}',
                     "–" if seconds.get(stage) is None else f'{seconds[stage]:.1f}s'])
    total_tokens = {k: sum((tokens.get(s) or {}).get(k, 0) for s in stages) for k in ("prompt", "cached", "completion")}
    rows.append(["<b>total</b>", str(sum(v for v in calls.values() if isinstance(v, int))),
                 str(sum(v for v in hits.values() if isinstance(v, int))),
                 str(sum(v for v in errors.values() if isinstance(v, int))),
                 f'{total_tokens["prompt"]:,}', f'{total_tokens["cached"]:,}', f'{total_tokens["completion"]:,}',
                 "–" if cost.get("total") is None else f'<b>${cost["total"]:.4f}</b>',
                 "–" if seconds.get("total") is None else f'<b>{seconds["total"]:.1f}s</b>'])
    config = manifest.get("config") or {}
    llm = config.get("llm") or {}
    models = ", ".join(f"{esc(stage)}: <code>{esc((llm.get(stage) or {}).get('model'))}</code>"
                       for stage in ("guidelines", "captions", "annotate") if llm.get(stage))
    facts = [("run", manifest.get("run_id")), ("status", manifest.get("status")),
             ("started", _when(manifest.get("started_at"))), ("finished", _when(manifest.get("finished_at"))),
             ("log rows", manifest.get("pairs_in_log")), ("unique pairs", manifest.get("pairs_unique")),
             ("queries", manifest.get("queries")), ("rae-ray", (manifest.get("versions") or {}).get("rae_ray"))]
    fact_html = " · ".join(f'{esc(k)} <b>{esc(v)}</b>' for k, v in facts if v is not None)
    return (
        head + f'<p>{fact_html}</p>' + (f'<p class="sub">Models: {models}</p>' if models else "")
        + table([("stage", ""), ("LLM calls", "n"), ("cache hits", "n"), ("errors", "n"), ("prompt tokens", "n"),
                 ("cached", "n"), ("completion", "n"), ("cost", "n"), ("time", "n")], rows)
        + '<p class="sub small">Cost from the endpoint\'s reported usage priced by the config\'s table ("–" when the '
        'model has no price). Stage times are wall-clock.</p>'
    )


def _cards(result: EvaluationResult, manifest: dict | None) -> str:
    queries = result.queries["query"].n_unique()
    rankers = result.rankers["ranker"].n_unique()
    cards = [("rankers", str(rankers)), ("queries", f"{queries:,}")]
    best = _ranker_order(result)
    if best:
        cards.append((f"best nDCG@{result.k}", best[0]))
    if manifest:
        if manifest.get("pairs_unique") is not None:
            cards.append(("judged pairs", f'{manifest["pairs_unique"]:,}'))
        total = (manifest.get("cost_usd") or {}).get("total")
        cards.append(("cost", "–" if total is None else f"${total:.4f}"))
        tokens = manifest.get("tokens") or {}
        total_tokens = sum(sum(v for v in (t or {}).values() if isinstance(v, int)) for t in tokens.values()
                           if isinstance(t, dict))
        cards.append(("tokens", f"{total_tokens:,}"))
        seconds = (manifest.get("seconds") or {}).get("total")
        if seconds is not None:
            cards.append(("wall time", f"{seconds:.1f}s"))
    if result.agreement is not None:
        main = result.agreement.summary.filter(pl.col("kind") == "judge_vs_human")
        if main.height:
            cards.append(("judge vs human", pct(main["exact"][0])))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="l">{esc(label)}</div></div>' for label, v in cards
    ) + "</div>"


def _attribution(manifest: dict | None, context: dict | None) -> str:
    sources = []
    if manifest:
        sources.append(str(((manifest.get("config") or {}).get("input") or {}).get("log", "")))
    if context:
        sources += [str(v) for v in context.values() if v]
    if any("sample:" in s or "chorus" in s for s in sources):
        return ("<p>Data: the chorus / Icecat relevance sample (querqy/chorus, Apache-2.0; product data from Icecat, "
                "icecat.biz, under the Icecat Open Content License).</p>")
    return ""


def render_report(result: EvaluationResult, manifest: dict | None, context: dict | None = None) -> str:
    """The report page as one HTML string."""
    names = _grade_names(manifest)
    run_id = (manifest or {}).get("run_id") or result.root.rstrip("/").rsplit("/", 1)[-1]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    simulated = result.simulated or bool((manifest or {}).get("simulated"))
    banner = ""
    if simulated:
        banner = ('<div class="banner" role="alert"><strong>Simulated judge.</strong> These labels come from the '
                  'simulated endpoint (an offline heuristic of lexical and attribute matching, not an LLM; its '
                  'reasoning starts with "[simulated judge]"). The figures show the machinery working, not how good '
                  'a ranker is.</div>')
    if context and context.get("labels"):
        labels_from = f'labels <code>{esc(context["labels"])}</code> (column <code>{esc(context.get("label_column"))}</code>)'
    elif manifest:
        llm = ((manifest.get("config") or {}).get("llm") or {}).get("annotate") or {}
        labels_from = f'labels by the LLM judge <code>{esc(llm.get("model"))}</code>'
    else:
        labels_from = "labels as given"
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("rankers", "Rankers"), ("comparisons", "Comparisons"), ("segments", "Segments"), ("worst", "Worst queries"),
        ("regressions", "Regressions"), ("agreement", "Agreement with people"), ("review", "Review queue"),
        ("run", "Cost and time")))
    files = "".join(f"<li><code>{esc(name)}</code></li>" for name in sorted(result.files))
    body = "".join([
        f'<h1>Ranker evaluation <span class="sub">· {esc(run_id)}</span></h1>',
        f'<p class="sub">{labels_from} · generated {esc(generated)} · "Retrieve, Annotate, Evaluate, Repeat" '
        '(Hosseini et al., ECIR 2025)</p>',
        banner, _cards(result, manifest), f"<nav>{nav}</nav>",
        section_rankers(result), section_comparisons(result), section_segments(result),
        section_worst(result, names), section_regressions(result, names), section_agreement(result, names),
        section_review(result), section_run(manifest, context),
        f'<footer><details><summary>Files of this evaluation</summary><ul>{files}</ul></details>'
        + _attribution(manifest, context) + f'<p>rae-ray · {esc(result.root)}</p></footer>',
    ])
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"<title>rae-ray report · {esc(run_id)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def write_report(
    result: EvaluationResult, manifest: dict | None, storage: Storage, layout: RunLayout, context: dict | None = None
) -> str:
    """Render and write OUT/report.html; returns its URI. context: where the inputs came from (offline runs)."""
    storage.write_bytes(layout.report, render_report(result, manifest, context).encode("utf-8"))
    return layout.report
