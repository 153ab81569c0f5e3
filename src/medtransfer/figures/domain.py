"""Figures of the cross-run feature-reuse analyses.

- :func:`plot_fid_gain`: WT's gain over RI against the FID between the source's dataset and the
  target (Matsoukas et al. 2022: the gain shrinks as the domains move apart).
- :func:`plot_fid_st_share`: the share of that gain the weight statistics do not explain,
  (WT − ST) / (WT − RI), against the FID.
- :func:`plot_prediction_similarity`: per target, an init × init heatmap of how alike two runs
  predict (mean over seeds), the diagonal the seed noise floor (Juodelyte et al.).
- :func:`plot_representation_gain`: per block, each run's similarity(init, final) against its
  gain over RI, with the Spearman correlation (Juodelyte et al.: none).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from scipy import stats

from medtransfer.columns import (
    FID_GAIN_FIGURE_COLUMNS,
    PREDICTION_SIMILARITY_READ_COLUMNS,
    REPRESENTATION_GAIN_RUNS_READ_COLUMNS,
)
from medtransfer.figures.io import appearance_order, read_results
from medtransfer.figures.panels import line_handles, marker_handles, panel_title
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_palette,
    legend_outside,
    measure_label,
    metric_label,
    save_figure,
    save_no_data,
    sort_inits,
)

_TARGET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _say(ax, text: str) -> None:
    """A panel's reason for drawing nothing (or less than asked)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes)


def _fid_figure(csv: str | Path, out_pdf: str | Path, y: str, yerr: str | None, ylabel: str, title: str,
                empty_note: str) -> Path:
    """``y`` (± ``yerr``) against FID: rows = architectures, columns = fractions; one point per
    (target, source), colour = the source's WT colour, marker = target."""
    frame = read_results(csv, FID_GAIN_FIGURE_COLUMNS)
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no (source, target) pairs with an FID in {Path(csv).name}", out_pdf)
        archs = appearance_order(frame["arch"])
        fractions = sorted(frame["fraction"].unique())
        targets = appearance_order(frame["dataset"])
        markers = {t: _TARGET_MARKERS[i % len(_TARGET_MARKERS)] for i, t in enumerate(targets)}
        sources = appearance_order(frame["source"])
        palette = init_palette([f"WT_{s}" for s in sources])
        colours = {s: palette[f"WT_{s}"] for s in sources}
        fig, axes = facet_axes(len(archs), len(fractions), panel_width=3.6, panel_height=3.0, sharex=True)
        for r, arch in enumerate(archs):
            for c, fraction in enumerate(fractions):
                ax = axes[r, c]
                panel = frame[(frame["arch"] == arch) & (frame["fraction"] == fraction)]
                ax.set_title(panel_title(arch, None, fraction))
                drawn = panel.dropna(subset=[y])
                for row in drawn.itertuples(index=False):
                    err = getattr(row, yerr) if yerr else None
                    ax.errorbar(row.fid, getattr(row, y), yerr=err if err is not None and np.isfinite(err) else None,
                                fmt=markers[row.dataset], color=colours[row.source], markersize=7, capsize=3,
                                elinewidth=1.2, zorder=3)
                    ax.annotate(row.dataset, (row.fid, getattr(row, y)), textcoords="offset points", xytext=(5, 4),
                                fontsize=7)
                notes = sorted({f"{row.dataset}, {row.source}: {row.note}" for row in panel.itertuples(index=False)
                                if not np.isfinite(getattr(row, y)) and row.note})
                if drawn.empty:
                    _say(ax, "\n".join(notes) or empty_note)
                elif notes:
                    ax.text(0.02, 0.02, "\n".join(notes), fontsize=6, va="bottom", transform=ax.transAxes)
                if not drawn.empty and y == "wt_gain_mean":
                    ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle=":", zorder=1)
                ax.set_xlabel("FID" if r == len(archs) - 1 else "")
                ax.set_ylabel(ylabel if c == 0 else "")
        handles = marker_handles(sources, colours) + marker_handles(targets, {t: "0.3" for t in targets})
        for handle, target in zip(handles[len(sources):], targets):
            handle.set_marker(markers[target])
        legend_outside(fig, handles, [f"WT from {s}" for s in sources] + [f"target {t}" for t in targets])
        fig.supxlabel(f"FID between the source's pretraining dataset and the target ({frame['features'].iloc[0]} "
                      "features; unitless)", fontsize=9)
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def plot_fid_gain(fid_gain_csv: str | Path, out_pdf: str | Path) -> Path:
    """WT's gain over RI (test metric, mean ± sd over seeds) against the FID between the source's
    dataset and the target, per architecture (rows) and fraction (columns)."""
    frame = read_results(fid_gain_csv, FID_GAIN_FIGURE_COLUMNS)
    metric = metric_label(frame["metric"].iloc[0]) if len(frame) else "test metric"
    return _fid_figure(fid_gain_csv, out_pdf, "wt_gain_mean", "wt_gain_sd", f"WT − RI, {metric}\n(mean ± sd over seeds)",
                       "Gain of weight transfer over random init against domain distance",
                       "no WT and RI runs to compare")


