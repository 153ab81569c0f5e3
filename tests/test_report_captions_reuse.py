"""Captions of the feature-reuse and cross-run figures (medtransfer.report.captions_reuse): each
built from a small hand-made CSV (two seeds), its numbers checked against pandas / numpy computed
here from the same rows, and its rst rendered by docutils without a warning."""

from __future__ import annotations

from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from medtransfer.figures.catalog import FIGURES
from medtransfer.report.captions import caption_text, missing_captions
from test_report import plain, render_rst, run_row, write

BLOCKS = ["block1", "block2", "head"]


def ms(values) -> str:
    """mean ± sample sd to 3 decimals, as the captions print it (computed here with numpy)."""
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def found(text: str) -> str:
    """The "What this run found" part of a caption, rst literals removed."""
    return plain(text[text.index("What this run found"):])


def test_the_eight_new_figures_have_captions_of_their_own():
    for name in ("weight_drift", "reinit", "layer_knn", "filters", "fid_gain", "fid_st_share",
                 "prediction_similarity", "representation_gain"):
        assert FIGURES[name].caption is not None, name
    assert missing_captions() == []


# ---- weight drift -----------------------------------------------------------------------------


def drift_frame() -> pd.DataFrame:
    """Relative drift of three blocks (and a zero-init block with no relative drift, NaN)."""
    values = {("RI", 0): [0.05, 0.12, 0.30], ("RI", 1): [0.07, 0.10, 0.34],
              ("WT_natural", 0): [0.02, 0.08, 0.40], ("WT_natural", 1): [0.03, 0.10, 0.36]}
    rows = []
    for (init, seed), vs in values.items():
        run = f"lesions/cbr_tiny/{init}/f1.0/s{seed}"
        for i, (block, v) in enumerate(zip(BLOCKS + ["zero"], vs + [np.nan])):
            rows.append(run_row("lesions", init, 1.0, seed, run=run, block=block, block_index=i, l2=v * 10,
                                relative=v, n_params=100))
    return pd.DataFrame(rows)


def test_weight_drift_caption_names_the_least_and_most_moved_blocks_and_compares_with_ri(tmp_path):
    frame = drift_frame()
    text = caption_text("weight_drift", write(frame, tmp_path, "weight_drift"))
    out = found(text)
    frame = frame.dropna(subset=["relative"])
    means = frame.groupby(["init", "block"])["relative"].mean().unstack()
    for init in ("RI", "WT_natural"):
        least, most = means.loc[init].idxmin(), means.loc[init].idxmax()
        values = lambda b: frame.loc[(frame["init"] == init) & (frame["block"] == b), "relative"]  # noqa: E731
        assert f"{init}: least {least} {ms(values(least))}, most {most} {ms(values(most))}" in out
    below = int((means.loc["WT_natural"] < means.loc["RI"]).sum())  # block1 and block2, not the head
    assert below == 2
    assert (f"less than RI in {below} of 3 blocks (mean over blocks {means.loc['WT_natural'].mean():.3f} "
            f"vs {means.loc['RI'].mean():.3f})") in out
    assert "lesions · cbr_tiny · 100 % data" in out and "2 seeds per initialisation" in out
    assert "zero" not in out  # a block without a relative drift is not drawn, nor described
    render_rst(text)


# ---- re-initialisation ------------------------------------------------------------------------


def reinit_frame() -> pd.DataFrame:
    """Drops of AUC (and of accuracy, not drawn) per block, with the `none` and `all` rows."""
    drops = {("RI", 0): [0.02, 0.05, 0.001, 0.30], ("RI", 1): [0.04, 0.03, 0.003, 0.26],
             ("WT_natural", 0): [0.10, 0.02, 0.002, 0.35], ("WT_natural", 1): [0.08, 0.04, 0.000, 0.31]}
    rows = []
    for (init, seed), ds in drops.items():
        run = f"lesions/cbr_tiny/{init}/f1.0/s{seed}"
        names = [("none", -1, 0.0)] + [(b, i, d) for i, (b, d) in enumerate(zip(BLOCKS + ["all"], ds))]
        for metric, scale in (("auc", 1.0), ("acc", 3.0)):
            for block, index, drop in names:
                rows.append(run_row("lesions", init, 1.0, seed, run=run, block=block, block_index=index,
                                    metric=metric, value=0.8 - scale * drop, drop=scale * drop))
    return pd.DataFrame(rows)


