"""Figures and tables: the last stage, drawn from the tidy result CSVs only.

Every figure function has the signature ``f(input_csv, out_pdf, **options) -> Path`` and writes
``out_pdf`` and the PNG beside it (same stem), atomically. ``FIGURES`` maps each figure name
(its file stem under ``results/figures/``) to that function and the kind of CSV it reads, so the
workflow makes every figure a target of its own:

    function, csv_kind = FIGURES["convergence"]
    function("results/analysis/history.csv", "results/figures/convergence.pdf")

CSV kinds: ``"metrics"`` (metrics.csv), ``"history"`` (history.csv), ``"similarity_init_final"``
and ``"similarity_pairs"``. The summary table is :func:`medtransfer.figures.tables.summary_table`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from medtransfer.figures.convergence import plot_convergence, plot_epochs_to_95
from medtransfer.figures.domain import (
    plot_fid_gain,
    plot_fid_st_share,
    plot_prediction_similarity,
    plot_representation_gain,
)
from medtransfer.figures.performance import plot_init_comparison, plot_metric_vs_k, plot_test_metric
from medtransfer.figures.protocols import plot_protocols
from medtransfer.figures.reuse import plot_filters, plot_layer_knn, plot_reinit, plot_weight_drift
from medtransfer.figures.segmentation import plot_convergence_dice, plot_test_dice
from medtransfer.figures.similarity import plot_init_final, plot_pair_diagonal, plot_pair_heatmaps


class FigureSpec(NamedTuple):
    """A figure's drawing function and the kind of CSV it reads."""

    function: Callable
    input: str


FIGURES: dict[str, FigureSpec] = {
    "test_auc": FigureSpec(plot_test_metric, "metrics"),
    "metric_vs_k": FigureSpec(plot_metric_vs_k, "metrics"),
    "init_comparison": FigureSpec(plot_init_comparison, "metrics"),
    "protocols": FigureSpec(plot_protocols, "metrics"),
    "convergence": FigureSpec(plot_convergence, "history"),
    "epochs_to_95": FigureSpec(plot_epochs_to_95, "history"),
    "similarity_init_final": FigureSpec(plot_init_final, "similarity_init_final"),
    "similarity_pairs_heatmap": FigureSpec(plot_pair_heatmaps, "similarity_pairs"),
    "similarity_pairs_blocks": FigureSpec(plot_pair_diagonal, "similarity_pairs"),
    "weight_drift": FigureSpec(plot_weight_drift, "weight_drift"),
    "reinit": FigureSpec(plot_reinit, "reinit"),
    "layer_knn": FigureSpec(plot_layer_knn, "layer_knn"),
    "filters": FigureSpec(plot_filters, "filter_kernels"),
    "fid_gain": FigureSpec(plot_fid_gain, "fid_gain"),
    "fid_st_share": FigureSpec(plot_fid_st_share, "fid_gain"),
    "prediction_similarity": FigureSpec(plot_prediction_similarity, "prediction_similarity"),
    "representation_gain": FigureSpec(plot_representation_gain, "representation_gain_runs"),
    "test_dice": FigureSpec(plot_test_dice, "metrics"),
    "convergence_dice": FigureSpec(plot_convergence_dice, "history"),
}