def plot_fid_st_share(fid_gain_csv: str | Path, out_pdf: str | Path) -> Path:
    """(WT − ST) / (WT − RI) against FID: 1 = none of WT's gain is in the weight statistics
    alone, 0 = ST recovers all of it (group means over seeds, so no error bars)."""
    frame = read_results(fid_gain_csv, FID_GAIN_FIGURE_COLUMNS)
    metric = metric_label(frame["metric"].iloc[0]) if len(frame) else "test metric"
    return _fid_figure(fid_gain_csv, out_pdf, "st_share", None, f"(WT − ST) / (WT − RI)\n{metric}, seed means",
                       "Share of the transfer gain that weight statistics do not explain",
                       "the study needs RI, WT and ST runs of a source for this share")


def plot_prediction_similarity(csv: str | Path, out_pdf: str | Path) -> Path:
    """Init × init heatmaps of mean agreement and mean Cohen's kappa over seeds: rows are
    (target, architecture), columns (fraction, measure); the diagonal is two seeds of one init
    (the noise floor). Cells without a pair are blank."""
    frame = read_results(csv, PREDICTION_SIMILARITY_READ_COLUMNS)
    title = "How alike two runs predict on the test set (mean over seeds; diagonal: two seeds of one init)"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no pairs of runs in {Path(csv).name}", out_pdf)
        combos = [(d, a) for d in appearance_order(frame["dataset"])
                  for a in appearance_order(frame.loc[frame["dataset"] == d, "arch"])]
        fractions = sorted(frame["fraction"].unique())
        measures = ["agreement", "kappa"]
        inits = sort_inits(pd.concat([frame["init_a"], frame["init_b"]]))
        side = max(3.2, 0.45 * len(inits) + 1.6)
        fig, axes = facet_axes(len(combos), len(fractions) * len(measures), panel_width=side, panel_height=side)
        cmap = "viridis"
        low = min(0.0, float(np.nanmin(frame[measures].to_numpy(float)))) if frame[measures].notna().any().any() else 0
        norm = mcolors.Normalize(low, 1.0)
        for r, (dataset, arch) in enumerate(combos):
            for f, fraction in enumerate(fractions):
                for m, measure in enumerate(measures):
                    ax = axes[r, f * len(measures) + m]
                    panel = frame[(frame["dataset"] == dataset) & (frame["arch"] == arch) & (frame["fraction"] == fraction)]
                    name = "agreement" if measure == "agreement" else "Cohen's κ"
                    ax.set_title(f"{name}\n{panel_title(dataset, arch, fraction)}", fontsize=9)
                    if panel.empty:
                        ax.set_axis_off()
                        _say(ax, "no pairs")
                        continue
                    _init_heatmap(ax, panel, measure, inits, cmap, norm)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), location="right",
                     shrink=min(0.8, 1.6 / len(combos)), aspect=15, label="agreement or κ (mean over seeds)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _init_heatmap(ax, panel: pd.DataFrame, measure: str, inits: list[str], cmap: str, norm) -> None:
    """Symmetric init × init matrix of the mean ``measure``; NaN cells (undefined kappa, or no
    pair) stay blank and are marked."""
    index = {init: i for i, init in enumerate(inits)}
    values = np.full((len(inits), len(inits)), np.nan)
    for (a, b), group in panel.groupby(["init_a", "init_b"]):
        mean = group[measure].mean()  # NaN kappas (one shared class) are left out by pandas
        values[index[a], index[b]] = values[index[b], index[a]] = mean
    n = len(inits)
    ax.pcolormesh(np.arange(n + 1) - 0.5, np.arange(n + 1) - 0.5, np.ma.masked_invalid(values), cmap=cmap, norm=norm)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # the first init at the top left: the diagonal runs as in a matrix
    ax.grid(False)
    ax.set_xticks(range(n))
    ax.set_xticklabels(inits, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(inits, fontsize=7)
    colours = matplotlib.colormaps[cmap](norm(np.nan_to_num(values)))
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):  # κ is undefined when both runs predict one class for every image
            ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="0.4")
            continue
        luminance = colours[i, j, :3] @ np.array([0.299, 0.587, 0.114])
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="black" if luminance > 0.5 else "white")


