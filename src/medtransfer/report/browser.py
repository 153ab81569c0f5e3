"""Driving the study report in headless Chromium (Playwright for Python with the system browser),
the way a person reads it: the sidebar's categories, a figure's eye (view) and ⓘ (description)
buttons. Used by the browser test and by ``scripts/report_screenshot.py``.

Playwright is a test extra (``pip install -e ".[test]"``) and is launched with the system
Chromium (Debian's ``chromium`` package), never a browser it downloads itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The system Chromium: ``$MEDTRANSFER_CHROMIUM``, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("MEDTRANSFER_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def open_report(page: Any, report_html: str | Path, timeout_ms: int = 30_000) -> None:
    """Load the report and wait until Snakemake's app has drawn its sidebar."""
    page.goto(Path(report_html).resolve().as_uri())
    page.wait_for_selector("nav >> text=Results", timeout=timeout_ms)


def categories(page: Any) -> list[str]:
    """The category names in the sidebar's menu (go home first)."""
    home(page)
    return page.eval_on_selector_all(
        "nav ul li", "items => items.map(i => i.textContent.trim()).filter(t => /^[0-9] /.test(t))"
    )


def home(page: Any) -> None:
    """Back to the sidebar's menu (the house icon, first of the breadcrumbs)."""
    page.locator("nav ol a").first.click()
    page.wait_for_selector("nav >> text=Workflow")


def front_page(page: Any) -> None:
    """The front page: the menu's "Workflow" item shows the study's description (and rule graph)."""
    home(page)
    page.locator("nav li", has_text="Workflow").first.click()
    page.wait_for_selector("#app .prose h1")


def open_category(page: Any, category: str) -> list[str]:
    """Open a category; return its subcategories ([] when Snakemake shows its one subcategory's
    results directly)."""
    home(page)
    page.locator("nav li", has_text=category).first.click()
    page.wait_for_selector("nav div.p-3 table, nav div.p-3 ul li")
    if page.locator("nav table").count():
        return []
    return [t.strip() for t in page.locator("nav div.p-3 ul li").all_inner_texts() if t.strip()]


def open_subcategory(page: Any, category: str, subcategory: str) -> None:
    if open_category(page, category):
        page.locator("nav li", has_text=subcategory).first.click()
    page.wait_for_selector("nav table")


def result_rows(page: Any) -> list[str]:
    """The first column of every result row of the subcategory shown."""
    return [t.strip() for t in page.locator("nav table tbody tr td:first-child").all_inner_texts()]


def view_result(page: Any, row_text: str) -> None:
    """Click the eye button of the result row containing ``row_text``."""
    page.locator("nav table tbody tr", has_text=row_text).first.locator("a[iconname=eye]").click()
    page.wait_for_timeout(200)


def describe_result(page: Any, row_text: str) -> str:
    """Click the ⓘ button of the row containing ``row_text``; return the description's text."""
    page.locator("nav table tbody tr", has_text=row_text).first.locator("a[iconname=information-circle]").click()
    page.wait_for_selector("nav >> text=DESCRIPTION")
    return page.locator("nav li.prose").first.inner_text()


def shown_image(page: Any) -> dict:
    """The figure image in the content area: natural and displayed size, top edge."""
    return page.evaluate(
        """() => { const img = document.querySelector('#app div.grow img');
                   if (!img) return null;
                   return {naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight, width: img.width,
                           top: img.getBoundingClientRect().top, complete: img.complete}; }"""
    )


def shown_frame(page: Any) -> Any:
    """The frame of the HTML result (a table page) shown in the content area."""
    page.wait_for_selector("#app iframe")
    handle = page.query_selector("#app iframe")
    frame = handle.content_frame()
    frame.wait_for_selector("tbody")
    return frame


def content_height(page: Any) -> int:
    """Height of what the content area holds (for a screenshot of all of it)."""
    return int(page.evaluate("() => document.querySelector('#app div.grow').scrollHeight"))