def test_reinit_caption_gives_the_drop_per_block_and_the_block_that_matters_most(tmp_path):
    frame = reinit_frame()
    text = caption_text("reinit", write(frame, tmp_path, "reinit"))
    out = found(text)
    auc = frame[(frame["metric"] == "auc") & (frame["block"] != "none")]
    for init in ("RI", "WT_natural"):
        rows = auc[auc["init"] == init]
        per_block = ", ".join(f"{b} {ms(rows.loc[rows['block'] == b, 'drop'])}" for b in BLOCKS)
        means = rows[rows["block"] != "all"].groupby("block")["drop"].mean()
        largest = means.idxmax()
        assert (f"{init}: {per_block}; largest {largest} ({means[largest]:.3f}); "
                f"all blocks at once {ms(rows.loc[rows['block'] == 'all', 'drop'])}") in out
    assert "largest block2 (0.040)" in out and "largest block1 (0.090)" in out  # RI's, WT's
    assert "drop in test AUC" in out and "0.240" not in out  # accuracy's drops (×3) are not described
    render_rst(text)


# ---- layer-wise k-NN --------------------------------------------------------------------------


def knn_frame() -> pd.DataFrame:
    values = {("RI", "init", 0): [0.55, 0.56, 0.52], ("RI", "init", 1): [0.53, 0.58, 0.50],
              ("RI", "final", 0): [0.60, 0.70, 0.74], ("RI", "final", 1): [0.62, 0.72, 0.70],
              ("WT_natural", "init", 0): [0.65, 0.70, 0.60], ("WT_natural", "init", 1): [0.67, 0.72, 0.62],
              ("WT_natural", "final", 0): [0.70, 0.80, 0.78], ("WT_natural", "final", 1): [0.72, 0.82, 0.76]}
    rows = []
    for (init, state, seed), vs in values.items():
        for i, (block, v) in enumerate(zip(BLOCKS, vs)):
            for metric, shift in (("auc", 0.0), ("acc", -0.3)):
                rows.append(run_row("grades", init, 0.2, seed, run=f"r{init}{seed}", state=state, block=block,
                                    block_index=i, metric=metric, value=v + shift, k=20))
    return pd.DataFrame(rows)


def test_layer_knn_caption_gives_the_last_block_at_init_and_fine_tuned_and_the_peak(tmp_path):
    frame = knn_frame()
    text = caption_text("layer_knn", write(frame, tmp_path, "layer_knn"))
    out = found(text)
    auc = frame[frame["metric"] == "auc"]
    for init in ("RI", "WT_natural"):
        rows = auc[auc["init"] == init]
        at = lambda s, b: rows.loc[(rows["state"] == s) & (rows["block"] == b), "value"]  # noqa: E731
        peaks = {s: rows[rows["state"] == s].groupby("block")["value"].mean().idxmax() for s in ("init", "final")}
        assert (f"{init}: head {ms(at('init', 'head'))} at init → {ms(at('final', 'head'))} fine-tuned; "
                f"peak fine-tuned at {peaks['final']} {ms(at('final', peaks['final']))}; "
                f"peak at init at {peaks['init']} {ms(at('init', peaks['init']))}") in out
    assert "grades · cbr_tiny · 20 % data" in out and "k-NN test AUC" in out
    render_rst(text)


# ---- first-layer filters ----------------------------------------------------------------------


def kernels_frame() -> pd.DataFrame:
    """Two 1-channel 2 × 2 kernels per init and state; a second seed's cell the figure does not draw."""
    rng = np.random.default_rng(3)
    rows = []
    for seed in (0, 1):
        for init, step in (("RI", 0.05), ("WT_natural", 0.01)):
            start = rng.normal(0, 0.2, size=(2, 1, 2, 2))
            for state, weights in (("init", start), ("final", start + step * rng.standard_normal(start.shape))):
                for (f, c, r, col), v in np.ndenumerate(weights):
                    rows.append(run_row("lesions", init, 1.0, seed, run=f"{init}{seed}", layer="block1.conv",
                                        state=state, filter=f, channel=c, row=r, col=col, value=v))
    return pd.DataFrame(rows)


