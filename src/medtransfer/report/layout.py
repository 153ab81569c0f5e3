"""Where every figure and table of a study goes in Snakemake's report, and the front page's spec.

The sections are :mod:`medtransfer.report.places`; a figure's place is its row of the figure
catalog (:mod:`medtransfer.figures.catalog`), a table's is in :data:`REPORT_TABLES` here.

The Snakefile imports this module: it must stay cheap (no pandas, matplotlib or torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medtransfer import paths
from medtransfer.figures.catalog import FIGURES
from medtransfer.report.places import OTHER, PROTOCOLS, PROVENANCE, TABLES, Place

if TYPE_CHECKING:  # the grid is only needed for type hints here
    from medtransfer.grid import Study


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


def report_table_names(study: Study) -> list[str]:
    """The tables this study's report holds (comparison and pretrain only where they exist)."""
    names = ["summary", "runs"]
    if study.analysis.get("reference"):
        names.append("comparison")
    if study.pretrain_jobs():
        names.append("pretrain")
    return names + ["provenance"]


def study_name(study: Study, configfiles: list[str]) -> str:
    """``study.name`` of the config, else the stem of the last config file, else "study"."""
    name = study.config["study"].get("name")
    if name:
        return str(name)
    return Path(configfiles[-1]).stem if configfiles else "study"


def front_spec(study: Study, configfiles: list[str]) -> dict:
    """Everything the front page needs, as the job spec of ``medtransfer report-front``.

    ``configfiles`` are the config files the workflow was started with (Snakemake's
    ``workflow.configfiles``), so the regeneration commands on the page name them.
    """
    datasets = []
    targets = list(study.config["study"]["targets"])
    for name in study.datasets_needed():
        role = "target" if name in targets else "source (pretraining)"
        datasets.append({"name": name, "role": role, "cache": paths.dataset_cache(name)})
    datasets.sort(key=lambda d: (d["role"] != "target", targets.index(d["name"]) if d["name"] in targets else 0))
    categories = [figure_place(name).category for name in study.figure_names()]
    categories += [REPORT_TABLES[name].place.category for name in report_table_names(study)]
    return {
        "name": study_name(study, configfiles),
        "configfiles": [str(f) for f in configfiles],
        "config": study.config,
        "grid": {
            "targets": targets,
            "architectures": study.architectures,
            "inits": [spec.label for spec in study.inits],
            "fractions": [float(f) for f in study.fractions],
            "seeds": study.seeds,
            "protocols": study.protocols,
        },
        "counts": {"finetune": len(study.runs), "probe": len(study.probe_runs),
                   "pretrain": len(study.pretrain_jobs())},  # fmt: skip
        "datasets": datasets,
        "figures": study.figure_names(),
        "categories": sorted(set(categories)),
        "metrics": paths.analysis_table("metrics"),
        "provenance": paths.table("provenance", "csv"),
        "out": paths.report_front(),
    }
