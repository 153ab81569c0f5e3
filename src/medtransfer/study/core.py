"""The grid core: the config's inits expanded, the cells and runs of the grid, the sources, and
what every stage asks of a run (its spec, its columns, the resources of its rule).

The stage modules beside this one (data, pretrain, finetune, ...) add the checks and job specs
of one stage each; :class:`medtransfer.study.Study` composes them.

Init labels (the ``{init}`` path component) are built from the config entry:
``RI``, ``Gabor``, ``WT_<source>``, ``ST_<source>``, ``WT-ST_<source>_k<k>``,
``WT-RI_<source>_k<k>`` and ``..._slim<factor>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

from medtransfer import paths
from medtransfer.augmentation import check_training_views
from medtransfer.columns import run_columns
from medtransfer.errors import ConfigError
from medtransfer.init.registry import INIT_OPTIONS, INITS_WITH_K, INITS_WITH_SOURCE, INITS_WITHOUT_SOURCE, reads_source
from medtransfer.paths import Run
from medtransfer.protocols import FROZEN_PROTOCOLS, LPFT_DEFAULTS
from medtransfer.study.config import (BY_KEYS, _check_milestones, check_optimisation, deep_merge, merge_training,
                                      processes_per_job, split_overrides)
from medtransfer.study.defaults import (
    DEFAULT_ANALYSIS,
    DEFAULT_RESOURCES,
    DEFAULT_TRAINING,
)

# Fusions of several sources (Truong et al. 2021): DVME (projection + self-attention across
# sources) and plain concatenation, its baseline; evaluated with the linear protocol on frozen
# features and, with `finetune: true` in the init entry, fine-tuned end to end. A fused source is
# a source name (at the run's architecture) or `name@arch` (that source at another architecture).
FUSION_INITS = ("DVME", "CONCAT")
FUSION_OPTIONS = ("finetune",)


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
    # The init's traits say whether it reads a source: required (WT, ST, ...), optional (Gabor's
    # filter ranges fitted to the source's first conv) or never (RI), so no source is dropped.
    source = entry[name]
    if name in INITS_WITH_SOURCE and not isinstance(source, str):
        raise ConfigError(f"config key {key}.{name}: give the name of a source from `sources:`")
    if source is not None and not reads_source(name):
        raise ConfigError(f"config key {key}.{name}: {name} takes no source, got {source!r}; write {name} "
                          "(or {" + name + ": null} with options)")
    if source is not None and not isinstance(source, str):
        raise ConfigError(f"config key {key}.{name}: give the name of a source from `sources:` or null, got {source!r}")
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


def check_size(value: float, index: int) -> float:
    """A ``study.fractions`` entry: a fraction in (0, 1] or a whole number (> 1) of training images.
    (The data stage checks the same in :func:`medtransfer.data.fractions.check_size`; the planner
    does not import it, because :mod:`medtransfer.data` imports torch.)"""
    number = float(value)
    if not (0.0 < number <= 1.0 or (number > 1.0 and number == int(number))):
        raise ConfigError(f"config key study.fractions[{index}]: {value!r} is neither a fraction in (0, 1] nor a "
                          "whole number of training images (> 1, e.g. 5000)")
    return number


def fusion_members(spec: InitSpec, arch: str) -> list[tuple[str, str]]:
    """(source, architecture) of every backbone a fusion init fuses, from its entries ("name" or
    "name@arch"): ``arch`` (the run's) where an entry names none; none for any other init."""
    return [(name, member_arch or arch)
            for name, _, member_arch in (member.partition("@") for member in spec.sources or ())]


def _merged(training: dict, by: dict, dataset: str, arch: str) -> dict:
    """``training`` with ``by["by_arch"][arch]`` and then ``by["by_dataset"][dataset]`` merged over
    it; ``training`` itself (the same object) where neither names them."""
    overrides = [o for o in ((by.get("by_arch") or {}).get(arch), (by.get("by_dataset") or {}).get(dataset)) if o]
    for override in overrides:
        training = merge_training(training, override)
    return training


def launcher(processes: int) -> str:
    """The command that starts ``medtransfer`` for a job of ``processes`` processes: the CLI itself
    for one, PyTorch's ``torchrun`` (one node, ``processes`` workers, a free rendezvous port) for
    more; the rules put the sub-command after it."""
    if processes <= 1:
        return "medtransfer"
    return f"torchrun --standalone --nproc_per_node {int(processes)} -m medtransfer.cli"


@dataclass
class Core:
    """The expanded grid of a config: its sections with their defaults, inits, cells and runs."""

    config: dict
    inits: list[InitSpec] = field(init=False)
    runs: list[Run] = field(init=False)

    def _read_sections(self) -> None:
        """The config's sections with their defaults merged in; the training sections checked."""
        config = self.config
        self.datasets: dict[str, dict] = config["datasets"]
        self.sources: dict[str, dict] = config.get("sources") or {}
        # train.by_dataset / by_arch (and pretrain's): merged over the section per job
        # (training_for, pretrain_training), never part of a job's training dict
        train, self.train_by = split_overrides(config.get("train"), "train")
        pretrain, self.pretrain_by = split_overrides(config.get("pretrain"), "pretrain")
        self.train = merge_training(DEFAULT_TRAINING, train)
        self.pretrain_defaults = merge_training(self.train, pretrain)
        #: the lpft protocol's first phase (the head on the frozen backbone): `lpft:` over `train:`
        self.lpft = merge_training(deep_merge(self.train, LPFT_DEFAULTS), config.get("lpft"))
        self.analysis = deep_merge(DEFAULT_ANALYSIS, config.get("analysis"))
        self.arch_options: dict[str, dict] = config.get("architectures") or {}
        self.resources = deep_merge(DEFAULT_RESOURCES, config.get("resources"))
        for key, training in (("train", self.train), ("pretrain", self.pretrain_defaults), ("lpft", self.lpft)):
            _check_milestones(training["schedule"].get("milestones", []), f"{key}.schedule.milestones")
            processes_per_job(training, key)
            check_optimisation(training, key)
            check_training_views(training, key)

    def training_for(self, dataset: str, arch: str) -> dict:
        """The ``training`` of a job on ``dataset`` with ``arch``: ``train`` with
        ``train.by_arch[arch]`` and then ``train.by_dataset[dataset]`` merged over it (the dataset
        wins); ``train`` itself where neither names them, so those specs stay as they were."""
        return _merged(self.train, self.train_by, dataset, arch)

    def _check_training_overrides(self) -> None:
        """``train.by_dataset`` names targets, ``train.by_arch`` architectures of the study (and
        ``pretrain.by_*`` datasets that sources pretrain on, architectures they are pretrained
        at); every merged section passes the checks of ``train``."""
        targets = list(self.config["study"]["targets"])
        pretrained = sorted({entry["pretrain"]["dataset"] for name in self.sources
                             for entry in [self.sources[name], *(self.sources[name].get("per_arch") or {}).values()]
                             if "pretrain" in entry})
        member_archs = sorted({a for spec in self.inits for _, a in fusion_members(spec, "")} - {""})
        allowed = {("train", "by_dataset"): (targets, "a target of the study (study.targets)"),
                   ("train", "by_arch"): (self.architectures, "an architecture of the study (study.architectures)"),
                   ("pretrain", "by_dataset"): (pretrained, "a dataset a source pretrains on (sources.*.pretrain.dataset)"),
                   ("pretrain", "by_arch"): ([*self.architectures, *member_archs],
                                             "an architecture of the study (study.architectures, fused sources)")}
        for section, by in (("train", self.train_by), ("pretrain", self.pretrain_by)):
            for key in BY_KEYS:
                names, what = allowed[(section, key)]
                for name in by.get(key, {}):
                    if name not in names:
                        raise ConfigError(f"config key {section}.{key}.{name}: {name!r} is not {what}; "
                                          f"allowed: {', '.join(names) or 'none'}")
        for dataset, arch in product(targets, self.architectures):
            self._check_training(self.training_for(dataset, arch), "train", self.train_by, dataset, arch)
        self._check_pretrain_overrides()

    @staticmethod
    def _check_training(training: dict, section: str, by: dict, dataset: str, arch: str) -> None:
        """The checks of a training section on a merged one, named after the override that made it."""
        if dataset in by.get("by_dataset", {}):
            section = f"{section}.by_dataset.{dataset}"
        elif arch in by.get("by_arch", {}):
            section = f"{section}.by_arch.{arch}"
        else:
            return  # the section itself: checked in _read_sections
        _check_milestones(training["schedule"].get("milestones", []), f"{section}.schedule.milestones")
        processes_per_job(training, section)
        check_optimisation(training, section)
        check_training_views(training, section)

    def _expand_inits(self) -> None:
        """``study.inits`` expanded (a k sweep is one init per k) and checked against the sources
        and architectures; the grid's architectures, fractions and seeds."""
        study = self.config["study"]
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
        self.fractions = [paths.format_fraction(check_size(f, i)) for i, f in enumerate(study["fractions"])]
        if len(set(self.fractions)) != len(self.fractions):
            raise ConfigError(f"config key study.fractions: a size appears twice ({study['fractions']})")
        self.seeds: list[int] = list(study["seeds"])
        #: the cross-validation folds (``study.folds``); [None] for a study without folds
        self.folds: list[int | None] = list(study["folds"]) if study.get("folds") is not None else [None]
        #: (seed, fold) of every repetition of a cell: seeds × folds
        self.replicates: list[tuple[int, int | None]] = [(seed, fold) for seed in self.seeds for fold in self.folds]
        for spec in self.inits:
            for arch in spec.architectures or ():
                if arch not in self.architectures:
                    raise ConfigError(f"config key study.inits: init {spec.label} names architecture {arch!r}, "
                                      f"which is not in study.architectures")
        self._init_by_label = {spec.label: spec for spec in self.inits}

    def _expand_cells(self) -> None:
        """Every cell of the grid; the fine-tuning runs and the frozen-feature protocol runs of
        them (after the protocols' own checks)."""
        study = self.config["study"]
        #: every cell of the grid, whatever the protocol
        self.cells = [
            Run(dataset, arch, spec.label, fraction, seed, fold)
            for dataset, arch, spec, fraction, (seed, fold) in product(
                study["targets"], self.architectures, self.inits, self.fractions, self.replicates
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
        #: the lpft protocol's runs (a head on one frozen backbone, then all of it: no fusions)
        self.lpft_runs = ([run for run in self.cells if run.init not in fused] if "lpft" in self.protocols else [])

    def _check_dataset(self, name: str, key: str) -> None:
        if name not in self.datasets:
            raise ConfigError(
                f"config key {key}: dataset {name!r} is not under `datasets:` "
                f"(defined: {', '.join(self.datasets)})"
            )

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

    def groups(self) -> list[tuple[str, str, str]]:
        """Every (dataset, arch, fraction) group of runs."""
        return sorted(self.run_groups())

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

    def run_spec(self, run: Run) -> dict:
        init = self.init_spec(run.init)
        training = self.training_for(run.dataset, run.arch)
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
            # only for cross-validated runs: every other spec (and its hash) stays as it was
            **({"fold": int(run.fold)} if run.fold is not None else {}),
            "training": training,
            **self.preprocess_spec_of(init.source, run.arch),
            **({"members": self.member_specs(init, run.arch)} if init.fusion else {}),
            **({"dvme": self.dvme} if init.name == "DVME" else {}),
            # only for segmentation targets: every classification spec (and its hash) stays as it was
            **({"segmentation": self.segmentation,
                "training": {**training, "select_on": self.segmentation["select_on"]}}
               if self.is_segmentation_target(run.dataset) else {}),
        }

    def preprocess_spec_of(self, source: str | None, arch: str) -> dict:
        """``{"preprocess": ...}`` where ``source`` at ``arch`` has a ``preprocess`` (its input
        transform replaces ``train.normalize`` in every job that reads it:
        :func:`medtransfer.training.stage.spec_normalize`); else nothing, so those specs stay as they were."""
        preprocess = self.source_entry(source, arch).get("preprocess") if source is not None else None
        return {"preprocess": preprocess} if preprocess is not None else {}

    def member_specs(self, init: InitSpec, arch: str) -> list[dict]:
        """The backbones of a fusion run: each fused source's WT at its architecture."""
        return [{"source": source, "arch": member_arch, "arch_options": self.arch_options.get(member_arch, {}),
                 "weights": self.source_spec(source, member_arch), **self.preprocess_spec_of(source, member_arch)}
                for source, member_arch in fusion_members(init, arch)]

    def run_columns(self, run: Run) -> dict:
        """The columns that identify a run in every tidy CSV."""
        return run_columns(self.run_spec(run))

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