def test_filters_caption_gives_the_mean_absolute_change_of_the_drawn_cell(tmp_path):
    frame = kernels_frame()
    text = caption_text("filters", write(frame, tmp_path, "filter_kernels"))
    out = found(text)
    drawn = frame[frame["seed"] == 0]  # the cell of the first row, as plot_filters draws it
    change = {}
    for init in ("RI", "WT_natural"):
        runs = drawn[drawn["init"] == init].sort_values(["filter", "channel", "row", "col"])
        start = runs.loc[runs["state"] == "init", "value"].to_numpy()
        end = runs.loc[runs["state"] == "final", "value"].to_numpy()
        change[init] = np.abs(end - start).mean()
        scale = np.abs(start).mean()
        assert f"{init} {change[init]:.3f} ({100 * change[init] / scale:.1f} % of mean |W_init| {scale:.3f})" in out
    assert "seed 0 (1 seed), block1.conv, 2 kernels drawn" in out
    assert min(change, key=change.get) == "WT_natural"
    assert "; least changed WT_natural, most RI" in out
    render_rst(text)


# ---- FID against the gain ---------------------------------------------------------------------


def fid_frame() -> pd.DataFrame:
    """fid_gain.csv rows of one panel: two targets from `natural`, one source without WT runs,
    one target without ST runs."""
    def row(dataset, source, fid, wt=np.nan, wt_sd=np.nan, st=np.nan, n_wt=2, n_st=2, note=""):
        share = (wt - st) / wt if np.isfinite(wt) and np.isfinite(st) and wt > 0 else np.nan
        return {"dataset": dataset, "arch": "cbr_tiny", "fraction": 0.2, "source": source, "source_dataset": "shapes",
                "features": "natural", "fid": fid, "metric": "test_auc", "n_ri": 2, "n_wt": n_wt, "n_st": n_st,
                "ri_mean": 0.6, "wt_mean": 0.6 + wt, "st_mean": 0.6 + st, "wt_gain_mean": wt, "wt_gain_sd": wt_sd,
                "st_gain_mean": st, "st_gain_sd": 0.01, "st_share": share, "note": note}
    return pd.DataFrame([row("lesions", "natural", 68.9, 0.067, 0.012, 0.006),
                         row("grades", "natural", 70.9, 0.032, 0.020, -0.002),
                         row("spots", "natural", 75.5, 0.010, 0.004, n_st=0, note="no ST_natural runs"),
                         row("lesions", "medical", 30.2, n_wt=0, note="no WT_medical runs")])


def test_fid_gain_caption_gives_the_gain_per_pair_with_its_fid_and_the_trend(tmp_path):
    frame = fid_frame()
    text = caption_text("fid_gain", write(frame, tmp_path, "fid_gain"))
    out = found(text)
    assert "**cbr_tiny · 20 % data**, WT − RI in test AUC" in out
    assert "lesions from natural, FID(shapes, lesions) 68.9: +0.067 ± 0.012 (2 WT, 2 RI seeds)" in out
    assert "grades from natural, FID(shapes, grades) 70.9: +0.032 ± 0.020" in out
    assert out.index(" 68.9") < out.index(" 70.9") < out.index(" 75.5")  # ordered by FID
    drawn = frame.dropna(subset=["wt_gain_mean"])
    rho = drawn["fid"].corr(drawn["wt_gain_mean"], method="spearman")
    assert rho == pytest.approx(-1.0)
    assert f"the gain falls as FID grows (Spearman ρ = {rho:+.2f}, n = {len(drawn)} pairs)" in out
    assert "lesions from medical, FID(shapes, lesions) 30.2: no WT_medical runs" in out
    render_rst(text)


def test_fid_st_share_caption_gives_the_share_and_says_when_st_is_missing(tmp_path):
    frame = fid_frame()
    text = caption_text("fid_st_share", write(frame, tmp_path, "fid_gain"))
    out = found(text)
    for dataset, wt, st in (("lesions", 0.067, 0.006), ("grades", 0.032, -0.002)):
        share = (wt - st) / wt  # (WT − ST) / (WT − RI), both gains over the same RI mean
        assert f"{dataset} from natural" in out
        assert f"{share:.2f} (WT − RI {wt:+.3f}, ST − RI {st:+.3f}; 2 WT, 2 ST, 2 RI seeds)" in out
    assert "spots from natural, FID(shapes, spots) 75.5: no ST_natural runs" in out
    assert "2 pairs: too few for a trend with FID" in out and "Spearman" not in out  # 0.91 and 1.06
    render_rst(text)


