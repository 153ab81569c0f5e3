"""Representational-similarity figures from the analysis stage's tidy CSVs.

- :func:`plot_init_final`: similarity between a run's init and its fine-tuned state per
  canonical block, one line per init (Raghu et al. 2019 with SVCCA, Matsoukas et al. 2022 with CKA).
- :func:`plot_pair_heatmaps`: block × block similarity between two runs, mean over seed pairs
  (Kornblith et al. 2019 / Raghu et al. 2021 style heatmaps).
- :func:`plot_pair_diagonal`: the matching-block (diagonal) similarity of each pair per block,
  with the similarity of two seeds of the same init (the noise floor) shaded.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.patches import Patch

from medtransfer.columns import INIT_FINAL_COLUMNS, PAIRS_COLUMNS
from medtransfer.errors import DataError
from medtransfer.figures.io import (
    appearance_order,
    facet_rows,
    read_results,
    select_row,
)
from medtransfer.figures.panels import line_handles, mark_no_runs, panel_title
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_dashes,
    init_palette,
    legend_outside,
    measure_label,
    save_figure,
    save_no_data,
    sort_inits,
)

# Heatmaps with at most this many blocks per side get the value written in each cell.
_ANNOTATE_MAX_BLOCKS = 8
_PAIR_COLOURS = sns.color_palette("dark", 10).as_hex()


def _select_measure(frame: pd.DataFrame, measure: str, path: str | Path) -> pd.DataFrame:
    """Rows of ``measure``; a CSV that has rows but none of this measure is a wrong request."""
    if frame.empty:
        return frame
    selected = frame[frame["measure"] == measure]
    if selected.empty:
        available = ", ".join(sorted(frame["measure"].unique()))
        raise DataError(f"{path}: no rows with measure {measure!r}; it has {available}. Pick one of those.")
    return selected


def _block_axis(ax, blocks: pd.DataFrame, index_column: str, name_column: str) -> list[int]:
    """Put the canonical block names, in block order, on the x axis; return the indices."""
    names = blocks.drop_duplicates(index_column).sort_values(index_column)
    ax.set_xticks(names[index_column].to_list())
    ax.set_xticklabels(
        names[name_column].to_list(), rotation=60, ha="right", rotation_mode="anchor", fontsize=8
    )
    return names[index_column].to_list()


def _value_limits(values: pd.Series) -> tuple[float, float]:
    """[0, 1] for the similarity measures, widened if a debiased estimate goes below 0."""
    low = min(0.0, float(values.min())) if len(values) else 0.0
    high = max(1.0, float(values.max())) if len(values) else 1.0
    return low, high


def plot_init_final(similarity_csv: str | Path, out_pdf: str | Path, measure: str = "linear_cka") -> Path:
    """Similarity of each block's init and fine-tuned representation, x = canonical blocks in
    order, one line per init (mean over seeds, band ± sd); rows are datasets (and fractions),
    columns architectures. Low values mean the block changed a lot during fine-tuning."""
    frame = read_results(similarity_csv, INIT_FINAL_COLUMNS)
    frame = _select_measure(frame, measure, similarity_csv).dropna(subset=["value"])
    title = f"{measure_label(measure)} between initial and fine-tuned representations"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {measure} rows in {Path(similarity_csv).name}", out_pdf)
        rows = facet_rows(frame)
        archs = appearance_order(frame["arch"])
        inits = sort_inits(frame["init"])
        palette, dashes = init_palette(inits), init_dashes(inits)
        n_blocks = frame.groupby("arch")["block_index"].nunique().max()
        width = max(3.6, 0.28 * n_blocks + 1.4)
        fig, axes = facet_axes(len(rows), len(archs), panel_width=width, panel_height=3.2, sharey=True)
        for r, row in enumerate(rows):
            for c, arch in enumerate(archs):
                ax = axes[r, c]
                panel = select_row(frame, row)
                panel = panel[panel["arch"] == arch]
                if panel.empty:
                    mark_no_runs(ax)
                else:
                    sns.lineplot(
                        data=panel, x="block_index", y="value", hue="init", hue_order=inits, palette=palette,
                        style="init", style_order=inits, dashes=dashes, errorbar="sd", estimator="mean",
                        marker="o", markersize=4, linewidth=1.6, legend=False, ax=ax,
                    )  # fmt: skip
                    _block_axis(ax, panel, "block_index", "block")
                ax.set_title(panel_title(row[0], arch, row[1]))
                ax.set_xlabel("block" if r == len(rows) - 1 else "")
                ax.set_ylabel(f"{measure_label(measure)}\n(init, final)" if c == 0 else "")
        axes[0, 0].set_ylim(*_value_limits(frame["value"]))
        legend_outside(fig, line_handles(inits, palette, dashes, marker="o"), inits, "init (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _read_pairs(pairs_csv: str | Path, measure: str) -> pd.DataFrame:
    frame = read_results(pairs_csv, PAIRS_COLUMNS)
    return _select_measure(frame, measure, pairs_csv).dropna(subset=["value"])


def _pair_order(frame: pd.DataFrame) -> list[str]:
    """Pairs of runs first (in order of appearance), then the noise floors."""
    pairs = appearance_order(frame.loc[frame["kind"] != "noise_floor", "pair"])
    floors = appearance_order(frame.loc[frame["kind"] == "noise_floor", "pair"])
    return pairs + [p for p in floors if p not in pairs]


def plot_pair_heatmaps(pairs_csv: str | Path, out_pdf: str | Path, measure: str = "linear_cka") -> Path:
    """Block × block similarity between two runs, averaged over seed pairs: one heatmap per
    (pair, dataset, architecture, fraction); columns are pairs (noise floors last), rows the
    (dataset, architecture, fraction) combinations. Block 0 is at the lower left; the y axis
    holds the first run's blocks (init_a), the x axis the second run's (init_b)."""
    frame = _read_pairs(pairs_csv, measure)
    title = f"{measure_label(measure)} between the blocks of two networks (mean over seeds)"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {measure} rows in {Path(pairs_csv).name}", out_pdf)
        pairs = _pair_order(frame)
        combos = []
        for dataset, fraction in facet_rows(frame):
            rows = select_row(frame, (dataset, fraction))
            combos.extend((dataset, arch, fraction) for arch in appearance_order(rows["arch"]))
        n_blocks = max(frame["block_a_index"].nunique(), frame["block_b_index"].nunique())
        side = max(3.4, 0.3 * n_blocks + 1.8)
        fig, axes = facet_axes(len(combos), len(pairs), panel_width=side, panel_height=side)
        low, high = _value_limits(frame["value"])
        norm = mcolors.Normalize(low, high)
        cmap = "magma"
        for r, (dataset, arch, fraction) in enumerate(combos):
            for c, pair in enumerate(pairs):
                ax = axes[r, c]
                panel = select_row(frame, (dataset, fraction))
                panel = panel[(panel["arch"] == arch) & (panel["pair"] == pair)]
                floor = (panel["kind"] == "noise_floor").any()
                ax.set_title(f"{_pair_heading(pair, panel, floor)}\n{panel_title(dataset, arch, fraction)}",
                             fontsize=9)  # fmt: skip
                if panel.empty:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                    continue
                _heatmap(ax, panel, cmap, norm)
                init_a, init_b = panel["init_a"].iloc[0], panel["init_b"].iloc[0]
                ax.set_ylabel(f"block of {init_a}")
                ax.set_xlabel(f"block of {init_b}")
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), location="right",
            shrink=min(0.8, 1.6 / len(combos)), aspect=15, label=f"{measure_label(measure)} (mean over seeds)",
        )  # fmt: skip
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _pair_heading(pair: str, panel: pd.DataFrame, floor: bool) -> str:
    """A heatmap's heading in lines short enough not to run into the next panel's."""
    if floor and not panel.empty:
        return f"noise floor: two seeds of\n{panel['init_a'].iloc[0]}"
    return pair.replace(" vs ", "\nvs ", 1) if len(pair) > 24 else pair


def _heatmap(ax, panel: pd.DataFrame, cmap: str, norm: mcolors.Normalize) -> None:
    """Mean over seed pairs of each (block_a, block_b) cell; block 0 at the lower left.

    Drawn with pcolormesh rather than seaborn.heatmap, whose tick-overlap check renders the
    whole figure once per panel (minutes for a full study's grid of heatmaps).
    """
    mean = panel.groupby(["block_a_index", "block_b_index"])["value"].mean().unstack("block_b_index")
    mean = mean.sort_index().sort_index(axis=1)
    names_a = panel.drop_duplicates("block_a_index").set_index("block_a_index")["block_a"]
    names_b = panel.drop_duplicates("block_b_index").set_index("block_b_index")["block_b"]
    values = mean.to_numpy(float)
    n_a, n_b = values.shape
    ax.pcolormesh(np.arange(n_b + 1) - 0.5, np.arange(n_a + 1) - 0.5, np.ma.masked_invalid(values),
                  cmap=cmap, norm=norm)  # fmt: skip
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xticks(range(n_b))
    ax.set_xticklabels([names_b[i] for i in mean.columns], rotation=60, ha="right", rotation_mode="anchor",
                       fontsize=7)  # fmt: skip
    ax.set_yticks(range(n_a))
    ax.set_yticklabels([names_a[i] for i in mean.index], fontsize=7)
    if max(n_a, n_b) <= _ANNOTATE_MAX_BLOCKS:
        colours = matplotlib.colormaps[cmap](norm(values))
        for (i, j), value in np.ndenumerate(values):
            if np.isnan(value):
                continue
            # Dark text on light cells, light text on dark ones.
            luminance = colours[i, j, :3] @ np.array([0.299, 0.587, 0.114])
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if luminance > 0.5 else "white")  # fmt: skip


def plot_pair_diagonal(pairs_csv: str | Path, out_pdf: str | Path, measure: str = "linear_cka") -> Path:
    """Matching-block similarity (block i of one run vs block i of the other) per block, one
    line per pair (mean ± sd over seed pairs); each init's seed noise floor (two seeds of the
    same init) is a shaded band (mean ± sd) in that init's colour. A pair line inside the band
    is as similar as two seeds of one init; below it, the inits left the block different."""
    frame = _read_pairs(pairs_csv, measure)
    frame = frame[frame["block_a_index"] == frame["block_b_index"]]
    title = f"{measure_label(measure)} of matching blocks, with the seed noise floor"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no matching-block {measure} rows in {Path(pairs_csv).name}", out_pdf)
        rows = facet_rows(frame)
        archs = appearance_order(frame["arch"])
        pairs = appearance_order(frame.loc[frame["kind"] != "noise_floor", "pair"])
        pair_palette = {pair: _PAIR_COLOURS[i % len(_PAIR_COLOURS)] for i, pair in enumerate(pairs)}
        floors = sort_inits(frame.loc[frame["kind"] == "noise_floor", "init_a"])
        palette = init_palette(pd.concat([frame["init_a"], frame["init_b"]]).unique())
        n_blocks = frame.groupby("arch")["block_a_index"].nunique().max()
        width = max(3.6, 0.28 * n_blocks + 1.4)
        fig, axes = facet_axes(len(rows), len(archs), panel_width=width, panel_height=3.2, sharey=True)
        for r, row in enumerate(rows):
            for c, arch in enumerate(archs):
                ax = axes[r, c]
                panel = select_row(frame, row)
                panel = panel[panel["arch"] == arch]
                ax.set_title(panel_title(row[0], arch, row[1]))
                ax.set_xlabel("block" if r == len(rows) - 1 else "")
                ax.set_ylabel(f"{measure_label(measure)}\n(matching blocks)" if c == 0 else "")
                if panel.empty:
                    mark_no_runs(ax)
                    continue
                _diagonal_panel(ax, panel, pair_palette, palette)
                _block_axis(ax, panel, "block_a_index", "block_a")
        axes[0, 0].set_ylim(*_value_limits(frame["value"]))
        handles = line_handles(pairs, pair_palette, marker="o")
        handles += [Patch(color=palette[init], alpha=0.25) for init in floors]
        labels = pairs + [f"noise floor: {init} vs {init}" for init in floors]
        legend_outside(fig, handles, labels, "pair (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def _mean_sd(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd (ddof=1; 0 for a single seed pair) of ``value`` per block, in block order."""
    stats = frame.groupby("block_a_index")["value"].agg(["mean", "std"]).sort_index()
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def _diagonal_panel(ax, panel: pd.DataFrame, pair_palette: dict, init_colours: dict) -> None:
    floors = panel[panel["kind"] == "noise_floor"]
    for init in sort_inits(floors["init_a"]):
        stats = _mean_sd(floors[floors["init_a"] == init])
        colour = init_colours[init]
        x = stats.index.to_numpy()
        ax.fill_between(x, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=colour,
                        alpha=0.22, linewidth=0, zorder=1)  # fmt: skip
        ax.plot(x, stats["mean"], color=colour, linestyle=":", linewidth=1.0, zorder=1)
    runs = panel[panel["kind"] != "noise_floor"]
    for pair, rows in runs.groupby("pair", sort=False):
        stats = _mean_sd(rows)
        x = stats.index.to_numpy()
        colour = pair_palette[pair]
        ax.fill_between(x, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=colour,
                        alpha=0.12, linewidth=0, zorder=2)  # fmt: skip
        ax.plot(x, stats["mean"], color=colour, marker="o", markersize=4, linewidth=1.6, zorder=3)
