"""Geometry of the report's inline SVG charts (coordinates as text); templates/charts.html.j2 draws them."""

from __future__ import annotations

import math
from typing import Any

from rae_ray.report.format import clip, missing, p_text, pct, signed

__all__ = ["agreement_chart", "ci_bar", "forest_chart", "nice_ticks"]

AGREEMENT_COLORS = {"judge_vs_human": "#1f5fbf", "judge_vs_rater": "#6f9be0", "human_vs_human": "#2f9e5b"}
SIGNIFICANT, NOT_SIGNIFICANT = "#1f5fbf", "#8a93a3"


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
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


def ci_bar(value: Any, low: Any, high: Any, scale: tuple[float, float] = (0.0, 1.0)) -> dict | None:
    """A 150x14 strip: the interval as a bar on the scale (shared by the rows of a table), the value as a dot."""
    if missing(value):
        return None
    width, pad = 150, 4
    span = max(scale[1] - scale[0], 1e-9)
    x = lambda v: pad + (width - 2 * pad) * max(0.0, min(1.0, (v - scale[0]) / span))  # noqa: E731
    bar = None
    if not missing(low) and not missing(high):
        bar = {"x": f"{x(low):.1f}", "width": f"{max(1.0, x(high) - x(low)):.1f}"}
    return {"width": width, "pad": pad, "end": width - pad, "bar": bar, "dot": f"{x(value):.1f}"}


def forest_chart(rows: list[dict], title: str) -> dict | None:
    """Deltas with CI whiskers, one line per comparison (rows: label, delta, ci_low, ci_high, p_adjusted,
    significant); a filled dot is significant after adjustment."""
    if not rows:
        return None
    label_w, value_w, plot_w, row_h, top, bottom = 230, 270, 420, 30, 34, 34
    width, height = label_w + plot_w + value_w, top + row_h * len(rows) + bottom
    lows = [r["ci_low"] if not missing(r["ci_low"]) else r["delta"] for r in rows]
    highs = [r["ci_high"] if not missing(r["ci_high"]) else r["delta"] for r in rows]
    low, high = min(min(lows), 0.0), max(max(highs), 0.0)
    pad = 0.08 * max(high - low, 1e-6)
    ticks = nice_ticks(low - pad, high + pad)
    low, high = min(ticks[0], low - pad), max(ticks[-1], high + pad)
    x = lambda v: label_w + plot_w * (v - low) / (high - low)  # noqa: E731
    axis_y = top + row_h * len(rows) + 4
    lines = []
    for i, row in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        color = SIGNIFICANT if row["significant"] else NOT_SIGNIFICANT
        whisker = None
        if not missing(row["ci_low"]) and not missing(row["ci_high"]):
            whisker = {"x1": f"{x(row['ci_low']):.1f}", "x2": f"{x(row['ci_high']):.1f}",
                       "y1": f"{cy - 6:.1f}", "y2": f"{cy + 6:.1f}"}  # fmt: skip
        lines.append({
            "cy": f"{cy:.1f}", "text_y": f"{cy + 4:.1f}", "stripe_y": f"{cy - row_h / 2:.1f}" if i % 2 == 0 else None,
            "label": clip(row["label"], 40), "full_label": row["label"], "color": color,
            "fill": color if row["significant"] else "#ffffff", "whisker": whisker, "dot": f"{x(row['delta']):.1f}",
            "delta": signed(row["delta"]),
            "summary": f"{signed(row['delta'])} [{signed(row['ci_low'], 3)}, {signed(row['ci_high'], 3)}]  "
                      f"{p_text(row['p_adjusted'])}",
        })  # fmt: skip
    return {
        "width": width, "height": height, "title": title, "label_w": label_w, "label_end": label_w - 12,
        "value_x": label_w + plot_w + 12, "grid_top": top - 6, "axis_top": top - 8, "axis_y": axis_y,
        "tick_y": axis_y + 16, "row_h": row_h,
        "ticks": [{"x": f"{x(t):.1f}", "text": "0" if abs(t) < 1e-12 else f"{t:+.2f}"} for t in ticks],
        "zero": f"{x(0):.1f}", "rows": lines,
    }  # fmt: skip


def agreement_chart(rows: list[dict]) -> dict | None:
    """Paired horizontal bars, exact agreement and Cohen's kappa per comparison (rows: kind, label, exact,
    cohen_kappa), coloured by kind."""
    if not rows:
        return None
    label_w, plot_w, row_h, top = 190, 280, 34, 50
    width, height = label_w + 2 * plot_w + 60, top + row_h * len(rows) + 12
    panels = []
    for j, (name, key) in enumerate((("exact agreement", "exact"), ("Cohen's kappa", "cohen_kappa"))):
        x0 = label_w + j * (plot_w + 30)
        bars = []
        for i, row in enumerate(rows):
            value = row[key]
            if missing(value):
                continue
            y = top + row_h * i + 6
            w = plot_w * max(0.0, min(1.0, value))
            bars.append({
                "y": y, "width": f"{w:.1f}", "color": AGREEMENT_COLORS.get(row["kind"], "#888"),
                "title": f"{row['label']}: {value:.4f}", "text_x": f"{x0 + w + 4:.1f}", "text_y": y + 14,
                "text": pct(value) if key == "exact" else f"{value:.3f}",
            })  # fmt: skip
        ticks = [{"x": f"{x0 + plot_w * t:.1f}", "text": f"{t:g}"} for t in (0, 0.25, 0.5, 0.75, 1.0)]
        panels.append({"x0": x0, "name": name, "ticks": ticks, "bars": bars})
    labels = [{"y": top + row_h * i + 20, "text": clip(row["label"], 30)} for i, row in enumerate(rows)]
    return {
        "width": width, "height": height, "bar_height": row_h - 14, "grid_top": top - 8, "grid_bottom": height - 8,
        "tick_y": top - 16, "label_end": label_w - 10, "panels": panels, "labels": labels,
    }  # fmt: skip
