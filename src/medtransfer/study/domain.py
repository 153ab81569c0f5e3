"""Planning the cross-run feature-reuse analyses (workflow/rules/domain.smk): FID between source
and target datasets against the gain of transfer, prediction similarity, and representation
similarity against the gain, from files the runs already wrote."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.analysis.measures import CCA_MEASURES
from medtransfer.errors import ConfigError, MedtransferError
from medtransfer.paths import Run
from medtransfer.study.core import InitSpec, fusion_members

#: metrics.csv columns a gain over RI can be measured in
GAIN_METRICS = ("test_auc", "test_acc", "test_kappa", "test_balanced_acc")


class DomainPlan:
    """The cross-run analyses of :class:`medtransfer.study.Study`."""

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
        from medtransfer.models.weights import (
            IMAGENET_WEIGHTS,
            _offline_flag,
            timm_weights_file,
        )

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
        if entry.get("preprocess") is not None:  # the source's own input transform wins
            spec["normalize"] = entry["preprocess"]
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

        def side(init: str, seed: int, fold: int | None = None) -> dict:
            run = Run(dataset, arch, init, paths.format_fraction(fraction), seed, fold)
            return {"run": run.id, "predictions": paths.run_file(run, "predictions.h5"),
                    "columns": self.run_columns(run)}

        # runs listed once, comparisons by run id: the spec is one command-line argument, and a
        # big grid's pairs would pass the kernel's 128 KB limit if each repeated its runs' records.
        # With folds, both runs of a comparison are of the same fold (predictions on the same images).
        records = {record["run"]: record for record in (side(run.init, run.seed, run.fold) for run in runs)}
        comparisons = [{"kind": "inits", "a": side(a, seed, fold)["run"], "b": side(b, seed, fold)["run"]}
                       for seed, fold in self.replicates for i, a in enumerate(inits) for b in inits[i + 1:]]
        comparisons += [{"kind": "seeds", "a": side(init, s, fold)["run"], "b": side(init, t, fold)["run"]}
                        for init in inits for fold in self.folds for s, t in zip(self.seeds, self.seeds[1:])]
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
