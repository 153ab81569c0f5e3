"""The README's screenshot of the study report: the report opened in headless Chromium, one
figure shown beside its description (what it shows, what the paper found, what this run found).

    snakemake --cores 2 && snakemake --report results/report.html
    python scripts/report_screenshot.py                      # -> docs/report.png

Needs Playwright for Python (``pip install -e ".[test]"``) and the system Chromium (Debian's
``chromium``); nothing is downloaded. The PNG is reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from medtransfer.report import browser
from medtransfer.report.layout import figure_place


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="results/report.html", help="the report (snakemake --report ...)")
    parser.add_argument("--out", default="docs/report.png", help="the screenshot (PNG)")
    parser.add_argument("--figure", default="test_auc", help="the figure to show with its description")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    chromium = browser.find_chromium()
    if chromium is None:
        print("no Chromium found: apt-get install chromium, or set MEDTRANSFER_CHROMIUM", file=sys.stderr)
        return 2
    if not Path(args.report).is_file():
        print(f"{args.report} not found: run `snakemake --report {args.report}` first", file=sys.stderr)
        return 2
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=chromium)
        page = chrome.new_page(viewport={"width": args.width, "height": args.height})
        browser.open_report(page, args.report)
        place = figure_place(args.figure)
        browser.open_subcategory(page, place.category, place.subcategory)
        row = next(r for r in browser.result_rows(page) if r.endswith(f"({args.figure})"))
        browser.view_result(page, row)
        browser.describe_result(page, row)
        page.wait_for_function("() => { const i = document.querySelector('#app div.grow img'); "
                               "return i && i.complete && i.naturalWidth > 0; }")
        png = page.screenshot()
        chrome.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"{args.out}: {Path(args.out).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
