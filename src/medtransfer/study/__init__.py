"""The planner: the one place where a config becomes the list of jobs.

``Study(config)`` checks the cross-references the JSON schema cannot (targets and pretrain
datasets exist, inits name known sources and registered initialisations; architecture names in
:meth:`Study.check_architectures`, which needs timm) and expands ``datasets × architectures ×
inits × fractions × seeds`` into :class:`~medtransfer.paths.Run` cells. The Snakefile asks it for
targets and for the spec (a JSON-able dict) of each job; the CLI receives that spec, so a job
never re-reads the config.

One module per stage it plans, named as the rule files under ``workflow/rules/``, each a mixin
with that stage's checks and job specs; :mod:`~medtransfer.study.core` holds the grid they share,
:mod:`~medtransfer.study.defaults` and :mod:`~medtransfer.study.config` the config's defaults and
loading. Segmentation targets (datasets with masks: :func:`is_segmentation`) sit in the same grid;
their run specs add ``segmentation`` (the decoder options) and select on validation Dice, and the
frozen-feature protocols and fusions skip them.

The stages never import this package (tests/test_import_graph.py); it imports only their
torch-free catalogs, so the Snakefile can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from medtransfer.study.analysis import MEASURE_NAMES, AnalysisPlan
from medtransfer.study.config import (
    deep_merge,
    load_config,
    processes_per_job,
    validate_config,
)
from medtransfer.study.core import (
    FUSION_INITS,
    FUSION_OPTIONS,
    INIT_OPTIONS,
    INITS_WITH_K,
    INITS_WITH_SOURCE,
    INITS_WITHOUT_SOURCE,
    Core,
    InitSpec,
    expand_init,
    fusion_members,
    launcher,
)
from medtransfer.study.data import (
    SEGMENTATION_FORMATS,
    SEGMENTATION_SYNTHETIC_TASKS,
    DataPlan,
    is_segmentation,
)
from medtransfer.study.defaults import (
    DEFAULT_ANALYSIS,
    DEFAULT_RESOURCES,
    DEFAULT_SEGMENTATION,
    DEFAULT_TRAINING,
)
from medtransfer.study.domain import CCA_MEASURES, GAIN_METRICS, DomainPlan
from medtransfer.study.figures import FIGURE_INPUTS, FiguresPlan
from medtransfer.study.finetune import (
    SEGMENTATION_DECODERS,
    SEGMENTATION_SELECT_ON,
    FinetunePlan,
)
from medtransfer.study.pretrain import PretrainPlan
from medtransfer.study.protocols import ProtocolsPlan
from medtransfer.study.report import ReportPlan
from medtransfer.study.representations import RepresentationsPlan
from medtransfer.study.reuse import REUSE_ANALYSES, REUSE_JOBS, REUSE_SPLITS, ReusePlan

__all__ = [
    "CCA_MEASURES",
    "DEFAULT_ANALYSIS",
    "DEFAULT_RESOURCES",
    "DEFAULT_SEGMENTATION",
    "DEFAULT_TRAINING",
    "FIGURE_INPUTS",
    "FUSION_INITS",
    "FUSION_OPTIONS",
    "GAIN_METRICS",
    "INITS_WITHOUT_SOURCE",
    "INITS_WITH_K",
    "INITS_WITH_SOURCE",
    "INIT_OPTIONS",
    "MEASURE_NAMES",
    "REUSE_ANALYSES",
    "REUSE_JOBS",
    "REUSE_SPLITS",
    "SEGMENTATION_DECODERS",
    "SEGMENTATION_FORMATS",
    "SEGMENTATION_SELECT_ON",
    "SEGMENTATION_SYNTHETIC_TASKS",
    "InitSpec",
    "Study",
    "deep_merge",
    "expand_init",
    "fusion_members",
    "is_segmentation",
    "launcher",
    "load_config",
    "processes_per_job",
    "validate_config",
]


@dataclass
class Study(Core, DataPlan, PretrainPlan, FinetunePlan, ProtocolsPlan, RepresentationsPlan, AnalysisPlan,
            ReusePlan, DomainPlan, FiguresPlan, ReportPlan):
    """The validated, expanded study of a config."""

    def __post_init__(self) -> None:
        # Stage by stage, in the order of the workflow; a config with several mistakes gets the
        # first one's message, so this order is part of the behaviour.
        self._read_sections()
        self._check_targets()
        self._check_sources()
        self._expand_inits()
        self._check_training_overrides()
        self._check_folds()
        self._check_sizes()
        self._check_protocols()
        self._expand_cells()
        self._check_segmentation_targets()
        self._check_analysis()
        self._check_reuse_analyses()
        self._check_domain_analyses()
        self._check_report()
