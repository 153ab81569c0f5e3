"""Drawing pieces several figure families share: panel titles and seed dots with mean ± sd."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D


def panel_title(dataset: str, arch: str | None = None, fraction: float | None = None) -> str:
    """'lesions · resnet18 · 10 % data' (parts that are None are left out)."""
    parts = [str(dataset)]
    if arch is not None:
        parts.append(str(arch))
    if fraction is not None:
        parts.append(f"{100 * float(fraction):g} % data")
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
    ax.set_xticklabels([str(v) for v in x_order], rotation=35, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(x_order) - 0.4)


def marker_handles(labels: Sequence, palette: Mapping, marker: str = "o") -> list[Line2D]:
    """Legend handles: one coloured marker per label."""
    return [
        Line2D([], [], marker=marker, linestyle="none", color=palette[label], markersize=7)
        for label in labels
    ]


def line_handles(labels: Sequence, palette: Mapping, **line_kw) -> list[Line2D]:
    """Legend handles: one coloured line per label."""
    return [Line2D([], [], color=palette[label], linewidth=2, **line_kw) for label in labels]
