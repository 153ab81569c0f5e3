"""Test performance figures from ``metrics.csv`` (one row per run).

- :func:`plot_test_metric`: a metric per init, every seed as a dot with mean ± sd, per dataset
  × architecture and data fraction.
- :func:`plot_metric_vs_k`: the WT-ST-k / WT-RI-k sweeps against k, with WT (k = all) and
  ST / RI (k = 0) as references (Matsoukas et al. 2022, Fig. 3).
- :func:`plot_init_comparison`: RI vs ST vs WT per architecture as grouped bars with sd
  (Raghu et al. 2019, Table 4 / Fig. 8).

Spreads are sample standard deviations (ddof=1) over seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medtransfer.columns import RUN_COLUMNS
from medtransfer.figures.io import (
    RUN_KEY,
    appearance_order,
    check_unique,
    facet_rows,
    read_results,
    select_row,
    with_protocol,
)
from medtransfer.figures.panels import mark_no_runs, panel_title, seed_dots_by_init
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_palette,
    legend_outside,
    metric_label,
    parse_init,
    save_figure,
    save_no_data,
    sort_inits,
)

PARTIAL_INITS = ("WT-ST", "WT-RI")
# Where each reference init sits on the k axis (WT transfers all blocks, ST and RI none) and the
# small sideways offset that keeps ST and RI from hiding each other at k = 0.
REFERENCE_INITS = {"RI": ("0", -0.12), "ST": ("0", 0.12), "WT": ("all", 0.0)}


def _read_metrics(metrics_csv: str | Path, metric: str) -> pd.DataFrame:
    """The fine-tuning runs of metrics.csv (the protocols figure draws the others)."""
    frame = with_protocol(read_results(metrics_csv, RUN_COLUMNS + (metric,)))
    frame = frame[frame["protocol"] == "finetune"]
    check_unique(frame, RUN_KEY, metrics_csv)
    return frame.dropna(subset=[metric])


def _baseline(metric: str) -> float:
    """Where bars start: chance level for AUCs (0.5), zero otherwise."""
    return 0.5 if metric.endswith("auc") else 0.0


def plot_test_metric(metrics_csv: str | Path, out_pdf: str | Path, metric: str = "test_auc") -> Path:
    """``metric`` per init: rows are datasets, columns architectures; x = init, colour = data
    fraction; one dot per seed and the mean ± sd of the seeds. Writes ``out_pdf`` + ``.png``."""
    return seed_dots_by_init(
        _read_metrics(metrics_csv, metric), metric, out_pdf,
        title=f"{metric_label(metric)} per initialisation and training data (dots: seeds; ticks: mean ± sd)",
        ylabel=metric_label(metric), no_data=f"no {metric} values in {Path(metrics_csv).name}",
    )  # fmt: skip


def _series_label(init: str) -> str:
    """The init label without its k: the name of one k sweep (e.g. 'WT-ST_natural')."""
    family, rest, _ = parse_init(init)
    return f"{family}_{rest}" if rest else family


def plot_metric_vs_k(metrics_csv: str | Path, out_pdf: str | Path, metric: str = "test_auc") -> Path:
    """``metric`` against k for the WT-ST-k and WT-RI-k sweeps (mean ± sd over seeds, seeds as
    faint dots), one panel per dataset (and fraction) × architecture. WT is drawn at k = "all",
    ST and RI at k = 0, each also as a dashed line with its ± sd band across the panel."""
    frame = _read_metrics(metrics_csv, metric)
    title = f"{metric_label(metric)} vs number of transferred blocks k"
    partial = frame[frame["init_name"].isin(PARTIAL_INITS) & frame["k"].notna()]
    with figure_style():
        if partial.empty:
            return save_no_data(title, f"no WT-ST-k or WT-RI-k runs with {metric} in {Path(metrics_csv).name}", out_pdf)
        frame = frame[frame["dataset"].isin(partial["dataset"]) & frame["arch"].isin(partial["arch"])]
        rows = facet_rows(frame)
        archs = appearance_order(partial["arch"])
        palette = init_palette(
            list(frame["init"].unique()) + [_series_label(i) for i in partial["init"].unique()]
        )
        fig, axes = facet_axes(len(rows), len(archs), panel_width=3.8, panel_height=3.0, sharey="row")
        legend: dict[str, object] = {}
        for r, row in enumerate(rows):
            for c, arch in enumerate(archs):
                ax = axes[r, c]
                panel = select_row(frame, row)
                panel = panel[panel["arch"] == arch]
                _draw_k_panel(ax, panel, metric, palette, legend)
                ax.set_title(panel_title(row[0], arch, row[1]))
                ax.set_xlabel("k (blocks transferred)" if r == len(rows) - 1 else "")
                ax.set_ylabel(metric_label(metric) if c == 0 else "")
        legend_outside(fig, list(legend.values()), list(legend), "init (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _draw_k_panel(ax, panel: pd.DataFrame, metric: str, palette: dict, legend: dict) -> None:
    partial = panel[panel["init_name"].isin(PARTIAL_INITS) & panel["k"].notna()]
    if partial.empty:
        ax.text(0.5, 0.5, "no partial-transfer runs", ha="center", va="center", transform=ax.transAxes)
        return
    ks = sorted(int(k) for k in partial["k"].unique())
    k_all = ks[-1] + 1
    positions = {"0": 0.0, "all": float(k_all)}
    for series, runs in partial.groupby(partial["init"].map(_series_label), sort=False):
        colour = palette[series]
        stats = runs.groupby("k")[metric].agg(["mean", "std"]).sort_index()
        ax.scatter(runs["k"], runs[metric], s=10, color=colour, alpha=0.35, linewidths=0, zorder=2)
        ax.errorbar(
            stats.index, stats["mean"], yerr=stats["std"].fillna(0.0),
            color=colour, marker="o", markersize=5, capsize=3, linewidth=1.8, zorder=3,
        )  # fmt: skip
        family, rest, _ = parse_init(series)
        legend.setdefault(
            f"{family}-k" + (f" ({rest})" if rest else ""), Line2D([], [], color=colour, marker="o")
        )
    references = panel[panel["init_name"].isin(list(REFERENCE_INITS))]
    for init in sort_inits(references["init"]):
        values = references.loc[references["init"] == init, metric].to_numpy(float)
        name = references.loc[references["init"] == init, "init_name"].iloc[0]
        where, offset = REFERENCE_INITS[name]
        colour = palette[init]
        mean = values.mean()
        sd = values.std(ddof=1) if values.size > 1 else 0.0
        ax.axhline(mean, color=colour, linestyle="--", linewidth=1.1, zorder=1)
        ax.axhspan(mean - sd, mean + sd, color=colour, alpha=0.10, linewidth=0, zorder=0)
        ax.errorbar(
            positions[where] + offset, mean, yerr=sd, color=colour, marker="s", markersize=5, capsize=3
        )
        legend.setdefault(
            f"{init} (k = {where})", Line2D([], [], color=colour, marker="s", linestyle="--", linewidth=1.1)
        )
    ticks = [0, *ks, k_all]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0", *map(str, ks), "all"])
    ax.set_xlim(-0.6, k_all + 0.6)


def plot_init_comparison(metrics_csv: str | Path, out_pdf: str | Path, metric: str = "test_auc") -> Path:
    """RI vs ST vs WT: grouped bars (mean over seeds, whiskers ± sd, dots the seeds) per
    architecture; rows are datasets, columns data fractions. AUC bars start at chance (0.5)."""
    frame = _read_metrics(metrics_csv, metric)
    palette = init_palette(frame["init"].unique())  # of the whole study, so colours match other figures
    frame = frame[frame["init_name"].isin(list(REFERENCE_INITS))]
    title = f"{metric_label(metric)}: random (RI) vs weight statistics (ST) vs weight transfer (WT)"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no RI, ST or WT runs with {metric} in {Path(metrics_csv).name}", out_pdf)
        datasets = appearance_order(frame["dataset"])
        fractions = sorted(float(f) for f in frame["fraction"].unique())
        archs = appearance_order(frame["arch"])
        inits = sort_inits(frame["init"])
        baseline = _baseline(metric)
        width = max(3.4, 0.35 * len(archs) * len(inits) + 1.4)
        fig, axes = facet_axes(
            len(datasets), len(fractions), panel_width=width, panel_height=3.2, sharey="row"
        )
        for r, dataset in enumerate(datasets):
            extent: list[float] = []
            for c, fraction in enumerate(fractions):
                ax = axes[r, c]
                panel = frame[(frame["dataset"] == dataset) & (frame["fraction"] == fraction)]
                extent += _grouped_bars(ax, panel, metric, archs, inits, palette, baseline)
                ax.set_title(panel_title(dataset, fraction=fraction))
                ax.set_xlabel("architecture" if r == len(datasets) - 1 else "")
                label = metric_label(metric) + (f" (bars from {baseline:g}, chance)" if baseline else "")
                ax.set_ylabel(label if c == 0 else "")
            if extent:  # the row shares its y axis: fit every panel of it
                low, high = min(min(extent), baseline), max(max(extent), baseline)
                margin = 0.05 * (high - low) + 1e-3
                axes[r, 0].set_ylim(low - (margin if low < baseline else 0.0), high + margin)
        handles = [Patch(color=palette[i]) for i in inits]
        legend_outside(fig, handles, inits, "init (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _grouped_bars(ax, panel, metric, archs, inits, palette, baseline, width: float = 0.8) -> list[float]:
    """Draw one panel; return the lowest and highest y it needs (empty when it has no runs)."""
    step = width / len(inits)
    extent: list[float] = []
    for i, arch in enumerate(archs):
        for j, init in enumerate(inits):
            values = panel.loc[(panel["arch"] == arch) & (panel["init"] == init), metric].to_numpy(float)
            if values.size == 0:
                continue
            centre = i - width / 2 + step * (j + 0.5)
            mean = values.mean()
            sd = values.std(ddof=1) if values.size > 1 else 0.0
            ax.bar(
                centre, mean - baseline, bottom=baseline, width=step * 0.92, color=palette[init],
                yerr=sd, capsize=3, error_kw={"elinewidth": 1.2, "ecolor": "black"}, zorder=2,
            )  # fmt: skip
            jitter = np.linspace(-0.2, 0.2, values.size) * step if values.size > 1 else np.zeros(1)
            ax.scatter(centre + jitter, values, s=9, color="black", alpha=0.6, linewidths=0, zorder=3)
            extent += [min(mean - sd, values.min()), max(mean + sd, values.max())]
    ax.set_xticks(range(len(archs)))
    ax.set_xticklabels([str(a) for a in archs], rotation=20, ha="right", rotation_mode="anchor")
    if not extent:
        mark_no_runs(ax)
    return extent
