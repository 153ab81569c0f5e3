"""Feature-reuse figures (Matsoukas et al. 2022; Raghu et al. 2019; Juodelyte et al.).

- :func:`plot_weight_drift`: relative L2 drift of each block's weights from init, x = blocks in
  forward order, one line per init (mean over seeds, band ± sd).
- :func:`plot_reinit`: drop of the test metric when one block is reset to its init weights
  (and, last, when all are), one line per init.
- :func:`plot_layer_knn`: layer-wise weighted k-NN test metric per block, init (dashed) vs
  fine-tuned (solid), one colour per init.
- :func:`plot_filters`: the first-layer kernels of one cell's runs, init and fine-tuned side by side.

Panels: rows are targets (× fractions when there are several), columns architectures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

from medtransfer.columns import (
    FILTER_KERNEL_COLUMNS,
    LAYER_KNN_READ_COLUMNS,
    REINIT_READ_COLUMNS,
    WEIGHT_DRIFT_READ_COLUMNS,
)
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
    new_figure,
    save_figure,
    save_no_data,
    sort_inits,
)

METRIC_NAMES = {"auc": "AUC", "acc": "accuracy", "balanced_acc": "balanced accuracy", "kappa": "quadratic κ"}
# A drift range wider than this (max / min over the plotted means) is drawn on a log axis.
_LOG_RANGE = 30.0
# Gap between tiled kernels, in kernel pixels.
_GAP = 1


def _metric_name(metric: str, split: str = "test") -> str:
    return f"{split} {METRIC_NAMES.get(metric, metric.replace('_', ' '))}"


def _select_metric(frame: pd.DataFrame, metric: str, path: str | Path) -> pd.DataFrame:
    if frame.empty:
        return frame
    selected = frame[frame["metric"] == metric]
    if selected.empty:
        available = ", ".join(sorted(frame["metric"].unique()))
        raise DataError(f"{path}: no rows with metric {metric!r}; it has {available}. Pick one of those.")
    return selected


def _split_of(frame: pd.DataFrame) -> str:
    return str(frame["split"].iloc[0]) if "split" in frame.columns and len(frame) else "test"


def _block_ticks(ax, panel: pd.DataFrame) -> None:
    """The block names, in block order, on the x axis."""
    names = panel.drop_duplicates("block_index").sort_values("block_index")
    ax.set_xticks(names["block_index"].to_list())
    ax.set_xticklabels(names["block"].to_list(), rotation=60, ha="right", rotation_mode="anchor", fontsize=8)


def _facets(frame: pd.DataFrame, y_label: str, title: str, out_pdf, draw, legend) -> Path:
    """The target (× fraction) by architecture grid every line figure here shares."""
    rows, archs = facet_rows(frame), appearance_order(frame["arch"])
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
                draw(ax, panel)
                _block_ticks(ax, panel)
            ax.set_title(panel_title(row[0], arch, row[1]))
            ax.set_xlabel("block" if r == len(rows) - 1 else "")
            ax.set_ylabel(y_label if c == 0 else "")
    legend(fig, axes)
    fig.suptitle(title)
    save_figure(fig, out_pdf)
    return Path(out_pdf)


def _init_lines(ax, panel: pd.DataFrame, y: str, inits: list[str], palette: dict, dashes: dict) -> None:
    sns.lineplot(data=panel, x="block_index", y=y, hue="init", hue_order=inits, palette=palette, style="init",
                 style_order=inits, dashes=dashes, errorbar="sd", estimator="mean", marker="o", markersize=4,
                 linewidth=1.6, legend=False, ax=ax)  # fmt: skip


def plot_weight_drift(drift_csv: str | Path, out_pdf: str | Path) -> Path:
    """Relative drift ‖θ_final − θ_init‖₂ / ‖θ_init‖₂ per block (Matsoukas et al.'s "L2 distance"),
    one line per init (mean over seeds, band ± sd); a log axis when it spans > 30×. Blocks whose
    init norm is 0 (relative drift undefined) are left out."""
    frame = read_results(drift_csv, WEIGHT_DRIFT_READ_COLUMNS).dropna(subset=["relative"])
    title = "How far fine-tuning moved each block's weights"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no weight-drift rows in {Path(drift_csv).name}", out_pdf)
        inits = sort_inits(frame["init"])
        palette, dashes = init_palette(inits), init_dashes(inits)
        means = frame.groupby(["dataset", "arch", "fraction", "init", "block_index"])["relative"].mean()
        positive = means[means > 0]
        log_axis = len(positive) > 0 and positive.max() / positive.min() > _LOG_RANGE

        def draw(ax, panel):
            _init_lines(ax, panel, "relative", inits, palette, dashes)
            if log_axis:
                ax.set_yscale("log")

        def legend(fig, axes):
            legend_outside(fig, line_handles(inits, palette, dashes, marker="o"), inits, "init (mean ± sd)")

        y_label = "relative L2 drift\n‖θ_final − θ_init‖ / ‖θ_init‖"
        return _facets(frame, y_label, title, out_pdf, draw, legend)


def plot_reinit(reinit_csv: str | Path, out_pdf: str | Path, metric: str = "auc") -> Path:
    """Drop of the metric (fine-tuned − with the block reset to init) per block, one line per init
    (mean over seeds, band ± sd), and for every block at once ("all", last, a point per init with
    mean ± sd). Positive: the network needs what fine-tuning did to that block."""
    frame = read_results(reinit_csv, REINIT_READ_COLUMNS)
    frame = _select_metric(frame, metric, reinit_csv)
    frame = frame[frame["block"] != "none"].dropna(subset=["drop"])
    name = _metric_name(metric, _split_of(frame))
    title = f"Re-initialisation robustness: {name} lost when a block is reset to its init"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {metric} re-initialisation rows in {Path(reinit_csv).name}", out_pdf)
        inits = sort_inits(frame["init"])
        palette, dashes = init_palette(inits), init_dashes(inits)

        def draw(ax, panel):
            ax.axhline(0.0, color="0.3", linewidth=0.8, zorder=1)
            blocks, every = panel[panel["block"] != "all"], panel[panel["block"] == "all"]
            _init_lines(ax, blocks, "drop", inits, palette, dashes)
            if every.empty:
                return
            # "all" is not a block: a separate mean ± sd point per init, not joined to the line
            x = float(every["block_index"].iloc[0])
            ax.axvline(x - 0.5, color="0.6", linewidth=0.8, linestyle=":", zorder=1)
            present = [init for init in inits if (every["init"] == init).any()]
            for i, init in enumerate(present):
                values = every.loc[every["init"] == init, "drop"].to_numpy(float)
                offset = 0.25 * (i - (len(present) - 1) / 2) / max(1, len(present) - 1)
                ax.errorbar(x + offset, values.mean(), yerr=values.std(ddof=1) if len(values) > 1 else 0.0,
                            fmt="o", markersize=4, color=palette[init], capsize=2, linewidth=1.2, zorder=3)

        def legend(fig, axes):
            legend_outside(fig, line_handles(inits, palette, dashes, marker="o"), inits, "init (mean ± sd)")

        return _facets(frame, f"drop in {name}\n(fine-tuned − block reset)", title, out_pdf, draw, legend)


_STATE_DASHES = {"final": "", "init": (3, 2)}
_STATE_NAMES = {"final": "fine-tuned", "init": "at init"}


def plot_layer_knn(knn_csv: str | Path, out_pdf: str | Path, metric: str = "auc") -> Path:
    """Weighted k-NN metric on each block's pooled features, one colour per init, solid after
    fine-tuning and dashed at init (mean over seeds, band ± sd)."""
    frame = read_results(knn_csv, LAYER_KNN_READ_COLUMNS)
    frame = _select_metric(frame, metric, knn_csv).dropna(subset=["value"])
    name = _metric_name(metric, _split_of(frame))
    k = ""
    if "knn_k" in frame.columns and frame["knn_k"].nunique() == 1:
        k = f", k = {int(frame['knn_k'].iloc[0])}"
    title = f"Layer-wise k-NN {name} on pooled block features{k}"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {metric} layer-wise k-NN rows in {Path(knn_csv).name}", out_pdf)
        inits = sort_inits(frame["init"])
        palette = init_palette(inits)
        states = [s for s in ("init", "final") if s in set(frame["state"])]

        def draw(ax, panel):
            sns.lineplot(data=panel, x="block_index", y="value", hue="init", hue_order=inits, palette=palette,
                         style="state", style_order=states, dashes=_STATE_DASHES, errorbar="sd", estimator="mean",
                         marker="o", markersize=3.5, linewidth=1.4, legend=False, ax=ax)  # fmt: skip

        def legend(fig, axes):
            handles = line_handles(inits, palette, marker="o")
            handles += [Line2D([], [], color="0.3", linewidth=1.6,
                               **({"linestyle": (0, _STATE_DASHES[s])} if _STATE_DASHES[s] else {})) for s in states]
            legend_outside(fig, handles, inits + [_STATE_NAMES[s] for s in states], "init / state (mean ± sd)")

        return _facets(frame, f"k-NN {name}", title, out_pdf, draw, legend)


def kernel_tiles(kernels: np.ndarray, columns: int = 8) -> np.ndarray:
    """Kernels [O, C, kh, kw] tiled into one image for display, each kernel min-max normalised
    to [0, 1] on its own: RGB [H, W, 3] when C = 3, else gray [H, W] of the mean over channels.
    Gaps are NaN (drawn as the background)."""
    if kernels.shape[1] == 3:
        images = kernels.transpose(0, 2, 3, 1)  # [O, kh, kw, 3]
    else:
        images = kernels.mean(axis=1)  # [O, kh, kw]
    flat = images.reshape(len(images), -1)
    low, high = flat.min(1), flat.max(1)
    span = np.where(high > low, high - low, 1.0)
    shape = (-1,) + (1,) * (images.ndim - 1)
    images = (images - low.reshape(shape)) / span.reshape(shape)
    n, kh, kw = images.shape[:3]
    columns = min(columns, n)
    rows = int(np.ceil(n / columns))
    tile = np.full((rows * (kh + _GAP) - _GAP, columns * (kw + _GAP) - _GAP) + images.shape[3:], np.nan)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        tile[r * (kh + _GAP):r * (kh + _GAP) + kh, c * (kw + _GAP):c * (kw + _GAP) + kw] = image
    return tile


def _kernels(panel: pd.DataFrame) -> np.ndarray:
    shape = [int(panel[c].max()) + 1 for c in ("filter", "channel", "row", "col")]
    kernels = np.zeros(shape)
    kernels[panel["filter"], panel["channel"], panel["row"], panel["col"]] = panel["value"].to_numpy(float)
    return kernels


def plot_filters(kernels_csv: str | Path, out_pdf: str | Path) -> Path:
    """The first convolution's kernels of each init's run of one cell, at init (left) and after
    fine-tuning (right); RGB for 3 input channels, else gray; each kernel min-max normalised on
    its own, so the figure shows each kernel's pattern, not its scale (filters.csv has the change)."""
    frame = read_results(kernels_csv, FILTER_KERNEL_COLUMNS)
    title = "First-layer filters at init and after fine-tuning"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no kernel rows in {Path(kernels_csv).name}", out_pdf)
        cell = frame.iloc[0]
        frame = frame[(frame["dataset"] == cell["dataset"]) & (frame["arch"] == cell["arch"])
                      & (frame["fraction"] == cell["fraction"]) & (frame["seed"] == cell["seed"])]
        inits = sort_inits(frame["init"])
        tiles = {(init, state): kernel_tiles(_kernels(frame[(frame["init"] == init) & (frame["state"] == state)]))
                 for init in inits for state in ("init", "final")
                 if ((frame["init"] == init) & (frame["state"] == state)).any()}
        height, width = next(iter(tiles.values())).shape[:2]
        panel_width = 2.6
        panel_height = panel_width * height / width + 0.35  # the tiles' aspect, and the panel title
        fig = new_figure(2 * panel_width + 0.4, panel_height * len(inits) + 0.7)
        axes = fig.subplots(len(inits), 2, squeeze=False)
        for r, init in enumerate(inits):
            for c, state in enumerate(("init", "final")):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                image = tiles.get((init, state))
                if image is None:
                    mark_no_runs(ax)
                    continue
                ax.set_facecolor("white")
                ax.imshow(np.ma.masked_invalid(image) if image.ndim == 2 else np.nan_to_num(image, nan=1.0),
                          cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{init} · {'at init' if state == 'init' else 'fine-tuned'}", fontsize=9)
        layer = cell["layer"]
        fig.suptitle(f"{title}\n{layer} of {panel_title(cell['dataset'], cell['arch'], cell['fraction'])}, "
                     f"seed {int(cell['seed'])} (each kernel min-max normalised)", fontsize=10)
        save_figure(fig, out_pdf)
    return Path(out_pdf)
