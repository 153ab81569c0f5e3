"""Planning the data stage (workflow/rules/data.smk): which datasets the study preprocesses, the
preprocess job's spec, and the checks of the targets and dataset entries."""

from __future__ import annotations

from medtransfer import paths
from medtransfer.errors import ConfigError

# Segmentation targets (a mask per image): datasets of these formats, and these synthetic tasks.
# medtransfer.data imports torch; tests/test_segmentation.py keeps these names equal to its own.
SEGMENTATION_FORMATS = ("masks",)
SEGMENTATION_SYNTHETIC_TASKS = ("lesion_segmentation",)
# Formats that are a segmentation target when their entry says ``target: segmentation``.
SEGMENTATION_TARGET_FORMATS = ("siim_acr", "busi")


def is_segmentation(entry: dict) -> bool:
    """Whether a ``datasets:`` entry is a segmentation dataset (masks beside its images)."""
    return entry.get("format") in SEGMENTATION_FORMATS or (
        entry.get("format") == "synthetic" and entry.get("task") in SEGMENTATION_SYNTHETIC_TASKS) or (
        entry.get("format") in SEGMENTATION_TARGET_FORMATS and entry.get("target") == "segmentation")


class DataPlan:
    """The data stage of :class:`medtransfer.study.Study`."""

    def _check_targets(self) -> None:
        """Every ``study.targets`` entry is a dataset of the config, with labels."""
        study = self.config["study"]
        for i, target in enumerate(study["targets"]):
            self._check_dataset(target, f"study.targets[{i}]")
            if self.datasets[target].get("labels", True) is False:
                raise ConfigError(f"config key study.targets[{i}]: dataset {target!r} has no labels "
                                  f"(datasets.{target}.labels: false); unlabelled images can pretrain a "
                                  "self-supervised source, but a target needs labels")

    def _check_folds(self) -> None:
        """``study.folds`` against the targets: each fold a whole number below the target's fold
        count, and every target a dataset with ``folds:`` (and no target with folds without
        ``study.folds``, whose runs would read the format's splits and ignore them). The entry's
        own keys are checked with the other entry checks (:meth:`check_dataset_entries`)."""
        study = self.config["study"]
        folds = study.get("folds")
        with_folds = [t for t in study["targets"] if self.datasets[t].get("folds") is not None]
        if folds is None:
            if with_folds:
                raise ConfigError(f"config key study.folds: target(s) {', '.join(with_folds)} have folds "
                                  f"(datasets.{with_folds[0]}.folds) but study.folds is not set; list the folds to "
                                  "run, e.g. study.folds: [0, 1, 2, 3, 4], or remove the datasets' folds")
            return
        if (not isinstance(folds, list) or not folds
                or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)
                or len(set(folds)) != len(folds)):
            raise ConfigError(f"config key study.folds: {folds!r}; give a list of different fold numbers >= 0, "
                              "e.g. [0, 1, 2, 3, 4]")
        for i, target in enumerate(study["targets"]):
            entry = self.datasets[target].get("folds")
            if entry is None:
                raise ConfigError(f"config key study.folds: target {target!r} (study.targets[{i}]) has no folds; "
                                  f"give datasets.{target}.folds ({{k: N}} or fold files), or drop study.folds")
            if is_segmentation(self.datasets[target]):
                raise ConfigError(f"config key datasets.{target}.folds: folds are for classification targets; "
                                  f"{target!r} is a segmentation dataset")
            count = entry.get("k", entry.get("count")) if isinstance(entry, dict) else None
            if isinstance(count, int) and max(folds) >= count:
                raise ConfigError(f"config key study.folds: fold {max(folds)} of {target!r}, which has {count} folds "
                                  f"(datasets.{target}.folds); allowed: 0..{count - 1}")

    def _check_sizes(self) -> None:
        """An absolute training size (a ``study.fractions`` entry > 1) larger than the training
        split is a ConfigError where the target's cache already exists (its split sizes read with
        h5py, nothing else); otherwise the job stops with a DataError naming the same."""
        counts = [(i, int(float(f))) for i, f in enumerate(self.fractions) if float(f) > 1]
        if not counts:
            return
        for target in self.config["study"]["targets"]:
            sizes = _cache_train_sizes(paths.dataset_cache(target))
            if sizes is None:
                continue
            wanted = [f"fold{f}" for f in self.folds] if self.folds != [None] else ["train"]
            for i, count in counts:
                for key in wanted:
                    if key in sizes and count > sizes[key]:
                        where = "training split" if key == "train" else f"training folds of fold {key[4:]}"
                        raise ConfigError(
                            f"config key study.fractions[{i}]: {count} training images of {target!r} asked, but its "
                            f"{where} holds {sizes[key]} ({paths.dataset_cache(target)}); allowed: at most "
                            f"{sizes[key]}, or a fraction in (0, 1]")

    def datasets_needed(self) -> list[str]:
        names = {run.dataset for run in self.cells}
        names |= {self.source_entry(s, a)["pretrain"]["dataset"] for s, a in self.pretrain_jobs()}
        return sorted(names)

    def preprocess_spec(self, dataset: str) -> dict:
        return {"name": dataset, "entry": self.datasets[dataset], "out": paths.dataset_cache(dataset)}

    def check_dataset_entries(self) -> None:
        """Raise ConfigError for a dataset entry its format would reject before reading a file: an
        unknown ``format`` or ``resize``, a key the format requires (``size`` of an image folder,
        ``flag`` of MedMNIST, ...), a value it rejects (:func:`medtransfer.data.formats.check_entry`,
        the check the preprocess job runs first, so the message is the job's). Every entry under
        ``datasets:``, used or not. Imports the dataset formats (torch): the Snakefile calls it in
        the main process, with :meth:`check_architectures`."""
        from medtransfer.data import check_entry
        from medtransfer.data.folds import check_folds_entry

        for name, entry in self.datasets.items():
            check_entry(name, entry)
            if entry.get("folds") is not None:
                check_folds_entry(name, entry["folds"])


def _cache_train_sizes(path: str) -> dict[str, int] | None:
    """``{"train": N}`` (and ``"fold<k>"``: the training images of fold k, for a dataset with
    folds) of an existing cache, read with h5py alone; None when there is none (yet) or it is
    unreadable (the preprocess job then says why)."""
    from pathlib import Path

    if not Path(path).is_file():
        return None
    import h5py  # only here: most plans have no absolute size, and the Snakefile stays light

    try:
        with h5py.File(path, "r") as h5:
            sizes = {"train": int(h5["train"]["images"].shape[0])}
            if "pool" in h5 and "folds" in h5["pool"]:
                roles = h5["pool"]["folds"][...]
                sizes.update({f"fold{k}": int((roles[:, k] == 0).sum()) for k in range(roles.shape[1])})
            return sizes
    except (OSError, KeyError):
        return None
