"""The demo's report opened in headless Chromium and read as a person reads it: front page,
every section, every figure shown, captions whose numbers are recomputed here from the CSVs,
the tables' rows, no console error and no request that leaves the machine.

Uses the tiny study the workflow test runs (the session fixture ``tiny_study_run``), Playwright
for Python and the system Chromium (Debian's ``chromium``; .ci/run installs it). Screenshots go
to the run's ``results/report_screenshots/`` and to ``results/report_browser_test/`` of the
repository, for a reviewer to look at.
"""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from conftest import REPO, TINY_STUDY_NAME, run_snakemake, tiny_config
from medtransfer.report import browser

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install -e '.[test]')"
)

# What the tiny study's report must hold: its figures' and tables' sections, written out here
# rather than taken from medtransfer.report.layout.
SECTIONS = [
    "1 Performance by initialisation and data size",
    "2 Convergence",
    "3 Representation similarity",
    "4 Feature reuse",  # weight drift, re-initialisation, layer-wise k-NN, filters, FID
    "5 Protocols and sources",  # the pretrained source's k-NN table
    "6 Tables",
    "7 Provenance",
]
FRONT_HEADINGS = ["Grid", "Datasets", "How long it took", "Sections", "Regenerate", "Config as run"]
ALLOWED_SCHEMES = ("file:", "data:", "about:", "blob:")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = browser.find_chromium()
    if path is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium; or set MEDTRANSFER_CHROMIUM)")
    return path


def figure_name(row: str) -> str | None:
    """'test AUC per ... (test_auc)' -> 'test_auc'; None for a table's row."""
    match = re.search(r"\(([a-z0-9_]+)\)$", row)
    return match.group(1) if match else None


