"""Planning the figures (workflow/rules/figures.smk): which figures a study draws, and the tidy
CSV each is drawn from."""

from __future__ import annotations

from medtransfer.errors import ConfigError
from medtransfer.figures.catalog import FIGURES
from medtransfer.study.core import INITS_WITH_K

#: Figure name -> the tidy CSV (``medtransfer.paths.analysis_table`` kind) it is drawn from, read
#: from the figure catalog (torch- and matplotlib-free, so the Snakefile can read it).
FIGURE_INPUTS: dict[str, str] = {name: figure.input for name, figure in FIGURES.items()}


class FiguresPlan:
    """The figures of :class:`medtransfer.study.Study`."""

    def figure_names(self) -> list[str]:
        """The figures this study can draw (e.g. the k sweep only when a WT-ST/WT-RI init is in it)."""
        names = ["protocols"] if set(self.protocols) - {"finetune"} else []
        if not self.runs:  # every other figure is of fine-tuning runs
            return names
        segmenting = any(self.is_segmentation_target(run.dataset) for run in self.runs)
        classifying = any(not self.is_segmentation_target(run.dataset) for run in self.runs)
        names = (["test_auc", "convergence", "epochs_to_95"] if classifying else []) + names
        init_names = {spec.name for spec in self.inits}
        if classifying and len(init_names & {"RI", "ST", "WT"}) >= 2:
            names.append("init_comparison")
        if classifying and init_names & set(INITS_WITH_K):
            names.append("metric_vs_k")
        if segmenting:  # Dice per init and fraction; validation Dice per epoch
            names += ["test_dice", "convergence_dice"]
        if self.analysis["measures"]:
            names.append("similarity_init_final")
        if self.analysis["pairs"]:
            names += ["similarity_pairs_heatmap", "similarity_pairs_blocks"]
        names += self.reuse_figure_names()
        names += self.domain_figure_names()
        return names

    def figure_measure(self) -> str:
        """The similarity measure the figures draw: the first configured one."""
        return (self.analysis["measures"] or ["linear_cka_debiased"])[0]

    def figure_input(self, name: str) -> str:
        if name not in FIGURE_INPUTS:
            raise ConfigError(f"unknown figure {name!r}; figures: {', '.join(FIGURE_INPUTS)}")
        return FIGURE_INPUTS[name]
