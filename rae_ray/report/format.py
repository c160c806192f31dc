"""Text of numbers, grades and times as the report shows them (plain text: the templates escape it)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

DASH = "–"  # a missing value
DEFAULT_GRADE_NAMES = {2: "highly relevant", 1: "acceptable substitute", 0: "irrelevant"}


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 4) -> str:
    return DASH if missing(value) else f"{value:.{digits}f}"


def signed(value: Any, digits: int = 4) -> str:
    return DASH if missing(value) else f"{value:+.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    return DASH if missing(value) else f"{100 * value:.{digits}f}%"


def p_text(value: Any) -> str:
    if missing(value):
        return DASH
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def interval(low: Any, high: Any, digits: int = 3, sign: bool = False) -> str:
    """"[low, high]"."""
    show = signed if sign else num
    return f"[{show(low, digits)}, {show(high, digits)}]"


def clip(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def value_span(values: list[float], show) -> str:
    """"a–b" of the smallest and largest value, or "a" when they are equal."""
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low}–{high}"


def when(stamp: Any) -> Any:
    """An ISO timestamp as "YYYY-MM-DD HH:MM:SS UTC" (as given when it does not parse)."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return stamp


def grade_names(manifest: dict | None) -> dict[int, str]:
    """Grade -> name from the run's scale in the manifest, or the paper's three grades."""
    try:
        grades = manifest["config"]["scale"]["grades"]
        return {int(g["grade"]): str(g["name"]).replace("_", " ") for g in grades}
    except (KeyError, TypeError, ValueError):
        return dict(DEFAULT_GRADE_NAMES)


def grade_pill(grade: Any, names: dict[int, str]) -> dict:
    """A grade as a coloured pill: css class, text and its name as a tooltip (None: no tooltip)."""
    if missing(grade):
        return {"css": "gnull", "text": "no grade", "title": None}
    grade = int(grade)
    name = names.get(grade, "")
    return {"css": f"g{min(grade, 2)}" if grade >= 0 else "gnull", "text": f"{grade} {name}", "title": name}
