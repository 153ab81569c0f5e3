"""Convergence figures from ``history.csv`` (one row per run and epoch).

- :func:`plot_convergence`: validation AUC against epoch per init, mean over seeds with a ± sd
  band (the convergence analysis of Raghu et al. 2019).
- :func:`epochs_to_fraction_of_best`: the first epoch at which a run reaches a fraction
  (default 95 %) of its own best validation AUC — Raghu et al.'s measure of convergence speed.
- :func:`plot_epochs_to_95`: that epoch per init, seeds as dots with mean ± sd.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from medtransfer.columns import RUN_COLUMNS
from medtransfer.figures.io import (
    RUN_KEY,
    appearance_order,
    check_unique,
    facet_rows,
    read_results,
    select_row,
)
from medtransfer.figures.panels import (
    line_handles,
    mark_no_runs,
    panel_title,
    seed_dots_by_init,
)
from medtransfer.figures.style import (
    facet_axes,
    figure_style,
    init_dashes,
    init_palette,
    legend_outside,
    metric_label,
    save_figure,
    save_no_data,
    sort_inits,
)

# A value counts as reaching the target when it is within this relative round-off of it, so
# 0.76 reaches 95 % of 0.8 although 0.95 * 0.8 is 0.76000000000000001 in floating point.
_RELATIVE_TOLERANCE = 1e-9


def _read_history(history_csv: str | Path, metric: str = "val_auc") -> pd.DataFrame:
    frame = read_results(history_csv, RUN_COLUMNS + ("epoch", metric))
    check_unique(frame, RUN_KEY + ("epoch",), history_csv)
    return frame


def plot_convergence(history_csv: str | Path, out_pdf: str | Path, metric: str = "val_auc") -> Path:
    """Validation ``metric`` (history.csv column: ``val_auc``, or ``val_dice`` for segmentation)
    vs epoch, one line per init (mean over seeds, band ± sd); rows are datasets (and fractions,
    when there are several), columns architectures. Runs without the metric are left out."""
    label = metric_label(metric)
    frame = _read_history(history_csv, metric).dropna(subset=[metric])
    title = f"Convergence: {label} during fine-tuning"
    with figure_style():
        if frame.empty:
            return save_no_data(title, f"no {metric} values in {Path(history_csv).name}", out_pdf)
        rows = facet_rows(frame)
        archs = appearance_order(frame["arch"])
        inits = sort_inits(frame["init"])
        palette, dashes = init_palette(inits), init_dashes(inits)
        fig, axes = facet_axes(len(rows), len(archs), panel_width=3.8, panel_height=3.0, sharey="row")
        for r, row in enumerate(rows):
            for c, arch in enumerate(archs):
                ax = axes[r, c]
                panel = select_row(frame, row)
                panel = panel[panel["arch"] == arch]
                if panel.empty:
                    mark_no_runs(ax)
                else:
                    sns.lineplot(
                        data=panel, x="epoch", y=metric, hue="init", hue_order=inits, palette=palette,
                        style="init", style_order=inits, dashes=dashes, errorbar="sd", estimator="mean",
                        linewidth=1.6, legend=False, ax=ax,
                    )  # fmt: skip
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(panel_title(row[0], arch, row[1]))
                ax.set_xlabel("epoch" if r == len(rows) - 1 else "")
                ax.set_ylabel(label if c == 0 else "")
        legend_outside(fig, line_handles(inits, palette, dashes), inits, "init (mean ± sd)")
        fig.suptitle(title)
        save_figure(fig, out_pdf)
    return Path(out_pdf)


def epochs_to_fraction_of_best(history: pd.DataFrame, fraction: float = 0.95) -> pd.DataFrame:
    """The first epoch at which each run's validation AUC reaches ``fraction`` of its best.

    Args:
        history: rows of history.csv: the run columns present (at least one) plus ``epoch``
            (1-based) and ``val_auc``. Epochs with a missing val_auc are ignored.
        fraction: target as a fraction of the run's best validation AUC, in (0, 1].

    Returns:
        One row per run: its run columns, ``best_val_auc``, ``best_epoch`` (first epoch with the
        best value), ``target_val_auc`` (= fraction × best) and ``epochs_to_target`` (first epoch
        whose val_auc ≥ target; a value within 1e-9 relative of the target counts as reaching it).
        Runs without any val_auc are left out.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keys = [c for c in (*RUN_COLUMNS, "fold") if c in history.columns]
    if not keys or not {"epoch", "val_auc"} <= set(history.columns):
        raise ValueError("history needs run columns, 'epoch' and 'val_auc'")
    scored = history.dropna(subset=["val_auc"]).sort_values("epoch", kind="stable").reset_index(drop=True)
    columns = keys + ["best_val_auc", "best_epoch", "target_val_auc", "epochs_to_target"]
    if scored.empty:
        return pd.DataFrame(columns=columns)
    runs = scored.groupby(keys, dropna=False, sort=False)
    best = scored.loc[runs["val_auc"].idxmax(), keys + ["val_auc", "epoch"]]
    best = best.rename(columns={"val_auc": "best_val_auc", "epoch": "best_epoch"})
    scored = scored.merge(best[keys + ["best_val_auc"]], on=keys, how="left")
    target = fraction * scored["best_val_auc"]
    reached = scored[scored["val_auc"] >= target - _RELATIVE_TOLERANCE * target.abs()]
    first = reached.groupby(keys, dropna=False, sort=False)["epoch"].min().rename("epochs_to_target")
    result = best.merge(first.reset_index(), on=keys, how="left")
    result["target_val_auc"] = fraction * result["best_val_auc"]
    return result[columns].reset_index(drop=True)


def plot_epochs_to_95(history_csv: str | Path, out_pdf: str | Path) -> Path:
    """Epochs until the validation AUC reaches 95 % of the run's best, per init; rows are
    datasets, columns architectures; colour = data fraction; seeds as dots, mean ± sd."""
    frame = _read_history(history_csv)
    table = epochs_to_fraction_of_best(frame, 0.95) if not frame.empty else pd.DataFrame()
    return seed_dots_by_init(
        table, "epochs_to_target", out_pdf,
        title="Convergence speed: epochs to 95 % of the best validation AUC",
        ylabel="epochs to reach 95 %\nof best val. AUC", integer_y=True,
        no_data=f"no val_auc values in {Path(history_csv).name}",
    )  # fmt: skip
