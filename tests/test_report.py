"""The study report's pieces without a browser: captions against numbers computed here from the
same CSV, rst that docutils renders without a warning (as Snakemake does), the sections, the
sortable tables and the front page. The report opened in Chromium: tests/test_report_browser.py."""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_parts

from conftest import REPO, tiny_config
from medtransfer import paths
from medtransfer.figures.catalog import FIGURES, Figure
from medtransfer.report import layout, places
from medtransfer.report.caption_tools import Caption
from medtransfer.report.captions import caption_text, missing_captions
from medtransfer.study import Study
from medtransfer.report.front import duration, front_rst, timing
from medtransfer.report.tables import sortable_table_html, write_report_table

RUN = ["dataset", "arch", "protocol", "init", "init_name", "source", "k", "fraction", "seed"]


def render_rst(text: str) -> str:
    """HTML body of ``text`` as docutils renders a Snakemake caption; any warning is an error."""
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2,
                                                                       "warning_stream": io.StringIO()})["body"]


def plain(text: str) -> str:
    """Caption text without rst literals, for matching numbers and labels."""
    return text.replace("``", "")


def run_row(dataset, init, fraction, seed, protocol="finetune", arch="cbr_tiny", **values):
    name, _, rest = init.partition("_")
    k = ""
    match = re.search(r"_k(\d+)$", init)
    if match:
        k, rest = int(match.group(1)), rest[: -len(match.group(0))]
    return {"dataset": dataset, "arch": arch, "protocol": protocol, "init": init, "init_name": name,
            "source": rest, "k": k, "fraction": fraction, "seed": seed, **values}


