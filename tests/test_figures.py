"""Figures and tables stage: every figure is written (PDF + PNG), the numbers in the summary
table equal an independent numpy computation, convergence speed matches hand-made histories,
and bad inputs fail clearly (missing columns) or draw "no data" (empty CSVs)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtransfer.errors import DataError
from medtransfer.figures.convergence import epochs_to_fraction_of_best
from medtransfer.columns import (
    FID_GAIN_FIGURE_COLUMNS,
    HISTORY_COLUMNS,
    INIT_FINAL_COLUMNS,
    METRICS_COLUMNS,
    PAIRS_COLUMNS,
    PREDICTION_SIMILARITY_READ_COLUMNS,
    REPRESENTATION_GAIN_RUNS_READ_COLUMNS,
)
from medtransfer.figures.catalog import FIGURES
from medtransfer.figures.style import init_dashes, init_palette, new_figure, save_figure
from medtransfer.figures.tables import summary_table

# --------------------------------------------------------------------------- synthetic CSVs

INITS = {  # label -> (init_name, source, k)
    "RI": ("RI", "", None),
    "ST_natural": ("ST", "natural", None),
    "WT_natural": ("WT", "natural", None),
    "WT-ST_natural_k1": ("WT-ST", "natural", 1),
    "WT-ST_natural_k2": ("WT-ST", "natural", 2),
    "WT-RI_natural_k1": ("WT-RI", "natural", 1),
}
BLOCKS = {"resnet18": ["stem", "layer1", "layer2", "layer3", "head"], "cbr_small": ["cbr1", "cbr2", "head"]}
COLUMNS = {  # a classification study: the segmentation columns are there, empty
    "metrics": METRICS_COLUMNS + ("test_dice", "test_iou", "val_dice"),
    "history": HISTORY_COLUMNS + ("val_dice", "val_iou"),
    "similarity_init_final": INIT_FINAL_COLUMNS,
    "similarity_pairs": PAIRS_COLUMNS,
    "fid_gain": FID_GAIN_FIGURE_COLUMNS,
    "prediction_similarity": PREDICTION_SIMILARITY_READ_COLUMNS,
    "representation_gain_runs": REPRESENTATION_GAIN_RUNS_READ_COLUMNS,
}


def make_results(
    folder: Path,
    datasets=("lesions", "grades"),
    archs=("resnet18", "cbr_small"),
    fractions=(0.1, 1.0),
    seeds=(0, 1, 2),
    epochs: int = 5,
    seed: int = 0,
    analysis_datasets: int = 1,
) -> dict[str, Path]:
    """Write the four tidy CSVs of a small, plausible study into ``folder``; return their paths
    by CSV kind. Values are random but shaped like real results (WT > RI, AUC in (0.5, 1)).
    metrics.csv covers every dataset; the per-epoch and per-block CSVs only the first
    ``analysis_datasets`` (they are the expensive figures to draw)."""
    rng = np.random.default_rng(seed)
    metrics, history, init_final, pairs = [], [], [], []
    gain = {"RI": 0.0, "ST": 0.02, "WT": 0.06, "WT-ST": 0.04, "WT-RI": 0.03}
    for dataset, arch, (init, (name, source, k)), fraction, s in itertools.product(
        datasets, archs, INITS.items(), fractions, seeds
    ):
        run = dict(dataset=dataset, arch=arch, init=init, init_name=name, source=source,
                   k="" if k is None else k, fraction=fraction, seed=s)  # fmt: skip
        auc = float(np.clip(0.7 + gain[name] + 0.1 * fraction + rng.normal(0, 0.02), 0.5, 0.99))
        metrics.append(run | dict(
            task="ordinal" if dataset == "grades" else "binary", test_auc=auc,
            test_acc=auc - 0.1 + rng.normal(0, 0.01),
            test_kappa=auc - 0.2 if dataset == "grades" else float("nan"), val_auc=auc + 0.01,
            best_epoch=int(rng.integers(1, epochs + 1)), epochs=epochs, train_seconds=float(rng.uniform(5, 9)),
        ))  # fmt: skip
        if dataset not in datasets[:analysis_datasets]:
            continue
        for epoch in range(1, epochs + 1):
            val = (
                0.5 + (auc - 0.5) * (1 - math.exp(-(epoch + 3 * gain[name] * 10) / 2)) + rng.normal(0, 0.005)
            )
            history.append(run | dict(epoch=epoch, train_loss=1 / epoch, val_loss=1.1 / epoch, val_auc=val,
                                      val_acc=val - 0.1, lr=1e-3, seconds=1.5))  # fmt: skip
        for index, block in enumerate(BLOCKS[arch]):
            for measure in ("linear_cka", "svcca"):
                value = 0.95 - 0.12 * index * (1 - gain[name] * 5) + rng.normal(0, 0.02)
                init_final.append(run | dict(block=block, block_index=index, measure=measure, value=value))
    pair_defs = [  # pair, kind, init_a, init_b, seed pairs
        ("WT_natural vs RI", "pair", "WT_natural", "RI", [(0, 0), (1, 1), (2, 2)]),
        ("ST_natural vs RI", "pair", "ST_natural", "RI", [(0, 0), (1, 1), (2, 2)]),
        ("RI vs RI", "noise_floor", "RI", "RI", [(0, 1), (0, 2), (1, 2)]),
        ("WT_natural vs WT_natural", "noise_floor", "WT_natural", "WT_natural", [(0, 1), (0, 2), (1, 2)]),
    ]
    # Pairs for the first dataset and last fraction only: enough facets, few heatmaps to draw.
    for dataset, arch, fraction, (pair, kind, init_a, init_b, seed_pairs) in itertools.product(
        datasets[:1], archs, fractions[-1:], pair_defs
    ):
        blocks = BLOCKS[arch]
        for (seed_a, seed_b), (ia, block_a), (ib, block_b) in itertools.product(
            seed_pairs, enumerate(blocks), enumerate(blocks)
        ):
            closeness = 0.9 if kind == "noise_floor" else 0.6 + 0.08 * ia
            value = float(np.clip(closeness - 0.15 * abs(ia - ib) + rng.normal(0, 0.02), 0, 1))
            pairs.append(dict(dataset=dataset, arch=arch, fraction=fraction, measure="linear_cka", pair=pair,
                              kind=kind, init_a=init_a, seed_a=seed_a, init_b=init_b, seed_b=seed_b,
                              block_a=block_a, block_a_index=ia, block_b=block_b, block_b_index=ib,
                              value=value))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, rows in (("metrics", metrics), ("history", history),
                       ("similarity_init_final", init_final), ("similarity_pairs", pairs)):  # fmt: skip
        paths[kind] = folder / f"{kind}.csv"
        pd.DataFrame(rows, columns=list(COLUMNS[kind])).to_csv(paths[kind], index=False)
    return paths


def add_domain_results(folder: Path, paths: dict[str, Path], seed: int = 0) -> dict[str, Path]:
    """The cross-run analyses' CSVs (fid_gain, prediction_similarity, representation_gain_runs)
    of the study make_results wrote, through the analysis functions that write them."""
    from medtransfer.analysis.fid_gain import fid_gain
    from medtransfer.analysis.gain import read_finetune_metrics
    from medtransfer.analysis.representation_gain import run_points

    rng = np.random.default_rng(seed)
    metrics = read_finetune_metrics(paths["metrics"], "test_auc")
    distance = pd.DataFrame([{"source": "natural", "target": t, "features": "natural@resnet18", "fid": f}
                             for t, f in (("lesions", 20.0), ("grades", 35.0))])
    by_arch = {"natural": {arch: "shapes" for arch in BLOCKS}}
    frames = {"fid_gain": fid_gain(distance, metrics, "test_auc", by_arch)}
    similarity = pd.read_csv(paths["similarity_init_final"])
    frames["representation_gain_runs"] = run_points(similarity, metrics, "test_auc")
    rows = []
    for (dataset, arch, fraction), group in metrics.groupby(["dataset", "arch", "fraction"]):
        inits = sorted(group["init"].unique())
        for s in sorted(group["seed"].unique()):
            for i, a in enumerate(inits):
                for b in inits[i:]:
                    rows.append(dict(dataset=dataset, arch=arch, fraction=fraction, init_a=a, init_b=b, seed_a=s,
                                     seed_b=s + (a == b), kind="seeds" if a == b else "inits",
                                     agreement=rng.uniform(0.6, 1), kappa=rng.uniform(0, 1)))
    frames["prediction_similarity"] = pd.DataFrame(rows)
    for kind, frame in frames.items():
        paths[kind] = folder / f"{kind}.csv"
        frame.to_csv(paths[kind], index=False)
    return paths


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("results")
    return add_domain_results(folder, make_results(folder))


@pytest.fixture
def fast_pdf(monkeypatch):
    """Type 3 PDF fonts: skips the ~1 s TrueType subsetting per PDF for tests about the data
    path; test_every_figure_writes_pdf_and_png keeps the real (type 42) setting."""
    from medtransfer.figures import style

    monkeypatch.setitem(style.RC, "pdf.fonttype", 3)


def assert_written(out_pdf: Path) -> None:
    png = out_pdf.with_suffix(".png")
    assert out_pdf.read_bytes()[:5] == b"%PDF-" and out_pdf.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    leftovers = [p.name for p in out_pdf.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temp files left behind: {leftovers}"


# --------------------------------------------------------------------------- every figure


# figures of the CSV kinds made here; the feature-reuse figures are tested in test_reuse_figures.py
@pytest.mark.parametrize("name", sorted(name for name, spec in FIGURES.items() if spec.input in COLUMNS))
def test_every_figure_writes_pdf_and_png(name, results, tmp_path):
    figure = FIGURES[name]
    out = tmp_path / "figures" / f"{name}.pdf"
    assert figure.function(results[figure.input], out) == out
    assert_written(out)


def test_other_metric_and_measure(results, tmp_path):  # κ in the label needs type 42 fonts
    from medtransfer.figures.performance import plot_test_metric
    from medtransfer.figures.similarity import plot_init_final

    # One dataset keeps this quick; kappa is NaN for the binary dataset, so only "grades" has it.
    metrics = pd.read_csv(results["metrics"])
    metrics[metrics.arch == "cbr_small"].to_csv(tmp_path / "metrics.csv", index=False)
    similarity = pd.read_csv(results["similarity_init_final"])
    similarity[similarity.fraction == 1.0].to_csv(tmp_path / "sim.csv", index=False)
    plot_test_metric(tmp_path / "metrics.csv", tmp_path / "kappa.pdf", metric="test_kappa")
    plot_init_final(tmp_path / "sim.csv", tmp_path / "svcca.pdf", measure="svcca")
    assert_written(tmp_path / "kappa.pdf")
    assert_written(tmp_path / "svcca.pdf")


def test_measure_not_in_csv_names_it(results, tmp_path):
    from medtransfer.figures.similarity import plot_pair_heatmaps

    with pytest.raises(DataError, match="pwcca.*linear_cka"):
        plot_pair_heatmaps(results["similarity_pairs"], tmp_path / "x.pdf", measure="pwcca")
    assert not (tmp_path / "x.pdf").exists()


@pytest.mark.parametrize("kind", sorted(COLUMNS))
def test_missing_column_raises_data_error_naming_it(kind, results, tmp_path):
    dropped = {"metrics": "test_auc", "history": "val_auc", "similarity_init_final": "block_index",
               "similarity_pairs": "block_b", "fid_gain": "fid", "prediction_similarity": "agreement",
               "representation_gain_runs": "gain"}[kind]  # fmt: skip
    broken = tmp_path / f"{kind}.csv"
    pd.read_csv(results[kind]).drop(columns=[dropped]).to_csv(broken, index=False)
    segmentation = {"test_dice": "test_dice", "convergence_dice": "val_dice"}  # figures of other columns
    for name, figure in FIGURES.items():
        function = figure.function
        if figure.input != kind:
            continue
        if name in segmentation:
            column = segmentation[name]
            pd.read_csv(results[kind]).drop(columns=[column]).to_csv(tmp_path / "seg.csv", index=False)
            with pytest.raises(DataError, match=rf"seg\.csv.*{column}"):
                function(tmp_path / "seg.csv", tmp_path / f"{name}.pdf")
            continue
        with pytest.raises(DataError, match=rf"{kind}\.csv.*{dropped}"):
            function(broken, tmp_path / f"{name}.pdf")
        assert not (tmp_path / f"{name}.pdf").exists()
    if kind == "metrics":
        with pytest.raises(DataError, match=dropped):
            summary_table(broken, tmp_path / "s.csv", tmp_path / "s.md")


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="nowhere.csv"):
        FIGURES["test_auc"].function(tmp_path / "nowhere.csv", tmp_path / "f.pdf")


def test_empty_csv_draws_no_data(tmp_path, fast_pdf):
    for kind, columns in COLUMNS.items():
        (tmp_path / f"{kind}.csv").write_text(",".join(columns) + "\n")  # header only
    for name, figure in FIGURES.items():
        if figure.input not in COLUMNS:  # test_reuse_figures.py
            continue
        out = tmp_path / "figures" / f"{name}.pdf"
        figure.function(tmp_path / f"{figure.input}.csv", out)
        assert_written(out)
    table = summary_table(tmp_path / "metrics.csv", tmp_path / "s.csv", tmp_path / "s.md")
    assert table.empty and "no data" in (tmp_path / "s.md").read_text()


def test_zero_byte_csv_draws_no_data(tmp_path, fast_pdf):
    (tmp_path / "history.csv").write_text("")
    FIGURES["convergence"].function(tmp_path / "history.csv", tmp_path / "convergence.pdf")
    assert_written(tmp_path / "convergence.pdf")
    (tmp_path / "metrics.csv").write_text("")
    assert summary_table(tmp_path / "metrics.csv", tmp_path / "s.csv", tmp_path / "s.md").empty


def test_duplicate_runs_are_refused(results, tmp_path):
    metrics = pd.read_csv(results["metrics"])
    doubled = tmp_path / "metrics.csv"
    pd.concat([metrics, metrics.iloc[:1]]).to_csv(doubled, index=False)
    with pytest.raises(DataError, match="repeat"):
        summary_table(doubled, tmp_path / "s.csv", tmp_path / "s.md")


# --------------------------------------------------------------------------- summary table


def test_summary_table_matches_numpy(results, tmp_path):
    table = summary_table(results["metrics"], tmp_path / "summary.csv", tmp_path / "summary.md")
    metrics = pd.read_csv(results["metrics"])
    written = pd.read_csv(tmp_path / "summary.csv")
    assert len(table) == len(written) == metrics.groupby(["dataset", "arch", "init", "fraction"]).ngroups
    for row in written.itertuples():
        runs = metrics[(metrics.dataset == row.dataset) & (metrics.arch == row.arch)
                       & (metrics.init == row.init) & np.isclose(metrics.fraction, row.fraction)]  # fmt: skip
        assert row.n_seeds == len(set(runs.seed)) == 3
        for metric in ("test_auc", "test_acc", "val_auc", "train_seconds", "test_kappa"):
            values = runs[metric].to_numpy(float)
            if np.isnan(values).all():
                assert math.isnan(getattr(row, f"{metric}_mean"))
                continue
            assert getattr(row, f"{metric}_mean") == pytest.approx(np.mean(values), rel=1e-12)
            assert getattr(row, f"{metric}_sd") == pytest.approx(np.std(values, ddof=1), rel=1e-9)


def test_summary_markdown_rows(results, tmp_path):
    summary_table(results["metrics"], tmp_path / "summary.csv", tmp_path / "summary.md")
    lines = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("|")]
    header, rule, body = lines[0], lines[1], lines[2:]
    assert [c.strip() for c in header.strip("|").split("|")][:6] == ["dataset", "arch", "protocol", "init",
                                                                      "fraction", "n seeds"]  # fmt: skip
    assert set(rule.strip("|").replace(":", "").split("|")) == {"---"}
    assert all(line.count("|") == header.count("|") for line in body)
    metrics = pd.read_csv(results["metrics"])
    expected = {(d, a, i, f"{f:g}") for d, a, i, f in metrics[["dataset", "arch", "init", "fraction"]].values}
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in body]
    assert {c[2] for c in cells} == {"finetune"}
    cells = [c[:2] + c[3:] for c in cells]  # without the protocol column
    assert {tuple(c[:4]) for c in cells} == expected and len(cells) == len(expected)
    # One cell checked against numpy, as text: mean ± sd with 3 decimals.
    runs = metrics[(metrics.dataset == "lesions") & (metrics.arch == "resnet18") & (metrics.init == "RI")
                   & (metrics.fraction == 0.1)]  # fmt: skip
    row = next(c for c in cells if c[:4] == ["lesions", "resnet18", "RI", "0.1"])
    auc = runs.test_auc.to_numpy()
    assert row[5] == f"{auc.mean():.3f} ± {auc.std(ddof=1):.3f}"
    # Inits in the canonical order within a dataset × arch: RI first, WT last.
    inits = [c[2] for c in cells if c[:2] == ["lesions", "resnet18"] and c[3] == "1"]
    assert inits[0] == "RI" and inits[-1] == "WT_natural"


# --------------------------------------------------------------------------- convergence speed


def test_epochs_to_fraction_of_best_hand_example():
    run = dict(dataset="d", arch="a", init="RI", init_name="RI", source="", k=np.nan, fraction=1.0)
    rows = []
    # seed 0: best 0.80 at epoch 4; 95 % of it is 0.76, first reached (exactly) at epoch 3.
    for epoch, auc in enumerate([0.50, 0.70, 0.76, 0.80, 0.78], start=1):
        rows.append(run | dict(seed=0, epoch=epoch, val_auc=auc))
    # seed 1, rows shuffled and one epoch unscored: best 0.95 at epoch 5; target 0.9025;
    # epoch 2 (0.90) falls just short, epoch 4 (0.91) is first.
    for epoch, auc in [(5, 0.95), (2, 0.90), (1, 0.60), (4, 0.91), (3, np.nan)]:
        rows.append(run | dict(seed=1, epoch=epoch, val_auc=auc))
    result = epochs_to_fraction_of_best(pd.DataFrame(rows), fraction=0.95).set_index("seed")
    assert result.loc[0, "epochs_to_target"] == 3 and result.loc[0, "best_epoch"] == 4
    assert result.loc[1, "epochs_to_target"] == 4 and result.loc[1, "best_epoch"] == 5
    assert result.loc[1, "target_val_auc"] == pytest.approx(0.9025)
    assert result.loc[0, "best_val_auc"] == 0.80
    # fraction 1 is the first epoch at the best value; a low fraction is the first epoch.
    at_best = epochs_to_fraction_of_best(pd.DataFrame(rows), fraction=1.0).set_index("seed")
    assert list(at_best["epochs_to_target"]) == [4, 5]
    early = epochs_to_fraction_of_best(pd.DataFrame(rows), fraction=0.5).set_index("seed")
    assert list(early["epochs_to_target"]) == [1, 1]
    with pytest.raises(ValueError):
        epochs_to_fraction_of_best(pd.DataFrame(rows), fraction=0.0)


def test_epochs_to_fraction_separates_runs_by_every_run_column():
    base = dict(dataset="d", arch="a", fraction=1.0, seed=0, epoch=1)
    rows = [
        base | dict(init="WT-ST_n_k1", init_name="WT-ST", source="n", k=1, val_auc=0.91),
        base | dict(init="WT-ST_n_k1", init_name="WT-ST", source="n", k=1, val_auc=0.95, epoch=2),
        base | dict(init="RI", init_name="RI", source="", k=np.nan, val_auc=0.6),
        base | dict(init="RI", init_name="RI", source="", k=np.nan, val_auc=0.8, epoch=2),
    ]
    result = epochs_to_fraction_of_best(pd.DataFrame(rows)).set_index("init")
    assert result.loc["WT-ST_n_k1", "epochs_to_target"] == 1  # 0.91 ≥ 0.95 × 0.95
    assert result.loc["RI", "epochs_to_target"] == 2  # 0.6 < 0.95 × 0.8


# --------------------------------------------------------------------------- style


def test_init_colours_depend_on_the_label_only():
    study = list(INITS) + [
        "Gabor",
        "WT_imagenet",
        "WT-RI_natural_k2_slim0.5",
        "WT-ST_natural_k3",
        "ST_imagenet",
    ]
    full = init_palette(study)
    assert len(set(full.values())) == len(study), "two inits of one study share a colour"
    for subset in (["WT_natural"], ["WT-ST_natural_k2", "RI"], ["WT_imagenet", "ST_natural"], study[::-1]):
        assert init_palette(subset) == {label: full[label] for label in subset}


def test_a_k_sweep_is_told_apart_by_dashes_not_colour_alone():
    sweep = [f"WT-ST_cifar_k{k}" for k in range(1, 7)]
    dashes = init_dashes(["RI", "WT_cifar", "ST_cifar", *sweep])
    assert dashes["RI"] == dashes["WT_cifar"] == dashes["ST_cifar"] == ""  # solid
    assert len({dashes[label] for label in sweep}) == len(sweep) and "" not in {dashes[label] for label in sweep}
    assert init_dashes(["WT-RI_natural_k3_slim0.5"])["WT-RI_natural_k3_slim0.5"] == dashes["WT-ST_cifar_k3"]


def test_sources_whose_shades_coincide_are_separated():
    # Find two source names with the same preferred shade (a hash collision), then check that
    # init_palette still gives them different colours while each alone keeps its own.
    names = [f"source{i}" for i in range(50)]
    colours = {name: init_palette([f"WT_{name}"])[f"WT_{name}"] for name in names}
    a, b = next((a, b) for a, b in itertools.combinations(names, 2) if colours[a] == colours[b])
    both = init_palette([f"WT_{a}", f"WT_{b}"])
    assert both[f"WT_{a}"] != both[f"WT_{b}"]
    assert both[f"WT_{min(a, b)}"] == colours[min(a, b)]


def test_save_figure_is_atomic_and_pairs_png(tmp_path, fast_pdf):
    fig = new_figure(2, 2)
    fig.subplots().plot([0, 1], [0, 1])
    out = tmp_path / "deep" / "fig.pdf"
    save_figure(fig, out)
    assert_written(out)
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "fig.png")
