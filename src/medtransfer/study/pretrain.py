"""Planning the pretraining stage (workflow/rules/pretrain.smk): which (source, architecture)
pairs the workflow pretrains itself, their job specs, and the checks of ``sources:``."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.augmentation import check_training_views
from medtransfer.errors import ConfigError
from medtransfer.study.config import CLASSIFICATION_MONITORS, check_optimisation, merge_training, monitors_of, processes_per_job
from medtransfer.study.core import _merged, fusion_members
from medtransfer.study.data import is_segmentation
from medtransfer.training.ssl.options import resolve_options


# A source's input transforms (medtransfer.data.input_transform; tests/test_source_config.py keeps
# the names equal to the loader's, which imports torch).
PREPROCESS_NAMES = ("imagenet", "caffe", "unit")


def _check_preprocess(value: object, key: str) -> None:
    """ConfigError naming ``key`` unless ``value`` is a named input transform or {mean, std[, bgr]}."""
    def numbers(v: object, positive: bool = False) -> bool:
        values = v if isinstance(v, list) else [v]
        return bool(values) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and (x > 0 or not positive)
                                    for x in values) and len(values) in (1, 3)
    if isinstance(value, str) and value in PREPROCESS_NAMES:
        return
    if (isinstance(value, dict) and set(value) <= {"mean", "std", "bgr"} and {"mean", "std"} <= set(value)
            and numbers(value["mean"]) and numbers(value["std"], positive=True)
            and isinstance(value.get("bgr", False), bool)):
        return
    raise ConfigError(f"config key {key}: {value!r}; allowed: {', '.join(PREPROCESS_NAMES)} or {{mean, std, bgr}} "
                      "(mean and std one value or one per channel in 0-1 units, std > 0; bgr true or false)")


class PretrainPlan:
    """The pretraining stage of :class:`medtransfer.study.Study`."""

    def _check_sources(self) -> None:
        """Every pretraining entry under ``sources:`` (per architecture too), and no cycle of ``from``."""
        for name, source in self.sources.items():
            entries = [(f"sources.{name}", source)]
            entries += [(f"sources.{name}.per_arch.{arch}", o) for arch, o in (source.get("per_arch") or {}).items()]
            for key, entry in entries:
                if "pretrain" in entry:
                    self._check_pretrain(entry["pretrain"], f"{key}.pretrain")
                if entry.get("preprocess") is not None:
                    _check_preprocess(entry["preprocess"], f"{key}.preprocess")
        self._check_from_cycles()

    def _check_pretrain(self, entry: dict, key: str) -> None:
        self._check_dataset(entry["dataset"], f"{key}.dataset")
        if is_segmentation(self.datasets[entry["dataset"]]):
            raise ConfigError(f"config key {key}.dataset: {entry['dataset']!r} is a segmentation dataset (its "
                              "targets are masks); pretrain on its images as an image folder instead "
                              "({format: imagefolder, labels: false} for the self-supervised methods)")
        training = merge_training(self.pretrain_defaults, entry.get("training"))
        processes_per_job(training, f"{key}.training")
        check_optimisation(training, f"{key}.training")
        check_training_views(training, f"{key}.training")
        method = entry.get("method", "supervised")
        monitors = monitors_of(training)
        if method != "supervised" and monitors:
            where, monitor = next(iter(monitors.items()))
            raise ConfigError(f"config key {key}.training.{where}: {monitor!r}, but {method} pretraining has no "
                              "validation metric to monitor (the train: and pretrain: sections reach it); set "
                              "early_stopping: null and a schedule without a monitor under pretrain: (every "
                              f"source) or {key}.training (this one)")
        for where, monitor in monitors.items():
            if monitor not in CLASSIFICATION_MONITORS:
                raise ConfigError(f"config key {key}.training.{where}: {monitor!r} is not a metric of supervised "
                                  f"pretraining (a classification); allowed: {', '.join(CLASSIFICATION_MONITORS)}")
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

    def pretrain_training(self, source: str, arch: str) -> dict:
        """The ``training`` of the pretraining of ``source`` at ``arch``: ``pretrain`` (over
        ``train``), then ``pretrain.by_arch[arch]``, ``pretrain.by_dataset[its dataset]`` and the
        entry's own ``training`` merged over it, in that order."""
        entry = self.source_entry(source, arch)["pretrain"]
        return merge_training(_merged(self.pretrain_defaults, self.pretrain_by, entry["dataset"], arch), entry.get("training"))

    def _check_pretrain_overrides(self) -> None:
        """Every pretraining job's merged training passes the checks of a training section."""
        if not self.pretrain_by:
            return
        for source, arch in self.pretrain_jobs():
            dataset = self.source_entry(source, arch)["pretrain"]["dataset"]
            self._check_training(self.pretrain_training(source, arch), "pretrain", self.pretrain_by, dataset, arch)

    def source_uses(self) -> list[tuple[str, str]]:
        """Every (source, arch) whose weights some job reads: the sources of the inits (and of
        their fusions) at each architecture, the sources they continue pretraining from, and the
        source that embeds the images for FID."""
        used = set()
        for spec in self.inits:
            for arch in spec.architectures or self.architectures:
                for source, source_arch in ([(spec.source, arch)] if spec.source else []) + fusion_members(spec, arch):
                    while source is not None and (source, source_arch) not in used:
                        used.add((source, source_arch))
                        source = self._from_of(source, source_arch)
        fid = self.analysis.get("fid")
        if fid and self.fid_pairs() and fid["features"] in self.sources:
            used.add((fid["features"], fid.get("arch") or self.architectures[0]))
        return sorted(used)

    def check_source_files(self) -> None:
        """Raise ConfigError for a ``file:`` source whose weights file is not there, naming the
        key, the source, the architecture and the path (relative paths are read from the working
        directory): else every job that reads it would fail, on a cluster after queueing. The file
        is also an input of those jobs (workflow/rules/common.smk), so replacing it reruns them.
        Touches the file system: the Snakefile calls it in the main process, as
        :meth:`check_dataset_entries`."""
        import os
        from pathlib import Path

        for source, arch in self.source_uses():
            entry = self.source_entry(source, arch)
            if "file" not in entry:
                continue
            path = self.source_spec(source, arch)["path"]
            if not Path(path).is_file():
                override = arch in (self.sources[source].get("per_arch") or {})
                key = f"sources.{source}" + (f".per_arch.{arch}" if override else "") + ".file"
                where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
                raise ConfigError(
                    f"config key {key}: the weights file {path!r} of source {source!r} for architecture "
                    f"{arch!r} does not exist{where}; check the path (a '{{arch}}' in it is replaced by "
                    "the architecture name) or put the file there"
                )

    def pretrain_spec(self, source: str, arch: str) -> dict:
        entry = self.source_entry(source, arch)["pretrain"]
        spec = {
            "source": source,
            "arch": arch,
            "arch_options": self.arch_options.get(arch, {}),
            "dataset": entry["dataset"],
            "cache": paths.dataset_cache(entry["dataset"]),
            "training": self.pretrain_training(source, arch),
            "seed": 0,
            "out_dir": paths.pretrain_dir(source, arch),
            **self.preprocess_spec_of(source, arch),  # the source's input transform, also while it is trained
        }
        # only when not the defaults, so supervised sources keep their spec hash (and results)
        method = entry.get("method", "supervised")
        if method != "supervised":
            spec["method"] = method
            spec["options"] = resolve_options(method, entry.get("options"), f"sources.{source}.pretrain")
        if entry.get("from"):
            spec["from"] = self.source_spec(entry["from"], arch)
        return spec
