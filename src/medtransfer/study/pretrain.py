"""Planning the pretraining stage (workflow/rules/pretrain.smk): which (source, architecture)
pairs the workflow pretrains itself, their job specs, and the checks of ``sources:``."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.augmentation import check_training_views
from medtransfer.errors import ConfigError
from medtransfer.study.config import deep_merge, processes_per_job
from medtransfer.study.core import fusion_members
from medtransfer.study.data import is_segmentation
from medtransfer.training.ssl.options import resolve_options


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
        self._check_from_cycles()

    def _check_pretrain(self, entry: dict, key: str) -> None:
        self._check_dataset(entry["dataset"], f"{key}.dataset")
        if is_segmentation(self.datasets[entry["dataset"]]):
            raise ConfigError(f"config key {key}.dataset: {entry['dataset']!r} is a segmentation dataset (its "
                              "targets are masks); pretrain on its images as an image folder instead "
                              "({format: imagefolder, labels: false} for the self-supervised methods)")
        training = deep_merge(self.pretrain_defaults, entry.get("training"))
        processes_per_job(training, f"{key}.training")
        check_training_views(training, f"{key}.training")
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
