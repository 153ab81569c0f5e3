"""Where every figure and table of a study goes in Snakemake's report.

Snakemake's report lists *categories* in the sidebar (sorted by name, hence the numbers) and,
inside each, *subcategories* with their results. Categories follow the questions the papers ask:
which initialisation helps at which data size; how fast fine-tuning converges; how the
representations differ; where the features are reused; how the evaluation protocol and the
source change the answer; then the tables and the provenance.

The Snakefile imports this module: it must stay cheap (no pandas, matplotlib or torch). Which
tables a study's report holds, and its front page's spec, are the planner's
(:mod:`medtransfer.study.report`).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtransfer import paths

PERFORMANCE = "1 Performance by initialisation and data size"
CONVERGENCE = "2 Convergence"
SIMILARITY = "3 Representation similarity"
FEATURE_REUSE = "4 Feature reuse"
PROTOCOLS = "5 Protocols and sources"
TABLES = "6 Tables"
PROVENANCE = "7 Provenance"
OTHER = "8 Other figures"
CATEGORIES: tuple[str, ...] = (PERFORMANCE, CONVERGENCE, SIMILARITY, FEATURE_REUSE, PROTOCOLS, TABLES,
                               PROVENANCE, OTHER)  # fmt: skip


@dataclass(frozen=True)
class Place:
    """A result's place in the report: sidebar category, subcategory, and what it shows (a
    column of the result list)."""

    category: str
    subcategory: str
    title: str


# Figures of the stages that exist, and of those being added on other branches (their names are
# registered in grid.FIGURE_INPUTS when they land), so each lands in its section on merge.
FIGURE_PLACES: dict[str, Place] = {
    "test_auc": Place(PERFORMANCE, "Which initialisation helps, at which data size",
                      "test AUC per initialisation and fraction of training data"),
    "init_comparison": Place(PERFORMANCE, "Which initialisation helps, at which data size",
                             "random (RI) vs weight statistics (ST) vs weight transfer (WT)"),
    "metric_vs_k": Place(PERFORMANCE, "How many blocks to transfer", "test AUC against the k blocks transferred"),
    "test_dice": Place(PERFORMANCE, "Segmentation: which initialisation helps the encoder",
                       "test Dice per initialisation and fraction of training images"),
    "convergence": Place(CONVERGENCE, "How fast fine-tuning converges", "validation AUC after every epoch"),
    "convergence_dice": Place(CONVERGENCE, "How fast fine-tuning converges",
                              "validation Dice after every epoch (segmentation)"),
    "epochs_to_95": Place(CONVERGENCE, "How fast fine-tuning converges",
                          "epochs to 95 % of the best validation AUC"),
    "similarity_init_final": Place(SIMILARITY, "How much each block changes",
                                   "similarity of each block before and after fine-tuning"),
    "similarity_pairs_heatmap": Place(SIMILARITY, "How differently initialised networks end",
                                      "block × block similarity of two initialisations"),
    "similarity_pairs_blocks": Place(SIMILARITY, "How differently initialised networks end",
                                     "matching-block similarity against the seed noise floor"),
    "prediction_similarity": Place(SIMILARITY, "How similar the predictions are",
                                   "agreement of the predictions of two initialisations"),
    "representation_gain": Place(SIMILARITY, "How differently initialised networks end",
                                 "representation similarity against the gain of transfer"),
    "weight_drift": Place(FEATURE_REUSE, "How far the weights move", "L2 distance of the weights from their init"),
    "filters": Place(FEATURE_REUSE, "How far the weights move", "first-layer filters"),
    "reinit": Place(FEATURE_REUSE, "Which blocks are critical", "robustness to re-initialising a block"),
    "layer_knn": Place(FEATURE_REUSE, "Where the features become useful", "k-NN accuracy of each block's features"),
    "fid_gain": Place(FEATURE_REUSE, "Domain distance", "gain of transfer against the FID to the source"),
    "fid_st_share": Place(FEATURE_REUSE, "Domain distance", "share of the gain that statistics explain, against FID"),
    "protocols": Place(PROTOCOLS, "Fine-tuning or frozen features",
                       "test AUC per protocol against the fraction of labels"),
}  # fmt: skip


def figure_place(name: str) -> Place:
    """The place of a figure; a figure this table does not know goes to "Other figures"."""
    return FIGURE_PLACES.get(name) or Place(OTHER, "Figures", name.replace("_", " "))


# The two files of a figure in the report, told apart by a label. Snakemake turns the one label
# after the first that has two values (each on half the results) into a toggle, starting on the
# value that sorts first, hence "PNG" before "vector PDF"; a second such label would cancel the
# toggle, so the figure's name and title share the first label.
FIGURE_FORMATS = {"png": "PNG", "pdf": "vector PDF"}


def figure_labels(name: str, ext: str) -> dict[str, str]:
    """Labels of one figure file in the report's result list (``ext``: png or pdf)."""
    return {"figure": f"{figure_place(name).title} ({name})", "format": FIGURE_FORMATS[ext]}


@dataclass(frozen=True)
class ReportTable:
    """A table of the report: the CSV it shows, and its place."""

    source: str
    place: Place


REPORT_TABLES: dict[str, ReportTable] = {
    "summary": ReportTable(paths.table("summary", "csv"),
                           Place(TABLES, "Summary over seeds", "mean ± sd over seeds per cell of the grid")),
    "runs": ReportTable(paths.analysis_table("metrics"),
                        Place(TABLES, "Every run", "metrics of every run, one row each")),
    "comparison": ReportTable(paths.table("comparison", "csv"),
                              Place(TABLES, "Against the reference initialisation",
                                    "every init t-tested against the reference")),
    "pretrain": ReportTable(paths.table("pretrain", "csv"),
                            Place(PROTOCOLS, "Source models", "k-NN accuracy of every source model")),
    "provenance": ReportTable(paths.table("provenance", "csv"),
                              Place(PROVENANCE, "Every run and source model",
                                    "config hash, commit, packages, host, device, precision, wall time")),
}  # fmt: skip


def table_labels(name: str) -> dict[str, str]:
    """Labels of a table in the report's result list (its title, rather than its path)."""
    return {"table": REPORT_TABLES[name].place.title}