# ---- prediction similarity --------------------------------------------------------------------


def predictions_frame() -> pd.DataFrame:
    def pair(kind, init_a, init_b, seed_a, seed_b, agreement, kappa):
        return {"dataset": "lesions", "arch": "cbr_tiny", "fraction": 1.0, "init_a": init_a, "init_b": init_b,
                "seed_a": seed_a, "seed_b": seed_b, "kind": kind, "agreement": agreement, "kappa": kappa,
                "run_a": "a", "run_b": "b", "split": "test", "task": "binary", "n_examples": 100,
                "pearson": 0.5, "spearman": 0.5}
    return pd.DataFrame([pair("inits", "WT_natural", "RI", 0, 0, 0.80, 0.60),
                         pair("inits", "WT_natural", "RI", 1, 1, 0.84, 0.66),
                         pair("seeds", "RI", "RI", 0, 1, 0.90, np.nan),  # one class for every image
                         pair("seeds", "WT_natural", "WT_natural", 0, 1, 0.95, 0.90)])


def test_prediction_similarity_caption_reads_pairs_against_the_seed_noise_floor(tmp_path):
    frame = predictions_frame()
    text = caption_text("prediction_similarity", write(frame, tmp_path, "prediction_similarity"))
    out = found(text)
    pairs = frame[frame["kind"] == "inits"]
    floors = frame[frame["kind"] == "seeds"].groupby("init_a")["agreement"].mean()
    assert (f"WT_natural vs RI (2 seeds): agreement {ms(pairs['agreement'])}, κ {ms(pairs['kappa'])}; "
            f"below the seed noise floors ({floors['WT_natural']:.3f}, {floors['RI']:.3f})") in out
    assert pairs["agreement"].mean() < floors.min()
    assert "noise floor RI, two seeds of it (1 seed pair): agreement 0.900, κ undefined (one class predicted)" in out
    assert "noise floor WT_natural, two seeds of it (1 seed pair): agreement 0.950, κ 0.900" in out
    render_rst(text)


# ---- representation vs gain -------------------------------------------------------------------


def representation_frame() -> pd.DataFrame:
    """Per target 4 runs × 2 blocks, in two measures (svcca's gains reversed, so a wrong measure shows)."""
    points = {"lesions": ([0.90, 0.80, 0.70, 0.60], [0.01, 0.03, 0.02, 0.05]),
              "grades": ([0.50, 0.55, 0.65, 0.70], [0.04, 0.02, 0.01, 0.00])}
    rows = []
    for dataset, (similarity, gain) in points.items():
        for i, (s, g) in enumerate(zip(similarity, gain)):
            init, seed = ("WT_natural", "ST_natural")[i % 2], i // 2
            for b, block in enumerate(("block1", "head")):
                for measure, sign in (("linear_cka_debiased", 1), ("svcca", -1)):
                    rows.append({"dataset": dataset, "arch": "cbr_tiny", "init": init, "init_name": init[:2],
                                 "fraction": 1.0, "seed": seed, "block": block, "block_index": b, "measure": measure,
                                 "similarity": s - 0.1 * b + 0.001 * i * b, "metric": "test_auc", "gain": sign * g})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("measure", [None, "svcca"])
def test_representation_gain_caption_gives_spearman_and_n_per_block(measure, tmp_path):
    frame = representation_frame()
    text = caption_text("representation_gain", write(frame, tmp_path, "representation_gain_runs"), measure=measure)
    out = found(text)
    drawn = frame[frame["measure"] == (measure or "linear_cka_debiased")]
    for dataset, label in (("lesions", "lesions"), ("grades", "grades"), (None, "all targets")):
        rows = drawn if dataset is None else drawn[drawn["dataset"] == dataset]
        line = next(line for line in out.splitlines() if line.startswith(f"- **{label} · cbr_tiny**"))
        for block in ("block1", "head"):
            points = rows[rows["block"] == block]
            rho = points["similarity"].corr(points["gain"], method="spearman")
            assert f"{block} ρ = {rho:+.2f} (p = " in line and f", n = {len(points)})" in line, (label, block, line)
    assert ("debiased" in out) == (measure is None)
    render_rst(text)


