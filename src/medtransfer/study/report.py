"""Planning the study report (workflow/rules/report.smk): which tables the report holds, and the
front page's job spec. Where each figure and table goes is the report's own catalog
(:mod:`medtransfer.report.layout`)."""

from __future__ import annotations

from pathlib import Path

from medtransfer import paths
from medtransfer.errors import ConfigError
from medtransfer.report.layout import REPORT_TABLES, figure_place
from medtransfer.report.rst import has_control_characters, visible_controls


class ReportPlan:
    """The report of :class:`medtransfer.study.Study`."""

    def _check_report(self) -> None:
        """``study.name`` is one line of text: the report shows it as the front page's title, and a
        line break there would let the rest of the name be read as rst directives."""
        name = self.config["study"].get("name")
        if isinstance(name, str) and has_control_characters(name):
            raise ConfigError(f"config key study.name: {visible_controls(name)!r} holds a control character (a line "
                              "break, tab, escape, ...); give the study's name as one line of plain text")

    def report_table_names(self) -> list[str]:
        """The tables this study's report holds (comparison and pretrain only where they exist)."""
        names = ["summary", "runs"]
        if self.analysis.get("reference"):
            names.append("comparison")
        if self.pretrain_jobs():
            names.append("pretrain")
        return names + ["provenance"]

    def study_name(self, configfiles: list[str]) -> str:
        """``study.name`` of the config, else the stem of the last config file, else "study"."""
        name = self.config["study"].get("name")
        if name:
            return str(name)
        return Path(configfiles[-1]).stem if configfiles else "study"

    def front_spec(self, configfiles: list[str]) -> dict:
        """Everything the front page needs, as the job spec of ``medtransfer report-front``.

        ``configfiles`` are the config files the workflow was started with (Snakemake's
        ``workflow.configfiles``), so the regeneration commands on the page name them.
        """
        datasets = []
        targets = list(self.config["study"]["targets"])
        for name in self.datasets_needed():
            role = "target" if name in targets else "source (pretraining)"
            datasets.append({"name": name, "role": role, "cache": paths.dataset_cache(name)})
        datasets.sort(key=lambda d: (d["role"] != "target", targets.index(d["name"]) if d["name"] in targets else 0))
        categories = [figure_place(name).category for name in self.figure_names()]
        categories += [REPORT_TABLES[name].place.category for name in self.report_table_names()]
        return {
            "name": self.study_name(configfiles),
            "configfiles": [str(f) for f in configfiles],
            "config": self.config,
            "grid": {
                "targets": targets,
                "architectures": self.architectures,
                "inits": [spec.label for spec in self.inits],
                "fractions": [float(f) for f in self.fractions],
                "seeds": self.seeds,
                **({"folds": self.folds} if self.folds != [None] else {}),  # only then: specs as before
                "protocols": self.protocols,
            },
            "counts": {"finetune": len(self.runs), "probe": len(self.probe_runs),
                       "pretrain": len(self.pretrain_jobs()),
                       # only then: the front page spec of every other study stays as it was
                       **({"lpft": len(self.lpft_runs)} if self.lpft_runs else {})},
            "datasets": datasets,
            "figures": self.figure_names(),
            "categories": sorted(set(categories)),
            "metrics": paths.analysis_table("metrics"),
            "provenance": paths.table("provenance", "csv"),
            "out": paths.report_front(),
        }
