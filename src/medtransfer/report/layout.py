"""Where every figure and table of a study goes in Snakemake's report.

The sections are :mod:`medtransfer.report.places`; a figure's place is its row of the figure
catalog (:mod:`medtransfer.figures.catalog`), a table's is in :data:`REPORT_TABLES` here.

The Snakefile imports this module: it must stay cheap (no pandas, matplotlib or torch). Which
tables a study's report holds, and its front page's spec, are the planner's
(:mod:`medtransfer.study.report`).
"""

from __future__ import annotations

from dataclasses import dataclass

from medtransfer import paths
from medtransfer.figures.catalog import FIGURES
from medtransfer.report.places import OTHER, PROTOCOLS, PROVENANCE, TABLES, Place


def figure_place(name: str) -> Place:
    """The place of a figure; a figure the catalog does not know goes to "Other figures"."""
    figure = FIGURES.get(name)
    return figure.place if figure else Place(OTHER, "Figures", name.replace("_", " "))


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
