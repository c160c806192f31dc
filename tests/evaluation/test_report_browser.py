"""report.html in a real headless browser (Debian's chromium): it renders, logs nothing to the console, and hostile
text stays text. Skipped when /usr/bin/chromium is absent (CI: apt-get install -y chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rae_ray.io import RunLayout, Storage
from rae_ray.report import write_report

from .conftest import SCRIPT_TITLE, SMALL_MANIFEST, XSS_QUERY

CHROMIUM = os.environ.get("RAE_RAY_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
    reason=f"chromium not found at {CHROMIUM} (apt-get install -y chromium, or set RAE_RAY_CHROMIUM)",
)
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught|Content Security Policy", re.IGNORECASE)


def open_in_chromium(page: Path, tmp_path: Path, screenshot: Path) -> tuple[str, str]:
    """(DOM after load, console lines) of a headless chromium that loads the page and takes a screenshot."""
    profile = tmp_path / f"profile-{page.stem}"
    completed = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr",
            "--v=0", "--window-size=1280,2000", f"--screenshot={screenshot}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if CONSOLE.search(line)]
    return completed.stdout, "\n".join(console)


def test_console_check_is_not_vacuous(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><table><tr><td>x</td></tr></table>"
                    "<script>throw new Error('boom')</script></body></html>")
    _, console = open_in_chromium(page, tmp_path, tmp_path / "broken.png")
    assert "Uncaught Error: boom" in console


def test_report_renders_without_console_errors(small_result, tmp_path):
    write_report(small_result, SMALL_MANIFEST, Storage(), RunLayout(small_result.root))
    page = Path(small_result.root) / "report.html"
    screenshot = tmp_path / "report.png"
    dom, console = open_in_chromium(page, tmp_path, screenshot)
    assert console == "", console

    # The page is there: ranker table, comparison chart, every section.
    assert "<table" in dom and "<svg" in dom and "nDCG@3" in dom
    for anchor in ("rankers", "comparisons", "segments", "worst", "regressions", "agreement", "review", "run"):
        assert f'id="{anchor}"' in dom, anchor
    assert "Simulated judge." in dom  # reasoning starts with "[simulated judge]"
    assert "$0.0015" in dom and "65.0s" in dom  # cost and time from the manifest
    # Hostile text stayed text: no element was made of it.
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<img" not in dom.lower() and "&lt;img src=x onerror=alert(2)&gt;" in dom
    assert SCRIPT_TITLE not in dom and XSS_QUERY not in dom

    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").resize((64, 100)).getcolors(64 * 100)
        assert colours is not None and len(colours) > 20  # not a blank page
