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

        for name, entry in self.datasets.items():
            check_entry(name, entry)
