"""report.html: the view model (`view.page_view`) rendered by Jinja2 templates with autoescape.

One self-contained page: no scripts, no external styles, fonts or images; charts are inline SVG and the CSS is
inline. Every value from the data (queries, product titles, reasoning, ranker names) is escaped by autoescape,
and a Content-Security-Policy forbids scripts altogether, so an untrusted product title stays text.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2

from rae_ray.evaluation import EvaluationResult
from rae_ray.io import RunLayout, Storage
from rae_ray.report.view import page_view

__all__ = ["render_report", "write_report"]


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("rae_ray.report", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=lambda value: "" if value is None else value,
    )


def render_report(result: EvaluationResult, manifest: dict | None, context: dict | None = None) -> str:
    """The report page as one HTML string. context: where the inputs came from (offline runs)."""
    return environment().get_template("report.html.j2").render(view=page_view(result, manifest, context))


def write_report(
    result: EvaluationResult, manifest: dict | None, storage: Storage, layout: RunLayout, context: dict | None = None
) -> str:
    """Render and write OUT/report.html; returns its URI."""
    storage.write_bytes(layout.report, render_report(result, manifest, context).encode("utf-8"))
    return layout.report
