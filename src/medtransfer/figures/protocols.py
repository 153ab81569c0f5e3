"""Protocols figure: the test metric against the fraction of training labels, one panel per
target (rows) × protocol (columns), one line per init (mean over seeds, the band ± sd), as
Truong et al. 2021 compare sources under linear evaluation and fine-tuning at 1-100 % labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from medtransfer.columns import RUN_COLUMNS
from medtransfer.figures.io import (
    RUN_KEY,
    appearance_order,
    check_unique,
    read_results,
    with_protocol,
)
from medtransfer.figures.panels import mark_no_runs, panel_title
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_palette,
    legend_outside,
    metric_label,
    save_figure,
    save_no_data,
    sort_inits,
)
from medtransfer.protocols import PROTOCOLS

PROTOCOL_TITLES = {"finetune": "fine-tuning", "linear": "linear probe (frozen)", "knn": "k-NN (frozen)",
                   "lpft": "linear probe, then fine-tuning"}


def plot_protocols(metrics_csv: str | Path, out_pdf: str | Path, metric: str = "test_auc") -> Path:
    """``metric`` vs training fraction per protocol; writes ``out_pdf`` + ``.png``."""
    frame = with_protocol(read_results(metrics_csv, RUN_COLUMNS + (metric,))).dropna(subset=[metric])
    check_unique(frame, RUN_KEY + ("protocol",), metrics_csv)
    title = f"{metric_label(metric)} by protocol and fraction of training labels (band: ± sd over seeds)"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {metric} values in {Path(metrics_csv).name}", out_pdf)
        rows = [(d, a) for d in appearance_order(frame["dataset"]) for a in appearance_order(frame["arch"])
                if ((frame["dataset"] == d) & (frame["arch"] == a)).any()]
        protocols = [p for p in PROTOCOLS if p in set(frame["protocol"])]
        inits = sort_inits(frame["init"])
        palette = init_palette(inits)
        fig, axes = facet_axes(len(rows), len(protocols), panel_width=3.6, panel_height=3.0, sharey="row")
        for r, (dataset, arch) in enumerate(rows):
            for c, protocol in enumerate(protocols):
                ax = axes[r, c]
                panel = frame[(frame["dataset"] == dataset) & (frame["arch"] == arch) & (frame["protocol"] == protocol)]
                for init in inits:
                    runs = panel[panel["init"] == init]
                    if runs.empty:
                        continue
                    stats = runs.groupby("fraction")[metric].agg(["mean", "std", "count"]).sort_index()
                    x = 100 * stats.index.to_numpy(float)
                    mean, sd = stats["mean"].to_numpy(), np.nan_to_num(stats["std"].to_numpy())
                    ax.plot(x, mean, marker="o", markersize=4, color=palette[init], label=init)
                    ax.fill_between(x, mean - sd, mean + sd, color=palette[init], alpha=0.15, linewidth=0)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.set_title(f"{panel_title(dataset, arch)}\n{PROTOCOL_TITLES.get(protocol, protocol)}")
                ax.set_xlabel("training labels (%)" if r == len(rows) - 1 else "")
                ax.set_ylabel(metric_label(metric) if c == 0 else "")
                if panel.empty:
                    mark_no_runs(ax)
        # one legend entry per init, from whichever panel drew it (a panel may have no runs)
        handles = {line.get_label(): line for ax in axes.flat for line in ax.get_lines()}
        ordered = [init for init in inits if init in handles]
        legend_outside(fig, [handles[i] for i in ordered], ordered, "initialisation")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)
