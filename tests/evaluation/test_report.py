"""report.html without a browser: one self-contained page (the browser test is test_report_browser.py)."""

from __future__ import annotations

import re

from rae_ray.report import render_report

from .conftest import SMALL_MANIFEST


def test_report_is_self_contained(small_result):
    html = render_report(small_result, SMALL_MANIFEST)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.IGNORECASE)
    assert re.search(r"""url\(\s*["']?https?:""", html) is None and "@import" not in html
    assert "default-src 'none'" in html  # and a CSP forbids anything that slipped through
