"""report.html, one self-contained page a person reads.

view      the view model: what the page shows, in its order (rankers, comparisons, segments, cost and time)
findings  the view model of the findings (worst queries, regressions, agreement, review queue)
charts    geometry of the inline SVG charts
format    numbers, grades and times as text
render    Jinja2 (autoescape) over templates/, and the writer
"""

from rae_ray.report.render import render_report, write_report

__all__ = ["render_report", "write_report"]