def plot_representation_gain(csv: str | Path, out_pdf: str | Path, measure: str = "linear_cka_debiased") -> Path:
    """Each run's similarity(init, final) of a block against its gain over RI, one panel per
    block (columns) and target × architecture (rows), colour = init; the panel title gives the
    Spearman correlation over the panel's runs (the rows of representation_gain.csv)."""
    frame = read_results(csv, REPRESENTATION_GAIN_RUNS_READ_COLUMNS)
    title = f"{measure_label(measure)}(init, final) per block against the gain over random init"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no runs with both a similarity and a gain over RI in {Path(csv).name} "
                                       "(the study needs RI runs and other inits)", out_pdf)
        selected = frame[frame["measure"] == measure]
        if selected.empty:
            measure = frame["measure"].iloc[0]
            selected = frame[frame["measure"] == measure]
            title = f"{measure_label(measure)}(init, final) per block against the gain over random init"
        combos = [(d, a) for d in appearance_order(selected["dataset"])
                  for a in appearance_order(selected.loc[selected["dataset"] == d, "arch"])]
        n_blocks = int(selected.groupby("arch")["block_index"].nunique().max())
        inits = sort_inits(selected["init"])
        palette = init_palette(inits)
        fig, axes = facet_axes(len(combos), n_blocks, panel_width=2.4, panel_height=2.3, sharey="row")
        metric = metric_label(selected["metric"].iloc[0])
        for r, (dataset, arch) in enumerate(combos):
            rows = selected[(selected["dataset"] == dataset) & (selected["arch"] == arch)]
            blocks = rows.drop_duplicates("block_index").sort_values("block_index")
            for c in range(n_blocks):
                ax = axes[r, c]
                if c >= len(blocks):
                    ax.set_axis_off()
                    continue
                block = blocks["block"].iloc[c]
                panel = rows[rows["block"] == block]
                for init, points in panel.groupby("init"):
                    ax.scatter(points["similarity"], points["gain"], s=14, color=palette[init], alpha=0.8,
                               linewidths=0)
                ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle=":")
                rho = _spearman_text(panel["similarity"], panel["gain"])
                ax.set_title(f"{dataset} · {block}\n{rho}", fontsize=8)
                ax.set_xlabel(f"{measure_label(measure)}" if r == len(combos) - 1 else "", fontsize=8)
                ax.set_ylabel(f"{metric} − mean RI" if c == 0 else "", fontsize=8)
                ax.tick_params(labelsize=7)
        legend_outside(fig, line_handles(inits, palette), inits, "init (one dot per run)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _spearman_text(x: pd.Series, y: pd.Series) -> str:
    """'ρ = 0.12 (p = 0.6, n = 12)', the same scipy statistic as representation_gain.csv."""
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return f"ρ undefined (n = {len(x)})"
    result = stats.spearmanr(x, y)
    return f"ρ = {result.statistic:.2f} (p = {result.pvalue:.2g}, n = {len(x)})"