def write(frame: pd.DataFrame, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def metrics(tmp_path) -> tuple[pd.DataFrame, Path]:
    rng = np.random.default_rng(0)
    base = {"RI": 0.60, "ST_natural": 0.62, "WT_natural": 0.75}
    rows = [run_row(dataset, init, fraction, seed, test_auc=base[init] + (0.1 if fraction == 1.0 else 0.0)
                    * (1 if init == "RI" else 0.5) + 0.02 * rng.standard_normal(), test_acc=0.5, val_auc=0.6)
            for dataset in ("lesions", "grades") for init in base for fraction in (0.1, 1.0) for seed in (0, 1, 2)]
    frame = pd.DataFrame(rows)
    return frame, write(frame, tmp_path, "metrics")


def test_test_auc_caption_states_gaps_and_best_with_spread(metrics):
    frame, path = metrics
    text = plain(caption_text("test_auc", path))
    for dataset in ("lesions", "grades"):
        runs = frame[frame["dataset"] == dataset]
        for fraction, label in ((0.1, "10 %"), (1.0, "100 %")):
            cell = runs[runs["fraction"] == fraction]
            wt = cell.loc[cell["init"] == "WT_natural", "test_auc"].to_numpy()
            ri = cell.loc[cell["init"] == "RI", "test_auc"].to_numpy()
            assert f"{wt.mean() - ri.mean():+.3f} at {label}" in text
            means = cell.groupby("init")["test_auc"].mean()
            best = means.idxmax()
            values = cell.loc[cell["init"] == best, "test_auc"].to_numpy()
            assert f"{best} {values.mean():.3f} ± {values.std(ddof=1):.3f} at {label}" in text
    assert "WT_natural − RI" in text and "3 seeds per initialisation" in text
    assert text.count("larger with 10 % of the data") >= 2  # WT's gain is the larger one at 10 % here
    render_rst(caption_text("test_auc", path))


def test_dice_captions_read_the_segmentation_runs_of_a_mixed_study(tmp_path):
    rng = np.random.default_rng(1)
    rows = [run_row("lesions", init, 1.0, seed, test_auc=0.7, test_dice=np.nan) for init in ("RI", "WT_natural")
            for seed in (0, 1)]  # a classification target: no Dice, so not in the Dice caption
    rows += [run_row("masks", init, fraction, seed, test_auc=np.nan,
                     test_dice={"RI": 0.55, "WT_natural": 0.65}[init] + 0.03 * rng.standard_normal())
             for init in ("RI", "WT_natural") for fraction in (0.1, 1.0) for seed in (0, 1)]
    frame = pd.DataFrame(rows)
    text = plain(caption_text("test_dice", write(frame, tmp_path, "metrics")))
    masks = frame[frame["dataset"] == "masks"]
    for fraction, label in ((0.1, "10 %"), (1.0, "100 %")):
        cell = masks[masks["fraction"] == fraction].groupby("init")["test_dice"].mean()
        assert f"{cell['WT_natural'] - cell['RI']:+.3f} at {label}" in text
    assert "masks" in text and "lesions" not in text
    history = pd.DataFrame([run_row("masks", init, 1.0, seed, epoch=epoch, val_dice=value)
                            for init, curves in {"RI": ([0.2, 0.5], [0.3, 0.6]), "WT_natural": ([0.4, 0.7], [0.5, 0.7])}.items()
                            for seed, curve in enumerate(curves) for epoch, value in enumerate(curve, start=1)])
    text = plain(caption_text("convergence_dice", write(history, tmp_path, "history")))
    assert f"RI {np.mean([0.2, 0.3]):.3f} → {np.mean([0.5, 0.6]):.3f}" in text and "validation Dice" in text
    render_rst(caption_text("test_dice", tmp_path / "metrics.csv"))


def test_init_comparison_caption_gives_the_share_of_the_gap_st_closes(metrics):
    frame, path = metrics
    text = plain(caption_text("init_comparison", path))
    cell = frame[(frame["dataset"] == "lesions") & (frame["fraction"] == 0.1)]
    mean = cell.groupby("init")["test_auc"].mean()
    share = (mean["ST_natural"] - mean["RI"]) / (mean["WT_natural"] - mean["RI"])
    assert f"ST_natural closes {100 * share:.0f} % of the RI → WT_natural gap" in text


def test_metric_vs_k_caption_names_the_k_that_reaches_wt(tmp_path):
    values = {"RI": [0.60, 0.62], "WT_natural": [0.80, 0.82], "WT-ST_natural_k1": [0.65, 0.66],
              "WT-ST_natural_k2": [0.795, 0.80], "WT-ST_natural_k3": [0.81, 0.81]}
    frame = pd.DataFrame([run_row("lesions", init, 1.0, seed, test_auc=v)
                          for init, vs in values.items() for seed, v in enumerate(vs)])
    text = plain(caption_text("metric_vs_k", write(frame, tmp_path, "m")))
    # WT mean 0.81, sd 0.01414: k = 2 (mean 0.7975) is the first at or above 0.7959
    assert f"k = 1: {np.mean([0.65, 0.66]):.3f}, k = 2: {np.mean([0.795, 0.80]):.3f}, k = 3: 0.810" in text
    assert "reached within its sd from k = 2" in text


def test_protocols_caption_names_the_best_init_per_protocol_and_fraction(tmp_path):
    rows = [run_row("breast", init, f, s, protocol=p, test_auc=v + s * 0.01)
            for p, table in (("linear", {"RI": 0.6, "WT_a": 0.7}), ("knn", {"RI": 0.65, "WT_a": 0.62}))
            for init, v in table.items() for f in (0.01, 1.0) for s in (0, 1)]
    text = plain(caption_text("protocols", write(pd.DataFrame(rows), tmp_path, "m")))
    assert "linear (2 seeds): at 1 % best WT_a 0.705 ± 0.007 (RI 0.605 ± 0.007)" in text
    assert "knn (2 seeds): at 1 % best RI 0.655 ± 0.007" in text


def history_frame() -> pd.DataFrame:
    curves = {("RI", 0): [0.50, 0.70, 0.78, 0.80, 0.79], ("RI", 1): [0.76, 0.80, 0.79, 0.78, 0.80],
              ("WT_natural", 0): [0.79, 0.82, 0.83, 0.83, 0.83], ("WT_natural", 1): [0.70, 0.84, 0.84, 0.84, 0.85]}
    return pd.DataFrame([run_row("lesions", init, 1.0, seed, epoch=e + 1, val_auc=v)
                         for (init, seed), curve in curves.items() for e, v in enumerate(curve)])


def test_convergence_caption_gives_first_and_last_epoch_means(tmp_path):
    text = plain(caption_text("convergence", write(history_frame(), tmp_path, "h")))
    assert f"RI {np.mean([0.50, 0.76]):.3f} → {np.mean([0.79, 0.80]):.3f}" in text
    assert f"WT_natural {np.mean([0.79, 0.70]):.3f} → {np.mean([0.83, 0.85]):.3f}" in text
    assert "epoch 1 → epoch 5" in text


def test_epochs_to_95_caption_matches_a_hand_count(tmp_path):
    text = plain(caption_text("epochs_to_95", write(history_frame(), tmp_path, "h")))
    # RI: s0 best 0.80 -> 0.76 first at epoch 3; s1 best 0.80 -> 0.76 at epoch 1 (equal counts)
    # WT: s0 best 0.83 -> 0.7885 at epoch 1; s1 best 0.85 -> 0.8075 at epoch 2
    assert f"RI {np.mean([3, 1]):.1f} ± {np.std([3, 1], ddof=1):.1f}" in text
    assert f"WT_natural {np.mean([1, 2]):.1f} ± {np.std([1, 2], ddof=1):.1f}" in text
    assert "fastest WT_natural" in text


def test_similarity_init_final_caption_reads_the_drawn_measure(tmp_path):
    blocks = ["stem", "layer1", "layer2", "head"]
    values = {("RI", 0): [0.9, 0.5, 0.7, 0.2], ("RI", 1): [0.8, 0.6, 0.6, 0.1],
              ("WT_natural", 0): [0.99, 0.95, 0.9, 0.3], ("WT_natural", 1): [0.97, 0.93, 0.92, 0.5]}
    rows = [run_row("lesions", init, 1.0, seed, block=b, block_index=i, measure=m, value=v - (m == "svcca") * 0.5)
            for (init, seed), vs in values.items() for i, (b, v) in enumerate(zip(blocks, vs))
            for m in ("linear_cka", "svcca")]
    path = write(pd.DataFrame(rows), tmp_path, "s")
    text = plain(caption_text("similarity_init_final", path, measure="linear_cka"))
    assert f"RI: stem {np.mean([0.9, 0.8]):.3f} ± {np.std([0.9, 0.8], ddof=1):.3f}" in text
    assert f"head {np.mean([0.2, 0.1]):.3f}" in text
    assert "lowest below the head: layer1 0.550" in text  # RI's layer1 mean, below layer2's 0.65
    assert "lowest below the head: layer2 0.910" in text  # WT's
    found = text[text.index("What this run found"):]
    assert "linear CKA (2 seeds)" in found and "0.350" not in found  # svcca's RI stem mean is 0.35
    render_rst(caption_text("similarity_init_final", path, measure="svcca"))


def pairs_frame() -> pd.DataFrame:
    """Diagonal (and one off-diagonal) rows: WT vs RI over 3 blocks, two seed pairs, floors."""
    rows = []
    def add(kind, pair, init_a, init_b, seed_a, seed_b, diag):
        for i, v in enumerate(diag):
            for j in range(3):
                rows.append({"dataset": "lesions", "arch": "cbr_tiny", "fraction": 1.0, "measure": "linear_cka",
                             "pair": pair, "kind": kind, "init_a": init_a, "seed_a": seed_a, "init_b": init_b,
                             "seed_b": seed_b, "block_a": f"b{i}", "block_a_index": i, "block_b": f"b{j}",
                             "block_b_index": j, "value": v if i == j else 0.1})
    add("pair", "WT_natural vs RI", "WT_natural", "RI", 0, 0, [0.95, 0.40, 0.88])
    add("pair", "WT_natural vs RI", "WT_natural", "RI", 1, 1, [0.93, 0.50, 0.86])
    add("noise_floor", "RI vs RI", "RI", "RI", 0, 1, [0.96, 0.90, 0.90])
    add("noise_floor", "WT_natural vs WT_natural", "WT_natural", "WT_natural", 0, 1, [0.98, 0.92, 0.95])
    return pd.DataFrame(rows)


def test_pair_blocks_caption_lists_the_blocks_below_both_floors(tmp_path):
    text = plain(caption_text("similarity_pairs_blocks", write(pairs_frame(), tmp_path, "p"), measure="linear_cka"))
    # floors have one seed pair each (sd 0): edges RI 0.96/0.90/0.90, WT 0.98/0.92/0.95; pair means
    # 0.94, 0.45, 0.87: every block is below both, b0 by the least
    assert "below the noise-floor bands in 3 of 3 blocks: b0 0.940 (band from 0.960), b1 0.450 (band from 0.900)" in text


def test_pair_heatmap_caption_means_the_matching_blocks_per_seed_pair(tmp_path):
    text = plain(caption_text("similarity_pairs_heatmap", write(pairs_frame(), tmp_path, "p"), measure="linear_cka"))
    per_pair = [np.mean([0.95, 0.40, 0.88]), np.mean([0.93, 0.50, 0.86])]
    assert f"WT_natural vs RI {np.mean(per_pair):.3f} ± {np.std(per_pair, ddof=1):.3f} (2 seed pairs)" in text
    assert f"noise floors RI {np.mean([0.96, 0.90, 0.90]):.3f}" in text


def test_every_caption_renders_as_snakemake_renders_it(metrics, tmp_path, monkeypatch):
    """figure.rst through Jinja2 (with the job's outputs) then docutils, the include resolved from
    the working directory, as `snakemake --report` does it; no docutils warning."""
    frame, metrics_csv = metrics
    inputs = {"metrics": metrics_csv, "history": write(history_frame(), tmp_path, "history"),
              "similarity_pairs": write(pairs_frame(), tmp_path, "pairs")}
    blocks = pd.DataFrame([run_row("lesions", "RI", 1.0, s, block=f"b{i}", block_index=i, measure="linear_cka",
                                   value=0.5) for s in (0, 1) for i in range(3)])
    inputs["similarity_init_final"] = write(blocks, tmp_path, "init_final")
    template = (REPO / "workflow" / "report" / "figure.rst").read_text()
    monkeypatch.chdir(tmp_path)
    for name, figure in FIGURES.items():
        kind = figure.input
        if kind not in inputs:
            continue
        caption = Path(f"results/figures/{name}.rst")
        caption.parent.mkdir(parents=True, exist_ok=True)
        caption.write_text(caption_text(name, inputs[kind], measure="linear_cka"))
        output = {"caption": str(caption), "pdf": f"results/figures/{name}.pdf"}
        html = render_rst(jinja2.Environment().from_string(template).render(snakemake={"output": output}))
        assert "What this run found" in html and f"results/figures/{name}.pdf" in html, name


def test_a_figure_without_a_caption_of_its_own_gets_the_generic_one(metrics, monkeypatch):
    frame, path = metrics
    place = layout.figure_place("brand_new")  # a figure not in the catalog goes to "Other figures"
    # as a new analysis may add one, before its caption
    monkeypatch.setitem(FIGURES, "brand_new", Figure("brand_new", "metrics",
                                                     "medtransfer.figures.performance:plot_test_metric", place))
    assert missing_captions() == ["brand_new"]
    text = caption_text("brand_new", path)
    assert "no caption of its own" in text and f"{len(frame)} rows" in text and "``lesions``" in text
    render_rst(text)
    assert layout.figure_place("weight_drift").category == places.FEATURE_REUSE
    assert layout.figure_place("brand_new").category == places.OTHER


def test_list_the_figures_that_lack_a_caption_of_their_own():
    """Not a failure: the list the lead works through after merging the other branches."""
    missing = missing_captions()
    if missing:
        warnings.warn(f"figures with the generic caption only: {', '.join(missing)}", stacklevel=1)
    assert all(isinstance(figure.caption, Caption) for figure in FIGURES.values() if figure.caption_ref)


def test_every_figure_has_its_section_and_sections_sort_as_listed():
    assert all(figure.place.category in places.CATEGORIES for figure in FIGURES.values())
    # Snakemake sorts categories by name: the numbers keep the papers' order
    assert sorted(places.CATEGORIES) == list(places.CATEGORIES)
    labels = {ext: layout.figure_labels("test_auc", ext) for ext in ("png", "pdf")}
    assert list(labels["png"]) == ["figure", "format"] and labels["png"]["figure"] == labels["pdf"]["figure"]
    # the toggle starts on the first value in sort order: the PNG, which the browser can show
    assert sorted([labels["pdf"]["format"], labels["png"]["format"]], key=str.lower)[0] == labels["png"]["format"]


def test_report_paths_in_the_templates_are_the_path_helpers():
    front = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    assert f".. include:: {paths.report_front()}" in front
    assert ".. include:: {{ snakemake.output.caption }}" in (REPO / "workflow" / "report" / "table.rst").read_text()


def test_report_tables_of_a_study():
    config = tiny_config()
    assert Study(config).report_table_names() == ["summary", "runs", "pretrain", "provenance"]
    config["analysis"]["reference"] = "RI"
    config["sources"] = {}
    config["study"]["inits"] = ["RI"]
    config["analysis"]["pairs"] = []
    assert Study(config).report_table_names() == ["summary", "runs", "comparison", "provenance"]


def test_sortable_table_holds_every_row_and_the_csv(tmp_path):
    frame = pd.DataFrame({"what": ["a<b>", "c", "d"], "value": [0.123456, np.nan, 12.0], "n": [3, 1, 2]})
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    page = (tmp_path / "t.html")
    written = write_report_table("runs", csv, page, tmp_path / "t.rst", title="runs")
    text = page.read_text()
    body = text[text.index("<tbody>"):text.index("</tbody>")]
    assert body.count("<tr>") == len(frame) == len(written)
    assert 'data-v="0.123456">0.123<' in body and "a&lt;b&gt;" in body and "<b>" not in body
    encoded = re.search(r'href="data:text/csv;base64,([^"]+)"', text).group(1)
    assert pd.read_csv(io.StringIO(base64.b64decode(encoded).decode())).equals(pd.read_csv(csv))
    assert "http" not in text.replace("http-equiv", "")  # nothing to fetch
    caption = (tmp_path / "t.rst").read_text()
    assert "3 rows, 3 columns" in caption
    render_rst(caption)
    assert sortable_table_html(pd.DataFrame(), "empty").count("<tr>") == 1  # the header row only


def test_timing_and_durations():
    provenance = pd.DataFrame({"finished_utc": ["2026-01-01T10:00:30+00:00", "2026-01-01T10:05:00+00:00", ""],
                               "wall_seconds": [30.0, 60.0, np.nan]})
    times = timing(provenance)
    # first start 10:00:00, last finish 10:05:00; the row without a finish time is not counted
    assert times["span_seconds"] == 300 and times["job_seconds"] == 90 and times["jobs"] == 2
    assert (duration(42), duration(312), duration(3725)) == ("42 s", "5 min 12 s", "1 h 02 min")


def test_front_page_names_the_study_its_sizes_time_and_commands(tmp_path, monkeypatch):
    from medtransfer.data.streaming import build_cache

    monkeypatch.chdir(tmp_path)
    config = tiny_config()
    config["study"]["name"] = "tiny check"
    study = Study(config)
    spec = study.front_spec(["workflow/studies/tiny.yaml"])
    for name in study.datasets_needed():
        build_cache(name, {**config["datasets"][name], "n_train": 40, "n_val": 10, "n_test": 12}, paths.dataset_cache(name))
    Path(spec["metrics"]).parent.mkdir(parents=True)
    pd.DataFrame([run_row("lesions", "RI", 1.0, 0, num_train=40, test_auc=0.5)]).to_csv(spec["metrics"], index=False)
    Path(spec["provenance"]).parent.mkdir(parents=True)
    pd.DataFrame({"what": ["x"], "finished_utc": ["2026-01-01T10:01:00+00:00"], "wall_seconds": [60.0]}).to_csv(
        spec["provenance"], index=False)
    text = front_rst(spec)
    assert text.startswith("Study: tiny check\n=================")
    rows = re.findall(r"\* - ``(\w+)``\n((?:     - .*\n)+)", text)
    cells = {name: [c.strip()[2:] for c in block.splitlines()] for name, block in rows}
    assert cells["lesions"][:6] == ["target", "binary", "2", "40", "10", "12"] and cells["lesions"][-1] == "40 (100 %)"
    assert cells["shapes"][0] == "source (pretraining)"
    assert "snakemake --configfile workflow/studies/tiny.yaml --cores 1 results/figures/NAME.pdf" in text
    assert "**1 min 00 s** of wall time" in text and "2026-01-01 10:00 UTC" in text
    assert "`1 Performance by initialisation and data size`_" in text
    html = publish_parts(text + "\n.. _1 Performance by initialisation and data size: #\n"
                         ".. _2 Convergence: #\n.. _3 Representation similarity: #\n.. _4 Feature reuse: #\n"
                         ".. _5 Protocols and sources: #\n"
                         ".. _6 Tables: #\n.. _7 Provenance: #\n", writer="html",
                         settings_overrides={"halt_level": 2, "warning_stream": io.StringIO()})["html_body"]
    assert "tiny check" in html and "lesion_presence" in html  # the config as run
    # A name written to inject rst (a directive after a blank line) or HTML renders as its text.
    spec["name"] = "x\n\n.. raw:: html\n\n   <script>alert(1)</script>\n\n.. include:: /etc/passwd"
    hostile = publish_parts(front_rst(spec), writer="html", settings_overrides={
        "halt_level": 5, "report_level": 5, "warning_stream": io.StringIO()})["html_body"]
    assert "<script" not in hostile and "root:" not in hostile and "alert(1)" in hostile


@pytest.mark.parametrize("content", ["", "header"])
def test_every_caption_says_so_when_its_csv_has_no_rows(content, tmp_path):
    """A study without those runs yet draws a "no data" figure; its caption must not fail either."""
    from medtransfer.columns import (FID_GAIN_COLUMNS, FILTER_KERNEL_COLUMNS, HISTORY_COLUMNS, INIT_FINAL_COLUMNS,
                                     LAYER_KNN_READ_COLUMNS, METRICS_COLUMNS, PAIRS_COLUMNS,
                                     PREDICTION_SIMILARITY_COLUMNS, REINIT_READ_COLUMNS,
                                     REPRESENTATION_GAIN_RUNS_COLUMNS, WEIGHT_DRIFT_READ_COLUMNS)

    # the header each stage writes (the cross-run CSVs: the analysis modules' own column lists)
    headers = {"metrics": METRICS_COLUMNS, "history": HISTORY_COLUMNS, "similarity_init_final": INIT_FINAL_COLUMNS,
               "similarity_pairs": PAIRS_COLUMNS, "weight_drift": WEIGHT_DRIFT_READ_COLUMNS,
               "reinit": REINIT_READ_COLUMNS, "layer_knn": LAYER_KNN_READ_COLUMNS,
               "filter_kernels": FILTER_KERNEL_COLUMNS, "fid_gain": FID_GAIN_COLUMNS,
               "prediction_similarity": PREDICTION_SIMILARITY_COLUMNS,
               "representation_gain_runs": REPRESENTATION_GAIN_RUNS_COLUMNS}
    assert missing_captions() == []  # every figure has findings of its own to leave empty
    for name, figure in FIGURES.items():
        kind = figure.input
        path = tmp_path / f"{kind}.csv"
        path.write_text(",".join(headers[kind]) + "\n" if content == "header" else "")
        text = caption_text(name, path, measure="linear_cka")
        found = text[text.index("What this run found"):]
        assert re.search(r"- no ", found), (name, found)
        render_rst(text)
