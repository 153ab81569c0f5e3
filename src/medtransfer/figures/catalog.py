"""The figure catalog: one row per figure, naming the tidy CSV it is drawn from, its drawing
function, its place in the report, its caption and whether it draws one similarity measure.

A figure's name is its file stem under ``results/figures/``; adding a figure is its drawing
function, its caption and one row here. The planner and the Snakefile read the rows (inputs,
report places) and must not import matplotlib, pandas or torch, which every drawing and caption
module imports at its top. So the rows live in this one module rather than beside each figure,
and name their functions as ``"module:attribute"`` references that :attr:`Figure.function` and
:attr:`Figure.caption` import on first use:

    figure = FIGURES["convergence"]
    figure.function("results/analysis/history.csv", "results/figures/convergence.pdf")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from medtransfer.report.places import (
    CONVERGENCE,
    FEATURE_REUSE,
    PERFORMANCE,
    PROTOCOLS,
    SIMILARITY,
    Place,
)

if TYPE_CHECKING:  # the caption tools import pandas
    from medtransfer.report.caption_tools import Caption


def resolve(reference: str) -> Any:
    """The attribute a ``"package.module:attribute"`` reference names (importing its module)."""
    module, _, attribute = reference.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True)
class Figure:
    """One figure: what it is drawn from, by what, where it goes in the report and its caption.

    ``input`` is the tidy CSV it reads (a :func:`medtransfer.paths.analysis_table` kind);
    ``draw_ref`` the drawing function ``f(input_csv, out_pdf, **options) -> Path``, which writes
    the PDF and the PNG beside it; ``caption_ref`` its :class:`~medtransfer.report.caption_tools.Caption`,
    or None for the generic caption; ``one_measure``: it draws one similarity measure (the
    workflow's ``--measure``), and its caption describes that one.
    """

    name: str
    input: str
    draw_ref: str
    place: Place
    caption_ref: str | None = None
    one_measure: bool = False

    @property
    def function(self) -> Callable:
        """The drawing function (importing it imports matplotlib)."""
        return resolve(self.draw_ref)

    @property
    def caption(self) -> Caption | None:
        """The caption computed from the figure's CSV, or None for the generic one."""
        return resolve(self.caption_ref) if self.caption_ref else None


_FIGURES = "medtransfer.figures."
_CAPTIONS = "medtransfer.report.captions:"
_REUSE_CAPTIONS = "medtransfer.report.captions_reuse:"
_BY_INIT_AND_SIZE = "Which initialisation helps, at which data size"
_HOW_FAST = "How fast fine-tuning converges"
_HOW_NETWORKS_END = "How differently initialised networks end"
_HOW_FAR = "How far the weights move"
_DOMAIN = "Domain distance"

CATALOG: tuple[Figure, ...] = (
    Figure("test_auc", "metrics", _FIGURES + "performance:plot_test_metric",
           Place(PERFORMANCE, _BY_INIT_AND_SIZE, "test AUC per initialisation and fraction of training data"),
           _CAPTIONS + "test_auc"),
    Figure("init_comparison", "metrics", _FIGURES + "performance:plot_init_comparison",
           Place(PERFORMANCE, _BY_INIT_AND_SIZE, "random (RI) vs weight statistics (ST) vs weight transfer (WT)"),
           _CAPTIONS + "init_comparison"),
    Figure("metric_vs_k", "metrics", _FIGURES + "performance:plot_metric_vs_k",
           Place(PERFORMANCE, "How many blocks to transfer", "test AUC against the k blocks transferred"),
           _CAPTIONS + "metric_vs_k"),
    Figure("protocols", "metrics", _FIGURES + "protocols:plot_protocols",
           Place(PROTOCOLS, "Fine-tuning or frozen features", "test AUC per protocol against the fraction of labels"),
           _CAPTIONS + "protocols"),
    Figure("convergence", "history", _FIGURES + "convergence:plot_convergence",
           Place(CONVERGENCE, _HOW_FAST, "validation AUC after every epoch"),
           _CAPTIONS + "convergence"),
    Figure("epochs_to_95", "history", _FIGURES + "convergence:plot_epochs_to_95",
           Place(CONVERGENCE, _HOW_FAST, "epochs to 95 % of the best validation AUC"),
           _CAPTIONS + "epochs_to_95"),
    Figure("similarity_init_final", "similarity_init_final", _FIGURES + "similarity:plot_init_final",
           Place(SIMILARITY, "How much each block changes", "similarity of each block before and after fine-tuning"),
           _CAPTIONS + "similarity_init_final", one_measure=True),
    Figure("similarity_pairs_heatmap", "similarity_pairs", _FIGURES + "similarity:plot_pair_heatmaps",
           Place(SIMILARITY, _HOW_NETWORKS_END, "block × block similarity of two initialisations"),
           _CAPTIONS + "similarity_pairs_heatmap", one_measure=True),
    Figure("similarity_pairs_blocks", "similarity_pairs", _FIGURES + "similarity:plot_pair_diagonal",
           Place(SIMILARITY, _HOW_NETWORKS_END, "matching-block similarity against the seed noise floor"),
           _CAPTIONS + "similarity_pairs_blocks", one_measure=True),
    Figure("weight_drift", "weight_drift", _FIGURES + "reuse:plot_weight_drift",
           Place(FEATURE_REUSE, _HOW_FAR, "L2 distance of the weights from their init"),
           _REUSE_CAPTIONS + "weight_drift"),
    Figure("reinit", "reinit", _FIGURES + "reuse:plot_reinit",
           Place(FEATURE_REUSE, "Which blocks are critical", "robustness to re-initialising a block"),
           _REUSE_CAPTIONS + "reinit"),
    Figure("layer_knn", "layer_knn", _FIGURES + "reuse:plot_layer_knn",
           Place(FEATURE_REUSE, "Where the features become useful", "k-NN accuracy of each block's features"),
           _REUSE_CAPTIONS + "layer_knn"),
    Figure("filters", "filter_kernels", _FIGURES + "reuse:plot_filters",
           Place(FEATURE_REUSE, _HOW_FAR, "first-layer filters"),
           _REUSE_CAPTIONS + "filters"),
    Figure("fid_gain", "fid_gain", _FIGURES + "domain:plot_fid_gain",
           Place(FEATURE_REUSE, _DOMAIN, "gain of transfer against the FID to the source"),
           _REUSE_CAPTIONS + "fid_gain"),
    Figure("fid_st_share", "fid_gain", _FIGURES + "domain:plot_fid_st_share",
           Place(FEATURE_REUSE, _DOMAIN, "share of the gain that statistics explain, against FID"),
           _REUSE_CAPTIONS + "fid_st_share"),
    Figure("prediction_similarity", "prediction_similarity", _FIGURES + "domain:plot_prediction_similarity",
           Place(SIMILARITY, "How similar the predictions are", "agreement of the predictions of two initialisations"),
           _REUSE_CAPTIONS + "prediction_similarity"),
    Figure("representation_gain", "representation_gain_runs", _FIGURES + "domain:plot_representation_gain",
           Place(SIMILARITY, _HOW_NETWORKS_END, "representation similarity against the gain of transfer"),
           _REUSE_CAPTIONS + "representation_gain", one_measure=True),
    Figure("test_dice", "metrics", _FIGURES + "segmentation:plot_test_dice",
           Place(PERFORMANCE, "Segmentation: which initialisation helps the encoder",
                 "test Dice per initialisation and fraction of training images"),
           _CAPTIONS + "test_dice"),
    Figure("convergence_dice", "history", _FIGURES + "segmentation:plot_convergence_dice",
           Place(CONVERGENCE, _HOW_FAST, "validation Dice after every epoch (segmentation)"),
           _CAPTIONS + "convergence_dice"),
)  # fmt: skip

#: Figure name -> its row, in the catalog's order.
FIGURES: dict[str, Figure] = {figure.name: figure for figure in CATALOG}
