"""Planning the frozen-feature protocols (workflow/rules/protocols.smk): the protocol names and
options, the features each init needs (once per dataset, architecture and init, or per seed), and
the probe jobs' specs."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.errors import ConfigError
from medtransfer.paths import Run
from medtransfer.protocols import (
    DVME_DEFAULTS,
    FROZEN_PROTOCOLS,
    KNN_DEFAULTS,
    LINEAR_DEFAULTS,
    LPFT_DEFAULTS,
    PROTOCOLS,
)
from medtransfer.study.config import deep_merge, merge_training
from medtransfer.study.core import InitSpec, fusion_members


class ProtocolsPlan:
    """The frozen-feature protocols of :class:`medtransfer.study.Study`."""

    def _check_protocols(self) -> None:
        """``study.protocols`` (default: fine-tuning only) checked; the linear, k-NN and DVME options."""
        config = self.config
        study = config["study"]
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
            "training": self.training_for(dataset, arch),
            "out": paths.features(dataset, arch, init_label, key),
            **self.preprocess_spec_of(init.source, arch),
        }

    def lpft_spec(self, run: Run) -> dict:
        """An lpft run: the fine-tuning run's spec, in the protocol's own run directory, with its
        first phase's training settings (``lpft:`` over ``train:``) under ``lpft``."""
        return {**self.run_spec(run), "run_dir": paths.protocol_run_dir("lpft", run), "protocol": "lpft",
                "lpft": self.lpft_training(run.dataset, run.arch)}

    def lpft_training(self, dataset: str, arch: str) -> dict:
        """The first phase's training of an lpft run: ``lpft:`` over the run's own training (so
        ``train.by_dataset`` / ``by_arch``, e.g. no flips on chest X-rays, reach the head phase too)."""
        base = self.training_for(dataset, arch)
        if base is self.train:
            return self.lpft
        return merge_training(deep_merge(base, LPFT_DEFAULTS), self.config.get("lpft"))

    def probe_spec(self, protocol: str, run: Run) -> dict:
        if protocol not in FROZEN_PROTOCOLS:
            raise ConfigError(f"protocol {protocol!r} has no frozen-feature runs (those are: "
                              f"{', '.join(FROZEN_PROTOCOLS)})")
        if run.fold is not None and protocol == "linear" and self.linear.get("augment"):
            raise ConfigError("config key linear.augment: the augmented linear probe reads the cache's train split "
                              "and does not run on folds (study.folds) yet; set linear.augment: false")
        return {
            "run": run.id,
            "protocol": protocol,
            "run_dir": paths.protocol_run_dir(protocol, run),
            "dataset": run.dataset,
            "arch": run.arch,
            "init": self.init_spec(run.init).as_dict(),
            "fraction": float(run.fraction),
            "seed": int(run.seed),
            # a fold's rows of the pooled features: read from the cache (only then: other specs unchanged)
            **({"fold": int(run.fold), "cache": paths.dataset_cache(run.dataset)} if run.fold is not None else {}),
            "features": self.features_path(run),
            protocol: self.linear if protocol == "linear" else self.knn,
            **({"dvme": self.dvme} if self.init_spec(run.init).name == "DVME" else {}),
            # linear: {augment: true} trains through the frozen backbone: the job builds it
            **({"model": self.features_spec(run.dataset, run.arch, run.init, self.feature_key(run.init, run.seed))}
               if protocol == "linear" and self.linear.get("augment") and not self.init_spec(run.init).fusion
               else {}),
        }