def test_the_demo_report_as_a_person_sees_it(tiny_study_run, chromium):
    workdir = tiny_study_run
    results = workdir / "results"
    made = run_snakemake(workdir, "--report", "results/report.html")
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    metrics = pd.read_csv(results / "analysis" / "metrics.csv")
    history = pd.read_csv(results / "analysis" / "history.csv")
    summary = pd.read_csv(results / "tables" / "summary.csv")
    shots = results / "report_screenshots"
    shots.mkdir(exist_ok=True)

    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=chromium)
        page = chrome.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url))
        page.route(re.compile(r"^(https?|wss?|ftp)://"), lambda route: route.abort())  # never leave the machine
        browser.open_report(page, results / "report.html")

        # The front page, from its top (Snakemake centres pages vertically; ours must not lose its title).
        assert browser.categories(page) == SECTIONS
        browser.front_page(page)
        title = page.locator("#app .prose h1").first
        assert title.inner_text() == f"Study: {TINY_STUDY_NAME}"  # markup in the name shown as text
        assert page.locator("#app img[src=x]").count() == 0 and page.title() != "pwned"
        assert title.bounding_box()["y"] >= 0
        # docutils makes the one top-level title the document's, its sections h1 as well
        headings = [h.strip() for h in page.locator("#app .prose h1").all_inner_texts()]
        assert headings == [f"Study: {TINY_STUDY_NAME}", *FRONT_HEADINGS]
        front = page.locator("#app .prose").first.inner_text()
        lesions = tiny_config()["datasets"]["lesions"]
        sizes = f"lesions\ttarget\tbinary\t2\t{lesions['n_train']}\t{lesions['n_val']}\t{lesions['n_test']}"
        assert sizes in front
        assert "snakemake --cores 1 results/figures/NAME.pdf" in front
        page.set_viewport_size({"width": 1400, "height": max(900, browser.content_height(page))})
        page.screenshot(path=shots / "front.png")
        page.set_viewport_size({"width": 1400, "height": 900})

        # Every figure, clicked into as a person would: its PNG shown and decoded.
        shown: dict[str, dict] = {}
        tables: dict[str, str] = {}
        for category in SECTIONS:
            subcategories = browser.open_category(page, category) or [None]
            for subcategory in subcategories:
                if subcategory is not None:
                    browser.open_subcategory(page, category, subcategory)
                for row in browser.result_rows(page):
                    name = figure_name(row)
                    if name is None:
                        tables[row] = f"{category} / {subcategory}"
                        continue
                    browser.view_result(page, row)
                    page.wait_for_function(
                        "() => { const i = document.querySelector('#app div.grow img'); "
                        "return i && i.complete && i.naturalWidth > 0; }"
                    )
                    shown[name] = browser.shown_image(page)
        pngs = {path.stem for path in (results / "figures").glob("*.png")}
        assert set(shown) == pngs and len(pngs) >= 7
        assert all(image["naturalWidth"] > 0 and image["top"] >= 0 for image in shown.values())
        assert set(tables) == {"metrics of every run, one row each", "mean ± sd over seeds per cell of the grid",
                               "k-NN accuracy of every source model",
                               "config hash, commit, packages, host, device, precision, wall time"}

        # Captions carry this run's numbers: recomputed here from the CSVs.
        browser.open_category(page, SECTIONS[0])  # its subcategories: classification, segmentation
        browser.open_subcategory(page, SECTIONS[0], "Which initialisation helps, at which data size")
        row = next(r for r in browser.result_rows(page) if r.endswith("(test_auc)"))
        browser.view_result(page, row)
        caption = browser.describe_result(page, row)
        runs = metrics[metrics["fraction"] == 1.0]
        wt = runs.loc[runs["init"] == "WT_natural", "test_auc"]
        ri = runs.loc[runs["init"] == "RI", "test_auc"]
        assert f"WT_natural − RI: {wt.mean() - ri.mean():+.3f} at 100 %" in caption
        best = wt if wt.mean() > ri.mean() else ri
        assert f"{best.mean():.3f} ± {best.std(ddof=1):.3f} at 100 %" in caption
        assert "What the paper found" in caption and "Raghu et al. 2019" in caption
        assert "snakemake --cores 1 results/figures/test_auc.pdf" in caption
        page.screenshot(path=shots / "test_auc.png")

        browser.open_category(page, SECTIONS[1])
        row = next(r for r in browser.result_rows(page) if r.endswith("(convergence)"))
        caption = browser.describe_result(page, row)
        last = history["epoch"].max()
        for init in ("RI", "WT_natural"):
            curve = history[history["init"] == init]
            first_auc = curve.loc[curve["epoch"] == 1, "val_auc"].mean()
            last_auc = curve.loc[curve["epoch"] == last, "val_auc"].mean()
            assert f"{init} {first_auc:.3f} → {last_auc:.3f}" in caption

        # Tables: one row per run (provenance: and per pretrained source), sortable.
        browser.open_subcategory(page, "6 Tables", "Every run")
        browser.view_result(page, "metrics of every run")
        frame = browser.shown_frame(page)
        assert frame.locator("tbody tr").count() == len(metrics)
        columns = frame.locator("thead th").all_inner_texts()
        column = columns.index("test_auc") + 1
        frame.locator("thead th", has_text=re.compile("^test_auc$")).click()
        cells = frame.locator(f"tbody tr td:nth-child({column})").all_inner_texts()
        values = [float(v) for v in cells if v.strip()]  # the segmentation runs have no AUC
        assert values == sorted(round(v, 3) for v in metrics["test_auc"].dropna())
        frame.locator("#filter").fill("WT_natural")
        assert frame.locator("tbody tr:not([hidden])").count() == (metrics["init"] == "WT_natural").sum()
        page.screenshot(path=shots / "runs_table.png")

        browser.open_subcategory(page, "6 Tables", "Summary over seeds")
        browser.view_result(page, "mean ± sd over seeds")
        assert browser.shown_frame(page).locator("tbody tr").count() == len(summary)

        browser.open_category(page, "7 Provenance")
        browser.view_result(page, "config hash, commit")
        frame = browser.shown_frame(page)
        assert frame.locator("tbody tr").count() == len(metrics) + 1  # every run and the one pretraining
        header = frame.locator("thead th").all_inner_texts()
        assert {"config_hash", "git_commit", "host", "device", "precision", "wall_seconds", "version_torch"} <= set(header)
        chrome.close()

    assert not errors, errors
    leaving = [url for url in requests if not url.startswith(ALLOWED_SCHEMES)]
    assert not leaving, leaving
    keep = REPO / "results" / "report_browser_test"
    keep.mkdir(parents=True, exist_ok=True)
    for shot in shots.glob("*.png"):
        shutil.copy(shot, keep / shot.name)
    assert (keep / "front.png").stat().st_size > 0
