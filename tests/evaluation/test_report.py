"""report.html without a browser: one self-contained page, hostile text escaped by the templates, figures read
from the tables (the browser test is test_report_browser.py)."""

from __future__ import annotations

import dataclasses
import glob
import re
from pathlib import Path

import polars as pl
import pytest

import rae_ray
from rae_ray.report import render_report
from rae_ray.report.view import oriented

from .conftest import SCRIPT_TITLE, SMALL_MANIFEST, XSS_QUERY


def test_report_is_self_contained(small_result):
    html = render_report(small_result, SMALL_MANIFEST)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.IGNORECASE)
    assert re.search(r"""url\(\s*["']?https?:""", html) is None and "@import" not in html
    assert "default-src 'none'" in html  # and a CSP forbids anything that slipped through


def test_hostile_text_is_escaped_everywhere(small_result):
    html = render_report(small_result, SMALL_MANIFEST)
    assert SCRIPT_TITLE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert XSS_QUERY not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    # in text, in attributes (a reasoning's tooltip) and inside the SVG charts alike
    assert 'title="[simulated judge] a shoe horn &lt;b&gt;not&lt;/b&gt; shoes"' in html
    assert "<b>not</b>" not in html
    hostile = dataclasses.replace(small_result, comparisons=small_result.comparisons.with_columns(
        pl.lit('<svg onload="x">').alias("ranker_a")))
    html = render_report(hostile, SMALL_MANIFEST)
    assert '<svg onload="x">' not in html and "&lt;svg onload=&#34;x&#34;&gt; − old" in html  # the chart's label


def test_significance_is_read_from_the_comparisons_table(small_result):
    """The page shows the table's `significant` column as it is: flipping it flips the page."""
    def marks(result):
        html = render_report(result, SMALL_MANIFEST)
        return html.count('<span class="sig">yes</span>'), html.count('<span class="ns">no</span>')

    comparisons = small_result.comparisons
    assert marks(small_result) == (int(comparisons["significant"].sum()), int((~comparisons["significant"]).sum()))
    flipped = dataclasses.replace(small_result, comparisons=comparisons.with_columns(~pl.col("significant")))
    assert marks(flipped) == marks(small_result)[::-1]


def test_without_baseline_the_better_ranker_is_on_the_left():
    row = {"ranker_a": "a", "ranker_b": "b", "metric": "ndcg", "k": 10, "delta": -0.2, "ci_low": -0.3,
           "ci_high": -0.1, "wins": 1, "ties": 2, "losses": 5, "significant": True}  # fmt: skip
    shown = oriented(row, baseline=None)
    assert (shown["ranker_a"], shown["ranker_b"], shown["label"]) == ("b", "a", "b − a")
    assert (shown["delta"], shown["ci_low"], shown["ci_high"]) == (0.2, pytest.approx(0.1), pytest.approx(0.3))
    assert (shown["wins"], shown["losses"], shown["significant"], shown["worse"]) == (5, 1, True, False)
    # lower is better: a lower share of irrelevant products is the better side
    irrelevant = oriented({**row, "metric": "share_irrelevant", "delta": 0.2, "ci_low": 0.1, "ci_high": 0.3}, None)
    assert (irrelevant["ranker_a"], irrelevant["delta"], irrelevant["worse"]) == ("b", -0.2, False)
    kept = oriented(row, baseline="b")  # against a baseline the sides stay as stored
    assert (kept["ranker_a"], kept["delta"], kept["worse"]) == ("a", -0.2, True)


def test_templates_are_packaged():
    """Every template file is matched by pyproject's package-data, so an installed wheel can render the page."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(rae_ray.__file__).parent
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["rae_ray"]
    packaged = {path for pattern in patterns for path in glob.glob(pattern, root_dir=root)}  # as setuptools globs
    templates = {p.relative_to(root).as_posix() for p in (root / "report" / "templates").rglob("*") if p.is_file()}
    assert templates - packaged == set()
    assert "report/templates/report.html.j2" in templates and "report/templates/sections/rankers.html.j2" in templates


def test_judged_coverage_and_the_ideal_in_tables_and_report(small_result):
    from rae_ray.table import ranker_table

    # tv's t2 failed (no grade): each ranker's top 3 of tv is half labelled, the other queries fully.
    judged = small_result.rankers.filter(pl.col("metric") == "judged").sort("ranker")
    assert judged["ranker"].to_list() == ["new", "old"]
    assert judged["value"].to_list() == pytest.approx([(1 + 0.5 + 1) / 3] * 2)
    assert "judged" not in small_result.comparisons["metric"].to_list()
    printed = ranker_table(small_result.rankers, 3).splitlines()
    assert "judged@3" in printed[0] and all(f"{(1 + 0.5 + 1) / 3:.4f}" in line for line in printed[2:])
    assert small_result.ideal == {"mode": "run"}
    html = render_report(small_result, SMALL_MANIFEST)
    assert "judged@3" in html and "metrics.ideal: run" in html
    stored = dataclasses.replace(small_result, ideal={"mode": "store", "judge_context": "c0ffee", "stored_labels": 7,
                                                      "queries_with_stored_labels": 2})
    html = render_report(stored, SMALL_MANIFEST)
    assert "metrics.ideal: store" in html and "c0ffee" in html and "7 stored labels of 2 queries" in html
