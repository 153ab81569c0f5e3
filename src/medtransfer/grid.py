"""The study grid: the one place where a config becomes the list of jobs.

``Study(config)`` checks the cross-references the JSON schema cannot (targets and pretrain
datasets exist, inits name known sources and registered initialisations; architecture names in
:meth:`Study.check_architectures`, which needs timm)
and expands ``datasets × architectures × inits × fractions × seeds`` into :class:`Run` cells.
The Snakefile asks it for targets and for the spec (a JSON-able dict) of each job; the CLI
receives that spec, so a job never re-reads the config.

Segmentation targets (datasets with masks: :func:`is_segmentation`) sit in the same grid; their
run specs add ``segmentation`` (the decoder options) and select on validation Dice, and the
frozen-feature protocols and fusions skip them.

Init labels (the ``{init}`` path component) are built from the config entry:
``RI``, ``Gabor``, ``WT_<source>``, ``ST_<source>``, ``WT-ST_<source>_k<k>``,
``WT-RI_<source>_k<k>`` and ``..._slim<factor>``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from medtransfer import paths
from medtransfer.columns import RUN_COLUMNS, run_columns  # noqa: F401 - re-exported for one release
from medtransfer.errors import ConfigError, MedtransferError
from medtransfer.paths import Run
from medtransfer.specs import spec_hash  # noqa: F401 - re-exported for one release
from medtransfer.protocols import DVME_DEFAULTS, FROZEN_PROTOCOLS, KNN_DEFAULTS, LINEAR_DEFAULTS, PROTOCOLS
from medtransfer.training.ssl.options import resolve_options

# Inits and the options they take; the full registry lives in medtransfer.init, which imports
# torch. The grid must stay importable cheaply (the Snakefile imports it), so it checks names
# against this list; tests/test_grid.py keeps it equal to the registry.
INITS_WITH_SOURCE = ("WT", "ST", "WT-ST", "WT-RI")
INITS_WITHOUT_SOURCE = ("RI", "Gabor")
INITS_WITH_K = ("WT-ST", "WT-RI")
INIT_OPTIONS = ("k", "slim", "architectures")
# Fusions of several sources (Truong et al. 2021): DVME (projection + self-attention across
# sources) and plain concatenation, its baseline; evaluated with the linear protocol on frozen
# features and, with `finetune: true` in the init entry, fine-tuned end to end. A fused source is
# a source name (at the run's architecture) or `name@arch` (that source at another architecture).
FUSION_INITS = ("DVME", "CONCAT")
FUSION_OPTIONS = ("finetune",)
# Names of medtransfer.analysis.similarity.MEASURES (which imports torch); kept equal by a test.
MEASURE_NAMES = ("linear_cka", "linear_cka_debiased", "rbf_cka", "cca_mean", "svcca", "pwcca")
# The feature-reuse analyses under `analysis:` (each its own stage, CSV and figure), and the
# splits their test metrics may be computed on.
REUSE_ANALYSES = ("weight_drift", "reinit", "layer_knn", "filters")
REUSE_SPLITS = ("test", "val")
# The job unit of the analyses that run the network: a run, or a (dataset, arch, fraction) group.
REUSE_JOBS = ("run", "group")

DEFAULT_TRAINING: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 64,
    "eval_batch_size": 256,
    "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9},
    "schedule": {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_epochs": 0},
    "normalize": "dataset",
    "image_size": None,
    "resize_mode": "nearest",
    "augment": None,
    "select_on": "val_auc",
    "amp": "bf16",
    "channels_last": True,
    "deterministic": True,
    "num_workers": 2,
    "max_memory_mb": 4096,
    "checkpoint_minutes": 10.0,
}

DEFAULT_ANALYSIS: dict[str, Any] = {
    "probe_size": 512,
    "probe_split": "test",
    "probe_seed": 0,
    "pool": 4,
    "dtype": "float32",
    "measures": ["linear_cka_debiased", "linear_cka"],
    "pairs": [],
    # The feature-reuse analyses (README "Feature reuse"): each on by default, `false` turns it off.
    # layer_knn's k / temperature / cap_k left None are the study's `knn:` settings; filters'
    # cell left None is the first target and architecture, the largest fraction, the first seed.
    # job: one job per run (parallel over GPUs) or per (dataset, arch, fraction) group (one process
    # start, ~4 s of imports, for all its runs: the cheaper choice for small models and CPUs).
    "weight_drift": {},
    "reinit": {"split": "test", "job": "run"},
    "layer_knn": {"k": None, "temperature": None, "cap_k": None, "states": ["init", "final"], "split": "test",
                  "max_memory_mb": 2048, "job": "run"},
    "filters": {"dataset": None, "arch": None, "fraction": None, "seed": None, "max_filters": 64},
    # cross-run feature-reuse analyses (medtransfer.analysis.fid / predictions / representation_gain);
    # each `false` in the config turns it off
    "fid": {"features": "inception_v3", "size": None, "split": "train", "max_images": 10000, "arch": None,
            "file": None, "batch_size": 100, "metric": "test_auc", "source_datasets": {}},
    "prediction_similarity": {"split": "test"},
    "representation_gain": {"metric": "test_auc", "include_ri": False},
    # Juodelyte et al.'s CCA protocol ({channels: 64, positions: 10000, repeats: 5}); null: off
    "cca_subsample": None,
}

# Segmentation targets (a mask per image): datasets of these formats, and these synthetic tasks.
# medtransfer.data and medtransfer.models.segmentation import torch; tests/test_grid.py keeps
# these names equal to theirs.
SEGMENTATION_FORMATS = ("masks",)
SEGMENTATION_SYNTHETIC_TASKS = ("lesion_segmentation",)
SEGMENTATION_DECODERS = ("unet",)
SEGMENTATION_SELECT_ON = ("val_dice", "val_loss", "last")
# config `segmentation:` (how every segmentation target is fine-tuned): the decoder over the
# encoder's canonical blocks, its widths ("auto" or one per skip, deepest first), the
# best-validation criterion, and how many example masks per split predictions.h5 keeps
DEFAULT_SEGMENTATION: dict[str, Any] = {
    "decoder": "unet",
    "decoder_channels": "auto",
    "select_on": "val_dice",
    "examples": 8,
}

# Per-rule defaults; config `resources:` overrides them per rule name.
DEFAULT_RESOURCES: dict[str, dict[str, int]] = {
    "preprocess": {"threads": 2, "mem_mb": 4000, "runtime": 60},
    "pretrain": {"threads": 4, "mem_mb": 8000, "runtime": 240},
    "finetune": {"threads": 4, "mem_mb": 8000, "runtime": 240},
    "activations": {"threads": 2, "mem_mb": 8000, "runtime": 30},
    "similarity": {"threads": 2, "mem_mb": 8000, "runtime": 30},
    "features": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "probe": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "collect": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "figure": {"threads": 1, "mem_mb": 2000, "runtime": 10},
    "weight_drift": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "filters": {"threads": 1, "mem_mb": 4000, "runtime": 30},
    "reinit": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "layer_knn": {"threads": 2, "mem_mb": 8000, "runtime": 120},
    "fid_stats": {"threads": 2, "mem_mb": 8000, "runtime": 60},
    "domain": {"threads": 1, "mem_mb": 4000, "runtime": 20},
}


# Figure name -> the tidy CSV (medtransfer.paths.analysis_table kind) it is drawn from. The
# drawing functions live in medtransfer.figures (which imports matplotlib; the Snakefile must
# not); tests/test_grid.py keeps the two in step.
FIGURE_INPUTS: dict[str, str] = {
    "test_auc": "metrics",
    "init_comparison": "metrics",
    "metric_vs_k": "metrics",
    "protocols": "metrics",
    "convergence": "history",
    "epochs_to_95": "history",
    "similarity_init_final": "similarity_init_final",
    "similarity_pairs_heatmap": "similarity_pairs",
    "similarity_pairs_blocks": "similarity_pairs",
    "weight_drift": "weight_drift",
    "reinit": "reinit",
    "layer_knn": "layer_knn",
    "filters": "filter_kernels",
    "fid_gain": "fid_gain",
    "fid_st_share": "fid_gain",
    "prediction_similarity": "prediction_similarity",
    "representation_gain": "representation_gain_runs",
    "test_dice": "metrics",
    "convergence_dice": "history",
}


def is_segmentation(entry: dict) -> bool:
    """Whether a ``datasets:`` entry is a segmentation dataset (masks beside its images)."""
    return entry.get("format") in SEGMENTATION_FORMATS or (
        entry.get("format") == "synthetic" and entry.get("task") in SEGMENTATION_SYNTHETIC_TASKS)


def _check_segmentation(options: dict) -> None:
    """ConfigError naming the ``segmentation.*`` key of a bad value and the allowed ones."""
    if options["decoder"] not in SEGMENTATION_DECODERS:
        raise ConfigError(f"config key segmentation.decoder: {options['decoder']!r}; allowed: "
                          f"{', '.join(SEGMENTATION_DECODERS)}")
    if options["select_on"] not in SEGMENTATION_SELECT_ON:
        raise ConfigError(f"config key segmentation.select_on: {options['select_on']!r}; allowed: "
                          f"{', '.join(SEGMENTATION_SELECT_ON)}")
    channels = options["decoder_channels"]
    if channels != "auto" and not (isinstance(channels, list) and channels and all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)):
        raise ConfigError(f"config key segmentation.decoder_channels: 'auto' or a list of positive integers "
                          f"(one per skip, deepest first), got {channels!r}")
    examples = options["examples"]
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ConfigError(f"config key segmentation.examples: an integer >= 0 (masks kept per split in "
                          f"predictions.h5), got {examples!r}")


def deep_merge(base: dict, override: dict | None) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_config(path: str | Path, schema: str | Path | None = None) -> dict:
    """Read a YAML config and validate it against the JSON schema (the Snakefile does the same
    with snakemake.utils.validate). Errors name the key path and the allowed values."""
    with open(path) as handle:
        config = yaml.safe_load(handle)
    if schema is not None:
        validate_config(config, schema)
    return config


def validate_config(config: dict, schema: str | Path) -> None:
    import jsonschema

    with open(schema) as handle:
        schema_dict = yaml.safe_load(handle)
    validator = jsonschema.Draft202012Validator(schema_dict)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
        raise ConfigError(f"config key {key}: {error.message}")


@dataclass(frozen=True)
class InitSpec:
    """One expanded init of the grid: the registry name, its source and options."""

    name: str
    source: str | None = None
    k: int | None = None
    slim: float | None = None
    architectures: tuple[str, ...] | None = None  # None: every architecture of the study
    sources: tuple[str, ...] | None = None  # the fused sources of DVME / CONCAT ("name" or "name@arch")
    finetune: bool = False  # a fusion that is also fine-tuned end to end

    @property
    def fusion(self) -> bool:
        return self.name in FUSION_INITS

    @property
    def label(self) -> str:
        if self.sources:
            return f"{self.name}_{'+'.join(self.sources)}"
        parts = [self.name]
        if self.source:
            parts.append(self.source)
        if self.k is not None:
            parts.append(f"k{self.k}")
        if self.slim is not None:
            parts.append(f"slim{self.slim:g}")
        return "_".join(parts)

    def as_dict(self) -> dict:
        spec = {"name": self.name, "source": self.source, "k": self.k, "slim": self.slim, "label": self.label}
        if self.sources:  # only then: the specs (and hashes) of every other init stay as they were
            spec["sources"] = list(self.sources)
        return spec


def expand_init(entry: str | dict, index: int) -> list[InitSpec]:
    """One config entry of ``study.inits`` -> one InitSpec per k (a list of k is a sweep)."""
    key = f"study.inits[{index}]"
    allowed = ", ".join(INITS_WITHOUT_SOURCE + INITS_WITH_SOURCE + FUSION_INITS)
    if isinstance(entry, dict) and any(name in FUSION_INITS for name in entry):
        names = [k for k in entry if k not in FUSION_OPTIONS]
        if len(names) != 1:
            raise ConfigError(f"config key {key}: a fusion entry names one fusion and its options "
                              f"({', '.join(FUSION_OPTIONS)}), got {list(entry)}")
        name, sources = names[0], entry[names[0]]
        if (not isinstance(sources, list) or len(sources) < 2 or not all(isinstance(s, str) for s in sources)
                or len(set(sources)) != len(sources)):
            raise ConfigError(f"config key {key}.{name}: give a list of two or more different source names "
                              f"(e.g. {{{name}: [cifar-simclr, cifar-dino]}}), got {sources!r}")
        finetune = entry.get("finetune", False)
        if not isinstance(finetune, bool):
            raise ConfigError(f"config key {key}.finetune: true or false, got {finetune!r}")
        return [InitSpec(name, sources=tuple(sources), finetune=finetune)]
    if isinstance(entry, str) and entry in FUSION_INITS:
        raise ConfigError(f"config key {key}: {entry} fuses sources, write {{{entry}: [source, source, ...]}}")
    if isinstance(entry, str):
        if entry in INITS_WITH_SOURCE:
            raise ConfigError(f"config key {key}: {entry} needs a source, write {{{entry}: <source name>}}")
        if entry not in INITS_WITHOUT_SOURCE:
            raise ConfigError(f"config key {key}: unknown init {entry!r}; allowed: {allowed}")
        return [InitSpec(entry)]
    options = {k: v for k, v in entry.items() if k in INIT_OPTIONS}
    names = [k for k in entry if k not in INIT_OPTIONS]
    if len(names) != 1:
        raise ConfigError(f"config key {key}: name exactly one init (allowed: {allowed}), got {names}")
    name = names[0]
    if name not in INITS_WITH_SOURCE + INITS_WITHOUT_SOURCE:
        raise ConfigError(f"config key {key}: unknown init {name!r}; allowed: {allowed}")
    source = entry[name] if name in INITS_WITH_SOURCE else None
    if name in INITS_WITH_SOURCE and not isinstance(source, str):
        raise ConfigError(f"config key {key}.{name}: give the name of a source from `sources:`")
    ks = options.get("k")
    if name in INITS_WITH_K and ks is None:
        raise ConfigError(f"config key {key}: {name} needs k (the number of transferred blocks, or a list)")
    if name not in INITS_WITH_K and ks is not None:
        raise ConfigError(f"config key {key}.k: only {', '.join(INITS_WITH_K)} take k")
    slim = options.get("slim")
    if slim is not None and name != "WT-RI":
        raise ConfigError(f"config key {key}.slim: only WT-RI takes a slim top")
    ks = ks if isinstance(ks, list) else [ks]
    archs = tuple(options["architectures"]) if options.get("architectures") else None
    return [InitSpec(name, source, k, slim, archs) for k in ks]




def fusion_members(spec: InitSpec, arch: str) -> list[tuple[str, str]]:
    """(source, architecture) of every backbone a fusion init fuses, from its entries ("name" or
    "name@arch"): ``arch`` (the run's) where an entry names none; none for any other init."""
    return [(name, member_arch or arch)
            for name, _, member_arch in (member.partition("@") for member in spec.sources or ())]


def _check_milestones(milestones: list[float], key: str) -> None:
    """Milestones are all epochs (>= 1) or all fractions of the run (< 1). A mix such as
    [0.5, 1.0] almost always means fractions, but 1.0 would decay after the first epoch."""
    fractions = [m for m in milestones if m < 1]
    if fractions and len(fractions) < len(milestones):
        raise ConfigError(
            f"config key {key}: {milestones} mixes fractions of the run (< 1) with epochs (>= 1); "
            "1.0 would mean epoch 1, not the end. Give all as epochs (e.g. [50, 75]) or all as "
            "fractions below 1 (e.g. [0.5, 0.75])"
        )


def processes_per_job(training: dict, key: str = "train") -> int:
    """The processes (one per GPU) that train one job together: ``gpus_per_job`` of a training
    section (default 1), checked to be an integer >= 1 that divides the global ``batch_size``
    (each process trains on batch_size / gpus_per_job images per step). ``key`` names the section
    in errors."""
    n = training.get("gpus_per_job", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"config key {key}.gpus_per_job: {n!r}; give an integer >= 1 (the GPUs, one process "
                          "each, that train one job together; 1 trains in one process)")
    batch = int(training["batch_size"])
    if batch % n:
        lower, upper = (batch // n) * n, (batch // n + 1) * n
        choices = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"config key {key}.batch_size: {batch} is the global batch, shared by {key}.gpus_per_job "
                          f"= {n} processes, so it must be divisible by {n}; set batch_size to {choices}, "
                          "or gpus_per_job to a divisor of it")
    return n


def launcher(processes: int) -> str:
    """The command that starts ``medtransfer`` for a job of ``processes`` processes: the CLI itself
    for one, PyTorch's ``torchrun`` (one node, ``processes`` workers, a free rendezvous port) for
    more; the rules put the sub-command after it."""
    if processes <= 1:
        return "medtransfer"
    return f"torchrun --standalone --nproc_per_node {int(processes)} -m medtransfer.cli"


@dataclass
class Study:
    """The validated, expanded study of a config."""

    config: dict
    inits: list[InitSpec] = field(init=False)
    runs: list[Run] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        study = config["study"]
        self.datasets: dict[str, dict] = config["datasets"]
        self.sources: dict[str, dict] = config.get("sources") or {}
        self.train = deep_merge(DEFAULT_TRAINING, config.get("train"))
        self.pretrain_defaults = deep_merge(self.train, config.get("pretrain"))
        self.analysis = deep_merge(DEFAULT_ANALYSIS, config.get("analysis"))
        self.arch_options: dict[str, dict] = config.get("architectures") or {}
        self.resources = deep_merge(DEFAULT_RESOURCES, config.get("resources"))
        for key, training in (("train", self.train), ("pretrain", self.pretrain_defaults)):
            _check_milestones(training["schedule"].get("milestones", []), f"{key}.schedule.milestones")
            processes_per_job(training, key)

        for i, target in enumerate(study["targets"]):
            self._check_dataset(target, f"study.targets[{i}]")
            if self.datasets[target].get("labels", True) is False:
                raise ConfigError(f"config key study.targets[{i}]: dataset {target!r} has no labels "
                                  f"(datasets.{target}.labels: false); unlabelled images can pretrain a "
                                  "self-supervised source, but a target needs labels")
        for name, source in self.sources.items():
            entries = [(f"sources.{name}", source)]
            entries += [(f"sources.{name}.per_arch.{arch}", o) for arch, o in (source.get("per_arch") or {}).items()]
            for key, entry in entries:
                if "pretrain" in entry:
                    self._check_pretrain(entry["pretrain"], f"{key}.pretrain")
        self._check_from_cycles()
        self.inits = [spec for i, entry in enumerate(study["inits"]) for spec in expand_init(entry, i)]
        for i, spec in enumerate(self.inits):
            named = ([spec.source] if spec.source is not None else []) + [s for s, _ in fusion_members(spec, "")]
            for source in named:
                if source not in self.sources:
                    known = ", ".join(self.sources) or "none defined"
                    raise ConfigError(
                        f"config key study.inits: init {spec.label} names source {source!r}, "
                        f"which is not under `sources:` (defined: {known})"
                    )
        labels = [spec.label for spec in self.inits]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"config key study.inits: the same init appears twice ({labels})")
        self.architectures: list[str] = list(study["architectures"])
        self.fractions = [paths.format_fraction(f) for f in study["fractions"]]
        self.seeds: list[int] = list(study["seeds"])
        for spec in self.inits:
            for arch in spec.architectures or ():
                if arch not in self.architectures:
                    raise ConfigError(f"config key study.inits: init {spec.label} names architecture {arch!r}, "
                                      f"which is not in study.architectures")
        self.protocols: list[str] = list(study.get("protocols") or ["finetune"])
        for i, protocol in enumerate(self.protocols):
            if protocol not in PROTOCOLS:
                raise ConfigError(f"config key study.protocols[{i}]: unknown protocol {protocol!r}; "
                                  f"allowed: {', '.join(PROTOCOLS)}")
        if len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(f"config key study.protocols: a protocol appears twice ({self.protocols})")
        self.linear = deep_merge(LINEAR_DEFAULTS, config.get("linear"))
        self.knn = deep_merge(KNN_DEFAULTS, config.get("knn"))
        self.dvme = deep_merge(DVME_DEFAULTS, config.get("dvme"))
        #: every cell of the grid, whatever the protocol
        self.cells = [
            Run(dataset, arch, spec.label, fraction, seed)
            for dataset, arch, spec, fraction, seed in product(
                study["targets"], self.architectures, self.inits, self.fractions, self.seeds
            )
            if spec.architectures is None or arch in spec.architectures
        ]
        fused = {spec.label for spec in self.inits if spec.fusion}
        finetuned_fusions = {spec.label for spec in self.inits if spec.fusion and spec.finetune}
        if finetuned_fusions and "finetune" not in self.protocols:
            raise ConfigError(f"config key study.inits: {', '.join(sorted(finetuned_fusions))} asks for "
                              "finetune: true, but finetune is not in study.protocols; add it there")
        if fused - finetuned_fusions and "linear" not in self.protocols:
            raise ConfigError(f"config key study.inits: {', '.join(sorted(fused - finetuned_fusions))} fuse "
                              "frozen sources and are evaluated with the linear protocol; add linear to "
                              "study.protocols (or finetune: true to the entry to fine-tune the fusion)")
        #: the fine-tuning runs (the study's runs before protocols existed: their paths are unchanged);
        #: fusions only where their entry asks for it (S backbones: S times the cost of a run)
        self.runs = ([run for run in self.cells if run.init not in fused or run.init in finetuned_fusions]
                     if "finetune" in self.protocols else [])
        #: (protocol, cell) of the frozen-feature protocols; fusions under the linear protocol only
        self.probe_runs = [(protocol, run) for protocol in self.protocols if protocol in FROZEN_PROTOCOLS
                           for run in self.cells if protocol == "linear" or run.init not in fused]
        self.segmentation = deep_merge(DEFAULT_SEGMENTATION, config.get("segmentation"))
        _check_segmentation(self.segmentation)
        #: targets with masks: fine-tuned under a decoder; the frozen protocols (which classify pooled
        #: features) and the fusions (which have no single encoder) skip them
        self.segmentation_targets = [t for t in study["targets"] if is_segmentation(self.datasets[t])]
        if self.segmentation_targets:
            self.runs = [run for run in self.runs if not (run.dataset in self.segmentation_targets and run.init in fused)]
            self.probe_runs = [(p, run) for p, run in self.probe_runs if run.dataset not in self.segmentation_targets]
        self._init_by_label = {spec.label: spec for spec in self.inits}
        for i, measure in enumerate(self.analysis["measures"]):
            if measure not in MEASURE_NAMES:
                raise ConfigError(f"config key analysis.measures[{i}]: unknown measure {measure!r}; "
                                  f"allowed: {', '.join(MEASURE_NAMES)}")
        reference = self.analysis.get("reference")
        if reference is not None and reference not in self._init_by_label:
            raise ConfigError(f"config key analysis.reference: {reference!r} is not an init label of the study; "
                              f"labels: {', '.join(labels)}")
        for i, pair in enumerate(self.analysis["pairs"]):
            for side in ("a", "b"):
                if pair[side] not in self._init_by_label:
                    raise ConfigError(
                        f"config key analysis.pairs[{i}].{side}: {pair[side]!r} is not an init label "
                        f"of the study; labels: {', '.join(labels)}"
                    )
        self._check_reuse_analyses()
        self._check_domain_analyses()

    def _check_pretrain(self, entry: dict, key: str) -> None:
        self._check_dataset(entry["dataset"], f"{key}.dataset")
        if is_segmentation(self.datasets[entry["dataset"]]):
            raise ConfigError(f"config key {key}.dataset: {entry['dataset']!r} is a segmentation dataset (its "
                              "targets are masks); pretrain on its images as an image folder instead "
                              "({format: imagefolder, labels: false} for the self-supervised methods)")
        processes_per_job(deep_merge(self.pretrain_defaults, entry.get("training")), f"{key}.training")
        method = entry.get("method", "supervised")
        resolve_options(method, entry.get("options"), key)
        if method == "supervised" and self.datasets[entry["dataset"]].get("labels", True) is False:
            raise ConfigError(f"config key {key}.method: supervised pretraining needs labels, but dataset "
                              f"{entry['dataset']!r} has none (labels: false); choose a self-supervised method "
                              "(simclr, mocov2, byol, dino, swav, barlowtwins)")
        start = entry.get("from")
        if start is not None and start not in self.sources:
            raise ConfigError(f"config key {key}.from: source {start!r} is not under `sources:` "
                              f"(defined: {', '.join(self.sources)})")

    def _from_of(self, source: str, arch: str | None) -> str | None:
        entry = self.source_entry(source, arch) if arch else self.sources[source]
        return (entry.get("pretrain") or {}).get("from")

    def _check_from_cycles(self) -> None:
        """A chain of ``from`` (continual pretraining) is fine; a cycle can never start."""
        archs = [None, *(self.config["study"].get("architectures") or [])]
        for arch in archs:
            for first in self.sources:
                chain, current = [first], self._from_of(first, arch)
                while current is not None:
                    if current in chain:
                        loop = " -> ".join([*chain[chain.index(current):], current])
                        raise ConfigError(f"config key sources.{first}.pretrain.from: the sources continue from "
                                          f"each other in a cycle ({loop}); one of them must start from "
                                          "random init, timm or a file")
                    chain.append(current)
                    current = self._from_of(current, arch)

    def _check_dataset(self, name: str, key: str) -> None:
        if name not in self.datasets:
            raise ConfigError(
                f"config key {key}: dataset {name!r} is not under `datasets:` "
                f"(defined: {', '.join(self.datasets)})"
            )

    # ---- what the workflow builds -------------------------------------------------------

    def init_spec(self, label: str) -> InitSpec:
        try:
            return self._init_by_label[label]
        except KeyError:
            raise ConfigError(f"init label {label!r} is not in the study") from None

    def source_entry(self, source: str, arch: str) -> dict:
        """The entry of ``source`` for ``arch``: its ``per_arch`` override if any (e.g. timm
        ImageNet weights for ResNet-50 but our own ImageNet pretraining for the CBR family,
        which has no published weights), else the source's own entry."""
        entry = self.sources[source]
        override = (entry.get("per_arch") or {}).get(arch)
        return override if override is not None else {k: v for k, v in entry.items() if k != "per_arch"}

    def pretrain_jobs(self) -> list[tuple[str, str]]:
        """(source, arch) pairs that the workflow must pretrain itself."""
        jobs = set()
        for spec in self.inits:
            for arch in spec.architectures or self.architectures:
                firsts = ([(spec.source, arch)] if spec.source else []) + fusion_members(spec, arch)
                for first, source_arch in firsts:
                    source = first
                    while source is not None:  # and every source it continues from
                        if "pretrain" in self.source_entry(source, source_arch):
                            jobs.add((source, source_arch))
                        source = self._from_of(source, source_arch)
        return sorted(jobs)

    def datasets_needed(self) -> list[str]:
        names = {run.dataset for run in self.cells}
        names |= {self.source_entry(s, a)["pretrain"]["dataset"] for s, a in self.pretrain_jobs()}
        return sorted(names)

    def single_backbone_runs(self) -> list[Run]:
        """The fine-tuning runs of one network (not a fusion of several backbones): those the
        block-wise analyses (activations, similarity, weight drift, ...) read."""
        return [run for run in self.runs if not self.init_spec(run.init).fusion]

    def run_groups(self) -> dict[tuple[str, str, str], list[Run]]:
        """Runs grouped by (dataset, arch, fraction): the unit of cross-run comparisons."""
        groups: dict[tuple[str, str, str], list[Run]] = {}
        for run in self.single_backbone_runs():
            groups.setdefault((run.dataset, run.arch, run.fraction), []).append(run)
        return groups

    # ---- job specs (what the CLI receives) ------------------------------------------------

    def preprocess_spec(self, dataset: str) -> dict:
        return {"name": dataset, "entry": self.datasets[dataset], "out": paths.dataset_cache(dataset)}

    def source_spec(self, source: str, arch: str) -> dict:
        """Where the weights of ``source`` for ``arch`` come from (medtransfer.models.weights)."""
        entry = self.source_entry(source, arch)
        if "pretrain" in entry:
            return {"kind": "pretrain", "path": paths.pretrain_model(source, arch)}
        if "file" in entry:
            spec = {"kind": "file", "path": entry["file"].replace("{arch}", arch)}
            return {**spec, "allow_pickle": True} if entry.get("allow_pickle") else spec
        tag = entry["timm"]
        return {"kind": "timm", "arch": arch, "tag": None if tag is True else tag}

    def pretrain_spec(self, source: str, arch: str) -> dict:
        entry = self.source_entry(source, arch)["pretrain"]
        spec = {
            "source": source,
            "arch": arch,
            "arch_options": self.arch_options.get(arch, {}),
            "dataset": entry["dataset"],
            "cache": paths.dataset_cache(entry["dataset"]),
            "training": deep_merge(self.pretrain_defaults, entry.get("training")),
            "seed": 0,
            "out_dir": paths.pretrain_dir(source, arch),
        }
        # only when not the defaults, so supervised sources keep their spec hash (and results)
        method = entry.get("method", "supervised")
        if method != "supervised":
            spec["method"] = method
            spec["options"] = resolve_options(method, entry.get("options"), f"sources.{source}.pretrain")
        if entry.get("from"):
            spec["from"] = self.source_spec(entry["from"], arch)
        return spec

    def run_spec(self, run: Run) -> dict:
        init = self.init_spec(run.init)
        return {
            "run": run.id,
            "run_dir": paths.run_dir(run),
            "dataset": run.dataset,
            "cache": paths.dataset_cache(run.dataset),
            "arch": run.arch,
            "arch_options": self.arch_options.get(run.arch, {}),
            "init": init.as_dict(),
            "source": self.source_spec(init.source, run.arch) if init.source else None,
            "fraction": float(run.fraction),
            "seed": int(run.seed),
            "training": self.train,
            **({"members": self.member_specs(init, run.arch)} if init.fusion else {}),
            **({"dvme": self.dvme} if init.name == "DVME" else {}),
            # only for segmentation targets: every classification spec (and its hash) stays as it was
            **({"segmentation": self.segmentation,
                "training": {**self.train, "select_on": self.segmentation["select_on"]}}
               if self.is_segmentation_target(run.dataset) else {}),
        }

    def is_segmentation_target(self, dataset: str) -> bool:
        return dataset in self.segmentation_targets

    def classification_runs(self) -> list[Run]:
        """The single-backbone fine-tuning runs of classification targets (analyses that read a
        classifier's outputs or labels, not masks)."""
        return [run for run in self.single_backbone_runs() if not self.is_segmentation_target(run.dataset)]

    def member_specs(self, init: InitSpec, arch: str) -> list[dict]:
        """The backbones of a fusion run: each fused source's WT at its architecture."""
        return [{"source": source, "arch": member_arch, "arch_options": self.arch_options.get(member_arch, {}),
                 "weights": self.source_spec(source, member_arch)}
                for source, member_arch in fusion_members(init, arch)]

    # ---- frozen-feature protocols ------------------------------------------------------------

    def _feature_init(self, label: str) -> InitSpec:
        """The init whose features ``label`` names: one of the study's, or the WT of a fused source."""
        if label in self._init_by_label:
            return self._init_by_label[label]
        source = label.removeprefix("WT_")
        if label.startswith("WT_") and source in self.sources:
            return InitSpec("WT", source)
        raise ConfigError(f"init label {label!r} is not in the study")

    def feature_key(self, init_label: str, seed: int | str) -> str:
        """'shared' when the init's weights do not depend on the seed (WT of a whole source:
        its features are computed once), else 's{seed}' (RI, ST, partial transfers, Gabor)."""
        spec = self._feature_init(init_label)
        return "shared" if spec.name == "WT" and spec.k is None else f"s{int(seed)}"

    def features_path(self, run: Run) -> str | list[str]:
        """The features file of a run; for a fusion (DVME, CONCAT), one per fused source (their WT)."""
        spec = self.init_spec(run.init)
        if spec.fusion:
            return [paths.features(run.dataset, arch, f"WT_{source}", "shared")
                    for source, arch in fusion_members(spec, run.arch)]
        return paths.features(run.dataset, run.arch, run.init, self.feature_key(run.init, run.seed))

    def feature_jobs(self) -> list[str]:
        files: set[str] = set()
        for _, run in self.probe_runs:
            path = self.features_path(run)
            files.update(path if isinstance(path, list) else [path])
        return sorted(files)

    def features_spec(self, dataset: str, arch: str, init_label: str, key: str) -> dict:
        init = self._feature_init(init_label)
        return {
            "dataset": dataset,
            "cache": paths.dataset_cache(dataset),
            "arch": arch,
            "arch_options": self.arch_options.get(arch, {}),
            "init": init.as_dict(),
            "source": self.source_spec(init.source, arch) if init.source else None,
            "seed": 0 if key == "shared" else int(key.removeprefix("s")),
            "training": self.train,
            "out": paths.features(dataset, arch, init_label, key),
        }

    def probe_spec(self, protocol: str, run: Run) -> dict:
        if protocol not in FROZEN_PROTOCOLS:
            raise ConfigError(f"protocol {protocol!r} has no frozen-feature runs (those are: "
                              f"{', '.join(FROZEN_PROTOCOLS)})")
        return {
            "run": run.id,
            "protocol": protocol,
            "run_dir": paths.protocol_run_dir(protocol, run),
            "dataset": run.dataset,
            "arch": run.arch,
            "init": self.init_spec(run.init).as_dict(),
            "fraction": float(run.fraction),
            "seed": int(run.seed),
            "features": self.features_path(run),
            protocol: self.linear if protocol == "linear" else self.knn,
            **({"dvme": self.dvme} if self.init_spec(run.init).name == "DVME" else {}),
            # linear: {augment: true} trains through the frozen backbone: the job builds it
            **({"model": self.features_spec(run.dataset, run.arch, run.init, self.feature_key(run.init, run.seed))}
               if protocol == "linear" and self.linear.get("augment") and not self.init_spec(run.init).fusion
               else {}),
        }

    def activation_spec(self, run: Run) -> dict:
        """What the activations job needs: the run's model files, the probe set and pooling."""
        run_spec = self.run_spec(run)
        keys = ("probe_size", "probe_split", "probe_seed", "pool", "dtype")
        return {
            "run": run.id,
            "run_dir": paths.run_dir(run),
            "cache": run_spec["cache"],
            "arch": run.arch,
            "arch_options": run_spec["arch_options"],
            "init": run_spec["init"],
            "columns": run_columns(run_spec),
            "out": {state: paths.activations(run, state) for state in paths.STATES},
            "training": {k: self.train[k] for k in ("normalize", "image_size", "resize_mode", "eval_batch_size",
                                                    "max_memory_mb", "num_workers")},
            **{k: self.analysis[k] for k in keys},
        }

    def similarity_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """similarity(init, final) per block for every run of one (dataset, arch, fraction) group:
        one job per group rather than per run, because the measure is cheap and a job is not."""
        runs = self.run_groups()[(dataset, arch, paths.format_fraction(fraction))]
        return {
            "runs": [{"columns": self.run_columns(run),
                      "activations": {state: paths.activations(run, state) for state in paths.STATES}}
                     for run in runs],
            "measures": self.analysis["measures"],
            "out": paths.group_analysis("similarity_init_final", dataset, arch, fraction),
            **self._cca_subsample_spec(),
        }

    def groups(self) -> list[tuple[str, str, str]]:
        """Every (dataset, arch, fraction) group of runs."""
        return sorted(self.run_groups())

    def pair_groups(self) -> list[tuple[str, str, str]]:
        """(dataset, arch, fraction) groups that have block × block comparisons to make."""
        return sorted(self.run_groups()) if self.analysis["pairs"] else []

    def pairs_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """The comparisons of one group: every configured pair at every seed, and the noise floor
        of each init in a pair (consecutive seeds of the same init; needs two seeds or more)."""
        def activations_of(init: str, seed: int, state: str) -> str:
            return paths.activations(Run(dataset, arch, init, fraction, seed), state)

        comparisons, floors = [], set()
        for pair in self.analysis["pairs"]:
            state = pair.get("state", "final")
            name = f"{pair['a']} vs {pair['b']}" + _state_suffix(state)
            for seed in self.seeds:
                comparisons.append({"pair": name, "kind": "pair", "init_a": pair["a"], "seed_a": seed,
                                    "a": activations_of(pair["a"], seed, state), "init_b": pair["b"],
                                    "seed_b": seed, "b": activations_of(pair["b"], seed, state),
                                    **_state_key(state)})
            floors |= {(pair["a"], state), (pair["b"], state)}
        for init, state in sorted(floors):
            for seed_a, seed_b in zip(self.seeds, self.seeds[1:]):
                comparisons.append({"pair": f"{init} vs {init}" + _state_suffix(state), "kind": "noise_floor",
                                    "init_a": init, "seed_a": seed_a, "a": activations_of(init, seed_a, state),
                                    "init_b": init, "seed_b": seed_b, "b": activations_of(init, seed_b, state),
                                    **_state_key(state)})
        return {"dataset": dataset, "arch": arch, "fraction": float(fraction), "measures": self.analysis["measures"],
                "comparisons": comparisons, "out": paths.group_analysis("similarity_pairs", dataset, arch, fraction),
                **self._cca_subsample_spec()}

    def run_columns(self, run: Run) -> dict:
        """The columns that identify a run in every tidy CSV."""
        return run_columns(self.run_spec(run))

    def figure_names(self) -> list[str]:
        """The figures this study can draw (e.g. the k sweep only when a WT-ST/WT-RI init is in it)."""
        names = ["protocols"] if set(self.protocols) & set(FROZEN_PROTOCOLS) else []
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

    def check_architectures(self) -> None:
        """Raise ConfigError for a name in ``study.architectures`` or ``architectures:`` that is
        neither one of ours nor a timm model. Separate from ``__init__`` because it imports timm
        (seconds): the Snakefile calls it once, in the main process, not in every cluster job."""
        from medtransfer.models import is_known_arch
        from medtransfer.models.factory import unknown_arch_message

        named = [(f"study.architectures[{i}]", arch) for i, arch in enumerate(self.architectures)]
        named += [(f"architectures.{arch}", arch) for arch in self.arch_options]
        named += [(f"study.inits ({spec.label})", arch) for spec in self.inits if spec.fusion
                  for arch in sorted({a for _, a in fusion_members(spec, "")} - {""})]
        for key, arch in named:
            if not is_known_arch(arch):
                raise ConfigError(f"config key {key}: {unknown_arch_message(arch)}")
        self._check_fid_features()

    def check_dataset_entries(self) -> None:
        """Raise ConfigError for a dataset entry its format would reject before reading a file: an
        unknown ``format`` or ``resize``, a key the format requires (``size`` of an image folder,
        ``flag`` of MedMNIST, ...), a value it rejects (:func:`medtransfer.data.formats.check_entry`,
        the check the preprocess job runs first, so the message is the job's). Every entry under
        ``datasets:``, used or not. Imports the dataset formats (torch): the Snakefile calls it in
        the main process, with :meth:`check_architectures`."""
        from medtransfer.data import check_entry

        for name, entry in self.datasets.items():
            check_entry(name, entry)

    def resources_for(self, rule: str, arch: str | None = None, dataset: str | None = None) -> dict[str, int]:
        """threads, mem_mb and runtime of a rule's job; ``by_arch`` and ``by_dataset`` entries
        in the config (e.g. ``finetune: {runtime: 60, by_arch: {resnet50: {runtime: 600}}}``)
        override the rule's values for that architecture or dataset (the dataset wins)."""
        entry = self.resources[rule]
        values = {k: v for k, v in entry.items() if k in ("threads", "mem_mb", "runtime")}
        if arch is not None:
            values.update((entry.get("by_arch") or {}).get(arch, {}))
        if dataset is not None:
            values.update((entry.get("by_dataset") or {}).get(dataset, {}))
        return values

    # ---- feature-reuse analyses (weight drift, re-initialisation, layer-wise k-NN, filters) ------

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
        return [run for run in self.single_backbone_runs() if (run.dataset, run.arch, run.fraction, run.seed)
                == (cell["dataset"], cell["arch"], cell["fraction"], cell["seed"])]

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
    # ---- cross-run feature-reuse analyses (workflow/rules/domain.smk) --------------------------

    def _check_domain_analyses(self) -> None:
        """Cross-references of analysis.fid / prediction_similarity / representation_gain /
        cca_subsample the schema cannot check (types and ranges are the schema's)."""
        fid = self.analysis.get("fid")
        if fid:
            arch = fid.get("arch")
            if arch is not None and fid["features"] in self.sources and arch not in self.architectures:
                raise ConfigError(f"config key analysis.fid.arch: {arch!r} is not in study.architectures "
                                  f"({', '.join(self.architectures)})")
            for source, dataset in (fid.get("source_datasets") or {}).items():
                if source not in self.sources:
                    raise ConfigError(f"config key analysis.fid.source_datasets.{source}: not a source under "
                                      f"`sources:` (defined: {', '.join(self.sources) or 'none'})")
                self._check_dataset(dataset, f"analysis.fid.source_datasets.{source}")
        for key in ("fid", "representation_gain"):
            metric = (self.analysis.get(key) or {}).get("metric")
            if metric is not None and metric not in GAIN_METRICS:
                raise ConfigError(f"config key analysis.{key}.metric: {metric!r}; allowed: {', '.join(GAIN_METRICS)}")
        subsample = self.analysis.get("cca_subsample")
        if subsample and not set(self.analysis["measures"]) & set(CCA_MEASURES):
            raise ConfigError("config key analysis.cca_subsample: it subsamples the CCA measures "
                              f"({', '.join(CCA_MEASURES)}), but analysis.measures has none of them")

    def _check_fid_features(self) -> None:
        """analysis.fid.features names a study source or a timm model (imports timm: called from
        :meth:`check_architectures`, in the main process only)."""
        fid = self.analysis.get("fid")
        if not fid or fid["features"] in self.sources:
            return
        import timm

        if not timm.is_model(fid["features"]):
            raise ConfigError(f"config key analysis.fid.features: {fid['features']!r} is neither a source of the study "
                              f"({', '.join(self.sources) or 'none defined'}) nor a timm model name "
                              "(e.g. inception_v3)")

    def _enabled(self, key: str) -> dict:
        """The options of ``analysis.<key>``; a ConfigError when the config turned it off."""
        options = self.analysis.get(key)
        if not options:
            raise ConfigError(f"config key analysis.{key} is false: this analysis is off in the study; "
                              f"remove the key (or give its options) to produce it")
        return options

    def fid_weights_warning(self) -> str | None:
        """Why the FID jobs will fail, known at plan time: the timm embedder's weights are not cached
        and offline mode is set (None when they will not fail for that reason). Imports timm."""
        fid = self.analysis.get("fid")
        if not self.fid_pairs() or fid["features"] in self.sources or fid.get("file"):
            return None
        from medtransfer.models.weights import IMAGENET_WEIGHTS, _offline_flag, timm_weights_file

        if not _offline_flag():  # online, the job downloads them
            return None
        name = fid["features"] if "." in fid["features"] else IMAGENET_WEIGHTS.get(fid["features"], fid["features"])
        try:
            timm_weights_file(name)  # offline: looks in the cache only
        except MedtransferError as error:
            sources = ", ".join(self.sources) or "none defined"
            return (f"analysis.fid.features: {fid['features']!r} needs the timm weights {name!r}, which are not cached, "
                    f"and offline mode is set, so the fid_stats jobs will fail ({str(error).split('. ')[0]}). Set analysis.fid.features to "
                    f"one of the study's sources ({sources}) to embed offline, give analysis.fid.file, or set "
                    "analysis.fid: false")
        return None

    def _cca_subsample_spec(self) -> dict:
        subsample = self.analysis.get("cca_subsample")
        return {"cca_subsample": {"seed": 0, **subsample}} if subsample else {}

    def fid_embedder_spec(self) -> dict:
        """What embeds the images for FID: a timm model with ImageNet weights, or a study source's
        pretrained backbone (``analysis.fid.arch``, default the study's first architecture), with
        the normalisation and input size its weights were trained with."""
        fid = self._enabled("fid")
        features = fid["features"]
        if features not in self.sources:
            return {"kind": "timm", "name": features, "file": fid.get("file"), "label": features}
        arch = fid.get("arch") or self.architectures[0]
        entry = self.source_entry(features, arch)
        spec = {"kind": "source", "label": f"{features}@{arch}", "arch": arch,
                "arch_options": self.arch_options.get(arch, {}), "init": InitSpec("WT", features).as_dict(),
                "source": self.source_spec(features, arch), "normalize": "imagenet", "normalize_cache": None,
                "image_size": self.train["image_size"] or 224}
        if "pretrain" in entry:
            training = self.pretrain_spec(features, arch)["training"]
            spec.update(normalize=training["normalize"], normalize_cache=paths.dataset_cache(entry["pretrain"]["dataset"]),
                        image_size=training["image_size"])
        return spec

    def fid_embedder(self) -> str:
        """The embedder's label, the ``{embedder}`` of :func:`medtransfer.paths.fid_stats`."""
        return self.fid_embedder_spec()["label"]

    def source_datasets(self) -> dict[str, dict[str, str]]:
        """{source: {arch: the dataset it was pretrained on}} for the sources the study's inits
        transfer from (``analysis.fid.source_datasets`` names one for timm/file sources)."""
        named = (self.analysis.get("fid") or {}).get("source_datasets") or {}
        out: dict[str, dict[str, str]] = {}
        for source, arch in self._transferred_sources():
            entry = self.source_entry(source, arch)
            dataset = entry["pretrain"]["dataset"] if "pretrain" in entry else named.get(source)
            if dataset is not None:
                out.setdefault(source, {})[arch] = dataset
        return out

    def _transferred_sources(self) -> list[tuple[str, str]]:
        """(source, architecture) of every backbone the study's inits transfer, fused members at
        their own architecture ("name@arch")."""
        pairs = []
        for spec in self.inits:
            for arch in spec.architectures or self.architectures:
                pairs += ([(spec.source, arch)] if spec.source else []) + fusion_members(spec, arch)
        return pairs

    def fid_pairs(self) -> list[dict]:
        """(source, source dataset, target) pairs whose FID the study reports; empty when
        ``analysis.fid`` is false or there are no fine-tuning runs."""
        if not self.analysis.get("fid") or not self.runs:
            return []
        targets = sorted({run.dataset for run in self.runs})
        pairs = {(source, dataset, target) for source, by_arch in self.source_datasets().items()
                 for dataset in by_arch.values() for target in targets}
        return [{"source": s, "source_dataset": d, "target": t} for s, d, t in sorted(pairs)]

    def fid_skipped_sources(self) -> list[str]:
        """Sources of the study's inits without a dataset to measure (timm/file weights not named in
        ``analysis.fid.source_datasets``): the reason is logged by the domain_distance job."""
        used = {source for source, _ in self._transferred_sources()}
        return sorted(used - set(self.source_datasets()))

    def fid_stats_jobs(self) -> list[str]:
        embedder = self.fid_embedder() if self.fid_pairs() else None
        datasets = {p[side] for p in self.fid_pairs() for side in ("source_dataset", "target")}
        return [paths.fid_stats(embedder, dataset) for dataset in sorted(datasets)]

    def fid_stats_spec(self, embedder: str, dataset: str) -> dict:
        if embedder != self.fid_embedder():
            raise ConfigError(f"FID embedder {embedder!r} is not the study's ({self.fid_embedder()!r}, from "
                              "analysis.fid.features)")
        fid = self._enabled("fid")
        return {"dataset": dataset, "cache": paths.dataset_cache(dataset), "split": fid["split"],
                "max_images": fid["max_images"], "seed": 0, "size": fid["size"], "batch_size": fid["batch_size"],
                "max_memory_mb": self.train["max_memory_mb"], "num_workers": self.train["num_workers"],
                "embedder": self.fid_embedder_spec(), "out": paths.fid_stats(embedder, dataset)}

    def domain_distance_spec(self) -> dict:
        embedder = self.fid_embedder()
        pairs = [{**pair, "source_stats": paths.fid_stats(embedder, pair["source_dataset"]),
                  "target_stats": paths.fid_stats(embedder, pair["target"])} for pair in self.fid_pairs()]
        return {"pairs": pairs, "skipped_sources": self.fid_skipped_sources(),
                "out": paths.analysis_table("domain_distance")}

    def fid_gain_spec(self) -> dict:
        return {"domain_distance": paths.analysis_table("domain_distance"), "metrics": paths.analysis_table("metrics"),
                "metric": self._enabled("fid")["metric"], "source_datasets": self.source_datasets(),
                "out": paths.analysis_table("fid_gain")}

    def prediction_groups(self) -> list[tuple[str, str, str]]:
        """(dataset, arch, fraction) groups whose runs' predictions are compared."""
        if not self.analysis.get("prediction_similarity"):
            return []
        return sorted({(run.dataset, run.arch, run.fraction) for run in self.classification_runs()})

    def prediction_similarity_spec(self, dataset: str, arch: str, fraction: str) -> dict:
        """Pairs of runs of one group: every two inits at the same seed (kind ``inits``) and two
        consecutive seeds of each init (kind ``seeds``, the noise floor). Fusions are left out."""
        options = self._enabled("prediction_similarity")
        runs = [run for run in self.run_groups()[(dataset, arch, paths.format_fraction(fraction))]
                if not self.init_spec(run.init).fusion]
        inits = [spec.label for spec in self.inits if any(run.init == spec.label for run in runs)]

        def side(init: str, seed: int) -> dict:
            run = Run(dataset, arch, init, paths.format_fraction(fraction), seed)
            return {"run": run.id, "predictions": paths.run_file(run, "predictions.h5"),
                    "columns": self.run_columns(run)}

        # runs listed once, comparisons by run id: the spec is one command-line argument, and a
        # big grid's pairs would pass the kernel's 128 KB limit if each repeated its runs' records
        records = {record["run"]: record for record in (side(run.init, run.seed) for run in runs)}
        comparisons = [{"kind": "inits", "a": side(a, seed)["run"], "b": side(b, seed)["run"]}
                       for seed in self.seeds for i, a in enumerate(inits) for b in inits[i + 1:]]
        comparisons += [{"kind": "seeds", "a": side(init, s)["run"], "b": side(init, t)["run"]}
                        for init in inits for s, t in zip(self.seeds, self.seeds[1:])]
        return {"split": options["split"], "runs": records, "comparisons": comparisons,
                "out": paths.group_analysis("prediction_similarity", dataset, arch, fraction)}

    def representation_gain_spec(self) -> dict:
        options = self._enabled("representation_gain")
        return {"similarity": paths.analysis_table("similarity_init_final"), "metrics": paths.analysis_table("metrics"),
                "metric": options["metric"], "include_ri": bool(options.get("include_ri")),
                "out": paths.analysis_table("representation_gain"),
                "out_runs": paths.analysis_table("representation_gain_runs")}

    def domain_tables(self) -> list[str]:
        """The tidy CSVs of the cross-run analyses this study produces (final targets)."""
        tables = []
        if self.fid_pairs():
            tables += [paths.analysis_table("domain_distance"), paths.analysis_table("fid_gain")]
        if self.prediction_groups():
            tables.append(paths.analysis_table("prediction_similarity"))
        if self.analysis.get("representation_gain") and self.runs and self.analysis["measures"]:
            tables += [paths.analysis_table("representation_gain"), paths.analysis_table("representation_gain_runs")]
        return tables

    def domain_figure_names(self) -> list[str]:
        tables = self.domain_tables()
        names = ["fid_gain", "fid_st_share"] if paths.analysis_table("fid_gain") in tables else []
        if paths.analysis_table("prediction_similarity") in tables:
            names.append("prediction_similarity")
        if paths.analysis_table("representation_gain") in tables:
            names.append("representation_gain")
        return names


#: metrics.csv columns a gain over RI can be measured in
GAIN_METRICS = ("test_auc", "test_acc", "test_kappa", "test_balanced_acc")
#: the similarity measures analysis.cca_subsample applies to
CCA_MEASURES = ("cca_mean", "svcca", "pwcca")


def _state_suffix(state: str) -> str:
    """Pairs of the final states keep their names (and CSV rows) of before ``state`` existed."""
    return "" if state == "final" else f" ({state})"


def _state_key(state: str) -> dict:
    return {} if state == "final" else {"state": state}