def test_representation_gain_caption_falls_back_to_the_measure_the_figure_draws(tmp_path):
    frame = representation_frame().sort_values("measure", ascending=False, kind="stable")  # svcca rows first
    path = write(frame, tmp_path, "r")
    # a measure the CSV lacks: the figure draws the CSV's first (svcca), not its default
    assert "debiased" not in found(caption_text("representation_gain", path, measure="pwcca"))
    assert "debiased" in found(caption_text("representation_gain", path))  # the default, present


def test_representation_gain_caption_says_when_rho_is_undefined(tmp_path):
    frame = representation_frame()
    frame = frame[(frame["dataset"] == "lesions") & (frame["seed"] == 0)]  # 2 runs: no rank correlation
    out = found(caption_text("representation_gain", write(frame, tmp_path, "r")))
    assert "block1 ρ undefined (n = 2)" in out and "p < 0.05 in 0 of 2 blocks" in out


def test_the_new_captions_render_through_the_report_template(tmp_path, monkeypatch):
    """Every caption of this module with its data through workflow/report/figure.rst (Jinja2, then
    docutils with the include resolved from the working directory), as `snakemake --report` does."""
    inputs = {"weight_drift": drift_frame(), "reinit": reinit_frame(), "layer_knn": knn_frame(),
              "filters": kernels_frame(), "fid_gain": fid_frame(), "fid_st_share": fid_frame(),
              "prediction_similarity": predictions_frame(), "representation_gain": representation_frame()}
    template = (REPO / "workflow" / "report" / "figure.rst").read_text()
    monkeypatch.chdir(tmp_path)
    for name, frame in inputs.items():
        caption = Path(f"results/figures/{name}.rst")
        caption.parent.mkdir(parents=True, exist_ok=True)
        caption.write_text(caption_text(name, write(frame, tmp_path, name)))
        output = {"caption": str(caption), "pdf": f"results/figures/{name}.pdf"}
        html = render_rst(jinja2.Environment().from_string(template).render(snakemake={"output": output}))
        assert "What this run found" in html and "<li>" in html and f"results/figures/{name}.pdf" in html, name


def test_the_domain_captions_read_what_the_analyses_write(tmp_path):
    """fid_gain.csv, prediction_similarity.csv and representation_gain_runs.csv of a small study
    as the analysis functions write them (tests/test_figures.py): every point has its numbers."""
    from test_figures import add_domain_results, make_results

    paths = add_domain_results(tmp_path, make_results(tmp_path, seeds=(0, 1)))
    gains = pd.read_csv(paths["fid_gain"])
    text = found(caption_text("fid_gain", paths["fid_gain"]))
    for row in gains.dropna(subset=["wt_gain_mean"]).itertuples():
        assert f"{row.dataset} from natural, FID(shapes, {row.dataset}) {row.fid:.1f}: {row.wt_gain_mean:+.3f}" in text
    shares = found(caption_text("fid_st_share", paths["fid_gain"]))
    for row in gains.itertuples():
        assert (f"{row.st_share:.2f} (WT − RI" in shares) if np.isfinite(row.st_share) else (row.note in shares)
    for name in ("prediction_similarity", "representation_gain"):
        kind = "representation_gain_runs" if name == "representation_gain" else name
        render_rst(caption_text(name, paths[kind]))
    points = pd.read_csv(paths["representation_gain_runs"])
    points = points[points["measure"] == points["measure"].iloc[0]]  # no debiased CKA here: the first measure
    text = found(caption_text("representation_gain", paths["representation_gain_runs"]))
    for (dataset, arch), rows in points.groupby(["dataset", "arch"]):  # the study has similarities of one target
        n = rows.groupby("block")["gain"].count().iloc[0]
        assert f"- **{dataset} · {arch}**" in text and f", n = {n})" in text


def test_the_figure_command_gives_the_representation_gain_caption_the_drawn_measure(tmp_path):
    """`medtransfer figure representation_gain --measure svcca`: figure and caption both svcca."""
    from medtransfer.cli import main

    path = write(representation_frame(), tmp_path, "representation_gain_runs")
    assert main(["figure", "representation_gain", "--input", str(path), "--out", str(tmp_path / "r.pdf"),
                 "--measure", "svcca"]) == 0
    text = (tmp_path / "r.rst").read_text()
    assert "debiased" not in found(text) and (tmp_path / "r.png").is_file()
