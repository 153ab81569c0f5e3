"""Drawing pieces several figure families share: panel titles, seed dots with mean ± sd, and
the dataset × architecture grid of seed dots per init that both the test-metric and the
convergence-speed figures are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from medtransfer.figures.io import appearance_order
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_palette,
    legend_outside,
    save_figure,
    save_no_data,
    size_text,
    sort_inits,
)


def panel_title(dataset: str, arch: str | None = None, fraction: float | None = None) -> str:
    """'lesions · resnet18 · 10 % data' (parts that are None are left out)."""
    parts = [str(dataset)]
    if arch is not None:
        parts.append(str(arch))
    if fraction is not None:
        parts.append(f"{int(float(fraction))} images" if float(fraction) > 1 else f"{100 * float(fraction):g} % data")
    return " · ".join(parts)


def dot_whisker(
    ax: Axes,
    data: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    x_order: Sequence,
    hue_order: Sequence,
    palette: Mapping,
    width: float = 0.75,
    x_labels: Sequence[str] | None = None,
) -> None:
    """One dot per row (seed), and the mean ± sd (ddof=1) of each (x, hue) group as a
    horizontal tick with whiskers, hue groups side by side within each x position.

    Dots are jittered deterministically (by their order), so redrawing gives the same figure.
    """
    n_hue = max(len(hue_order), 1)
    step = width / n_hue
    for i, x_value in enumerate(x_order):
        for j, hue_value in enumerate(hue_order):
            group = data.loc[(data[x] == x_value) & (data[hue] == hue_value), y].dropna().to_numpy(float)
            if group.size == 0:
                continue
            centre = i - width / 2 + step * (j + 0.5)
            colour = palette[hue_value]
            jitter = np.linspace(-0.22, 0.22, group.size) * step if group.size > 1 else np.zeros(1)
            ax.scatter(centre + jitter, group, s=16, color=colour, alpha=0.55, linewidths=0, zorder=2)
            mean = group.mean()
            sd = group.std(ddof=1) if group.size > 1 else 0.0
            ax.errorbar(
                centre, mean, yerr=sd, fmt="_", markersize=14, markeredgewidth=2.2,
                color=colour, ecolor=colour, elinewidth=1.6, capsize=3, zorder=3,
            )  # fmt: skip
    ax.set_xticks(range(len(x_order)))
    if x_labels is None:
        ax.set_xticklabels([str(v) for v in x_order], rotation=35, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticklabels(list(x_labels))
    ax.set_xlim(-0.6, len(x_order) - 0.4)


def marker_handles(labels: Sequence, palette: Mapping, marker: str = "o") -> list[Line2D]:
    """Legend handles: one coloured marker per label."""
    return [
        Line2D([], [], marker=marker, linestyle="none", color=palette[label], markersize=7)
        for label in labels
    ]


def line_handles(labels: Sequence, palette: Mapping, dashes: Mapping | None = None, **line_kw) -> list[Line2D]:
    """Legend handles: one coloured line per label, dashed as ``dashes`` (seaborn's form) says."""
    def style(label) -> dict:
        pattern = (dashes or {}).get(label, "")
        return {"linestyle": (0, pattern)} if pattern else {}

    return [Line2D([], [], color=palette[label], linewidth=2, **style(label), **line_kw) for label in labels]


def mark_no_runs(ax: Axes) -> None:
    """Say so in a panel of the grid that has nothing to draw."""
    ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)


def seed_dots_by_init(
    table: pd.DataFrame,
    y: str,
    out_pdf: str | Path,
    *,
    title: str,
    ylabel: str,
    no_data: str,
    integer_y: bool = False,
) -> Path:
    """``y`` per init and data fraction, one panel per dataset (rows) × architecture (columns):
    x = fraction of the training data, colour = init (its colour in every figure); each seed a
    dot, each (fraction, init) its mean ± sd. ``table`` has one row per run (``dataset``,
    ``arch``, ``init``, ``fraction``, ``y``). Writes ``out_pdf`` + ``.png``; an empty table gives
    the no-data figure with the message ``no_data``."""
    with figure_style():
        if table.empty:
            return save_no_data(title, no_data, out_pdf)
        datasets = appearance_order(table["dataset"])
        archs = appearance_order(table["arch"])
        inits = sort_inits(table["init"])
        fractions = sorted(float(f) for f in table["fraction"].unique())
        palette = init_palette(inits)
        width = max(3.2, 0.32 * len(inits) * len(fractions) + 1.4)
        fig, axes = facet_axes(len(datasets), len(archs), panel_width=width, panel_height=3.2, sharey="row")
        for r, dataset in enumerate(datasets):
            for c, arch in enumerate(archs):
                ax = axes[r, c]
                panel = table[(table["dataset"] == dataset) & (table["arch"] == arch)]
                dot_whisker(ax, panel, "fraction", y, "init", fractions, inits, palette,
                            x_labels=[size_text(f) for f in fractions])  # fmt: skip
                if integer_y:
                    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(panel_title(dataset, arch))
                ax.set_xlabel("training data used (% of the train split)" if r == len(datasets) - 1 else "")
                ax.set_ylabel(ylabel if c == 0 else "")
                if panel.empty:
                    mark_no_runs(ax)
        legend_outside(fig, marker_handles(inits, palette), inits, "initialisation (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)
