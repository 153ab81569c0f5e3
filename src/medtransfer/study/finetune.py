"""Planning the fine-tuning stage (workflow/rules/finetune.smk) beyond the run spec every stage
shares (:meth:`medtransfer.study.core.Core.run_spec`): the segmentation targets, fine-tuned under a
decoder (config ``segmentation:``), and which runs classify."""

from __future__ import annotations

from medtransfer.errors import ConfigError
from medtransfer.paths import Run
from medtransfer.study.config import CLASSIFICATION_MONITORS, SEGMENTATION_MONITORS, deep_merge, monitors_of
from medtransfer.study.data import is_segmentation
from medtransfer.study.defaults import DEFAULT_SEGMENTATION

# The decoders and best-validation criteria of segmentation fine-tuning. medtransfer.models.segmentation
# imports torch; tests/test_segmentation.py keeps the decoders equal to its own.
SEGMENTATION_DECODERS = ("unet",)
SEGMENTATION_SELECT_ON = ("val_dice", "val_loss", "last")


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


class FinetunePlan:
    """The fine-tuning stage of :class:`medtransfer.study.Study`."""

    def _check_segmentation_targets(self) -> None:
        """``segmentation:`` with its defaults, checked; the targets with masks, and the runs
        without the fusions and frozen-feature protocols of those targets."""
        study = self.config["study"]
        fused = {spec.label for spec in self.inits if spec.fusion}
        self.segmentation = deep_merge(DEFAULT_SEGMENTATION, self.config.get("segmentation"))
        _check_segmentation(self.segmentation)
        #: targets with masks: fine-tuned under a decoder; the frozen protocols (which classify pooled
        #: features) and the fusions (which have no single encoder) skip them
        self.segmentation_targets = [t for t in study["targets"] if is_segmentation(self.datasets[t])]
        if self.segmentation_targets and self.train.get("tta"):
            raise ConfigError(f"config key train.tta: {self.train['tta']!r} averages class scores over views, but "
                              f"{', '.join(self.segmentation_targets)} are segmentation targets (masks); leave "
                              "train.tta out of a study with segmentation targets")
        if self.segmentation_targets:
            self.runs = [run for run in self.runs if not (run.dataset in self.segmentation_targets and run.init in fused)]
            self.probe_runs = [(p, run) for p, run in self.probe_runs if run.dataset not in self.segmentation_targets]
            # lpft's first phase fits a classifier head; a segmentation decoder is no linear probe
            self.lpft_runs = [run for run in self.lpft_runs if run.dataset not in self.segmentation_targets]
        self._check_monitors()

    def _check_monitors(self) -> None:
        """The plateau and early-stopping monitors of ``train:`` (and of ``lpft:`` when that protocol
        runs) are values every target reports: a classification metric or the loss for
        classification targets, Dice, IoU or the loss for segmentation targets."""
        targets = self.config["study"]["targets"]
        kinds = {"segmentation" if t in self.segmentation_targets else "classification" for t in targets}
        sections = [("train", self.train)] + ([("lpft", self.lpft)] if self.lpft_runs else [])
        for key, training in sections:
            for where, monitor in monitors_of(training).items():
                for kind in sorted(kinds):
                    allowed = SEGMENTATION_MONITORS if kind == "segmentation" else CLASSIFICATION_MONITORS
                    if monitor not in allowed:
                        raise ConfigError(f"config key {key}.{where}: {monitor!r} is not a metric of the study's "
                                          f"{kind} targets; allowed: {', '.join(allowed)}")

    def is_segmentation_target(self, dataset: str) -> bool:
        return dataset in self.segmentation_targets

    def classification_runs(self) -> list[Run]:
        """The single-backbone fine-tuning runs of classification targets (analyses that read a
        classifier's outputs or labels, not masks)."""
        return [run for run in self.single_backbone_runs() if not self.is_segmentation_target(run.dataset)]
