"""Planning the feature-reuse analyses of the fine-tuning runs (workflow/rules/reuse.smk): weight
drift, first-layer filters, re-initialisation robustness and layer-wise k-NN, their options
(``analysis.{weight_drift, reinit, layer_knn, filters}``), job specs and part tables."""

from __future__ import annotations

import copy

from medtransfer import paths
from medtransfer.errors import ConfigError
from medtransfer.paths import Run
from medtransfer.study.defaults import DEFAULT_ANALYSIS

# The feature-reuse analyses under `analysis:` (each its own stage, CSV and figure), and the
# splits their test metrics may be computed on.
REUSE_ANALYSES = ("weight_drift", "reinit", "layer_knn", "filters")
REUSE_SPLITS = ("test", "val")
# The job unit of the analyses that run the network: a run, or a (dataset, arch, fraction) group.
REUSE_JOBS = ("run", "group")


class ReusePlan:
    """The feature-reuse analyses of :class:`medtransfer.study.Study`."""

    def _check_reuse_analyses(self) -> None:
        """Resolve ``analysis.{weight_drift, reinit, layer_knn, filters}`` into ``self.reuse``
        (name -> options, or None when turned off) and check the values the schema cannot."""
        self.reuse: dict[str, dict | None] = {}
        for name in REUSE_ANALYSES:
            value = self.analysis.get(name)
            if value is False or value is None:
                self.reuse[name] = None
                continue
            if value is True:
                value = copy.deepcopy(DEFAULT_ANALYSIS[name])
            if not isinstance(value, dict):
                raise ConfigError(f"config key analysis.{name}: give false (off), true (defaults) or a mapping of "
                                  f"its options, got {value!r}")
            unknown = sorted(set(value) - set(DEFAULT_ANALYSIS[name]))
            if unknown:
                allowed = ", ".join(DEFAULT_ANALYSIS[name]) or "none"
                raise ConfigError(f"config key analysis.{name}: unknown option(s) {', '.join(unknown)}; "
                                  f"allowed: {allowed}")
            self.reuse[name] = dict(value)
        for name in ("reinit", "layer_knn"):
            options = self.reuse[name]
            if options is not None and options["split"] not in REUSE_SPLITS:
                raise ConfigError(f"config key analysis.{name}.split: {options['split']!r}; allowed: "
                                  f"{', '.join(REUSE_SPLITS)}")
            if options is not None and options["job"] not in REUSE_JOBS:
                raise ConfigError(f"config key analysis.{name}.job: {options['job']!r}; allowed: "
                                  f"{', '.join(REUSE_JOBS)}")
        knn = self.reuse["layer_knn"]
        if knn is not None:
            for key in ("k", "temperature", "cap_k"):  # None: the k-NN protocol's setting
                if knn[key] is None:
                    knn[key] = self.knn[key]
            states = knn["states"]
            if not isinstance(states, list) or not states or any(s not in paths.STATES for s in states) \
                    or len(set(states)) != len(states):
                raise ConfigError(f"config key analysis.layer_knn.states: {states!r}; give a list of different "
                                  f"states from {', '.join(paths.STATES)}")
            if isinstance(knn["k"], bool) or not isinstance(knn["k"], int) or knn["k"] < 1:
                raise ConfigError(f"config key analysis.layer_knn.k: {knn['k']!r}; give an integer >= 1")
            if not isinstance(knn["temperature"], (int, float)) or knn["temperature"] <= 0:
                raise ConfigError(f"config key analysis.layer_knn.temperature: {knn['temperature']!r}; give a "
                                  "number > 0")
        if self.reuse["filters"] is not None and self.single_backbone_runs():
            self.reuse["filters"] = self._filters_cell(self.reuse["filters"])

    def _filters_cell(self, options: dict) -> dict:
        """``analysis.filters`` with its cell filled in (defaults) and checked against the grid."""
        runs = self.single_backbone_runs()
        first = runs[0]
        defaults = {"dataset": first.dataset, "arch": first.arch,
                    "fraction": max(self.fractions, key=float), "seed": self.seeds[0]}
        cell = {key: defaults[key] if options.get(key) is None else options[key] for key in defaults}
        cell["fraction"] = paths.format_fraction(cell["fraction"])
        allowed = {"dataset": sorted({r.dataset for r in runs}), "arch": self.architectures,
                   "fraction": self.fractions, "seed": self.seeds}
        for key, values in allowed.items():
            if cell[key] not in values:
                raise ConfigError(f"config key analysis.filters.{key}: {options[key]!r} is not in the study's "
                                  f"fine-tuning runs; allowed: {', '.join(map(str, values))}")
        if not self.filters_cell_runs(cell):
            raise ConfigError(f"config key analysis.filters: no fine-tuning run has dataset {cell['dataset']}, "
                              f"arch {cell['arch']}, fraction {cell['fraction']} and seed {cell['seed']}")
        max_filters = options["max_filters"]
        if isinstance(max_filters, bool) or not isinstance(max_filters, int) or max_filters < 1:
            raise ConfigError(f"config key analysis.filters.max_filters: {max_filters!r}; give an integer >= 1")
        return {**options, **cell}

    def filters_cell_runs(self, cell: dict | None = None) -> list[Run]:
        """The runs of the ``analysis.filters`` cell (or of ``cell``): one per init."""
        cell = cell or self.reuse["filters"]
        # with study.folds: the first fold's runs (one kernel picture per init, as without folds)
        return [run for run in self.single_backbone_runs() if (run.dataset, run.arch, run.fraction, run.seed, run.fold)
                == (cell["dataset"], cell["arch"], cell["fraction"], cell["seed"], self.folds[0])]

    def reuse_runs(self, name: str) -> list[Run]:
        """The runs analysis ``name`` reads: every single-backbone run for the weight analyses
        (weight drift, filters); classification runs only for those that score a classifier
        (re-initialisation's test metric, layer-wise k-NN's class labels)."""
        return self.classification_runs() if name in ("reinit", "layer_knn") else self.single_backbone_runs()

    def reuse_enabled(self, name: str) -> bool:
        """Whether analysis ``name`` runs in this study (on, and there are runs to analyse)."""
        return self.reuse[name] is not None and bool(self.reuse_runs(name))

    def reuse_groups(self, name: str) -> list[tuple[str, str, str]]:
        """(dataset, arch, fraction) groups of :meth:`reuse_runs`."""
        return sorted({(run.dataset, run.arch, run.fraction) for run in self.reuse_runs(name)})

    def _reuse_entries(self, runs: list[Run]) -> list[dict]:
        return [{"run": run.id, "run_dir": paths.run_dir(run), "columns": self.run_columns(run)} for run in runs]

    def reuse_group_runs(self, dataset: str, arch: str, fraction: str, name: str = "weight_drift") -> list[Run]:
        """The :meth:`reuse_runs` of analysis ``name`` in one (dataset, arch, fraction) group."""
        fraction = paths.format_fraction(fraction)
        return [run for run in self.reuse_runs(name) if (run.dataset, run.arch, run.fraction) == (dataset, arch, fraction)]

    def weight_drift_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """Weight drift of every run of one (dataset, arch, fraction) group: cheap (no forward pass),
        so one job per group, as the similarity stage."""
        return {"runs": self._reuse_entries(self.reuse_group_runs(dataset, arch, fraction)),
                "out": paths.group_analysis("weight_drift", dataset, arch, fraction)}

    def filters_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """The first-layer change of every run of one group (one job per group)."""
        return {"runs": self._reuse_entries(self.reuse_group_runs(dataset, arch, fraction)),
                "out": paths.group_analysis("filters", dataset, arch, fraction)}

    def filter_kernels_spec(self) -> dict:
        """The kernels of every init of the ``analysis.filters`` cell, for the filters figure."""
        options = self.reuse["filters"]
        return {"runs": self._reuse_entries(self.filters_cell_runs(options)), "max_filters": options["max_filters"],
                "out": paths.analysis_table("filter_kernels")}

    def reinit_spec(self, run: Run) -> dict:
        return {"run": run.id, "run_dir": paths.run_dir(run), "columns": self.run_columns(run),
                "split": self.reuse["reinit"]["split"], "out": paths.run_analysis("reinit", run)}

    def layer_knn_spec(self, run: Run) -> dict:
        options = self.reuse["layer_knn"]
        keys = ("states", "split", "k", "temperature", "cap_k", "max_memory_mb")
        return {"run": run.id, "run_dir": paths.run_dir(run), "columns": self.run_columns(run),
                **{key: options[key] for key in keys}, "out": paths.run_analysis("layer_knn", run)}

    def reuse_group_spec(self, name: str, dataset: str, arch: str, fraction: str) -> dict:
        """``analysis.{name}.job: group`` (reinit, layer_knn): the run specs of one group, one output."""
        run_spec = {"reinit": self.reinit_spec, "layer_knn": self.layer_knn_spec}[name]
        runs = [{k: v for k, v in run_spec(run).items() if k != "out"}
                for run in self.reuse_group_runs(dataset, arch, fraction, name)]
        return {"runs": runs, "out": paths.group_analysis(name, dataset, arch, fraction)}

    def reuse_parts(self, kind: str) -> list[str]:
        """The per-run or per-group CSVs that ``analysis_table(kind)`` is collected from (none when
        the analysis is off: the collect rule is still defined, but nothing asks for it)."""
        if self.reuse[kind] is None:
            return []
        if kind in ("reinit", "layer_knn") and self.reuse[kind]["job"] == "run":
            return [paths.run_analysis(kind, run) for run in self.reuse_runs(kind)]
        return [paths.group_analysis(kind, *group) for group in self.reuse_groups(kind)]

    def reuse_tables(self) -> list[str]:
        """The study-wide CSVs (``paths.analysis_table`` kinds) of the feature-reuse analyses that run."""
        kinds = {"weight_drift": ["weight_drift"], "reinit": ["reinit"], "layer_knn": ["layer_knn"],
                 "filters": ["filters", "filter_kernels"]}
        return [kind for name in REUSE_ANALYSES if self.reuse_enabled(name) for kind in kinds[name]]

    def reuse_figure_names(self) -> list[str]:
        """One figure per feature-reuse analysis that runs (named as the analysis)."""
        return [name for name in REUSE_ANALYSES if self.reuse_enabled(name)]
