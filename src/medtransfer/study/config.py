"""Reading a study config: YAML loading, JSON-schema validation, merging defaults, and the
checks of the training sections that every stage which trains shares."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from medtransfer.errors import ConfigError


def deep_merge(base: dict, override: dict | None) -> dict:
    """A copy of ``base`` with ``override`` merged in, recursively for nested dicts."""
    merged = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


#: The keys of a training section (``train``, ``pretrain``) that merge a section over it for the
#: jobs of one dataset or architecture (``train.by_arch.resnet50.optimizer.lr``).
BY_KEYS = ("by_arch", "by_dataset")


def split_overrides(section: dict | None, key: str) -> tuple[dict, dict]:
    """A training section without its ``by_arch`` / ``by_dataset`` and those, checked to map names
    to training sections with no ``by_*`` of their own (ConfigError naming ``key``)."""
    section = dict(section or {})
    by = {}
    for name in BY_KEYS:
        if name not in section:
            continue
        entries = section.pop(name)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ConfigError(f"config key {key}.{name}: give a mapping of names to training settings "
                              f"(e.g. {{resnet50: {{optimizer: {{lr: 1.0e-4}}}}}}), got {entries!r}")
        for entry_name, entry in entries.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"config key {key}.{name}.{entry_name}: give training settings (a mapping, "
                                  f"merged over {key}), got {entry!r}")
            nested = [k for k in BY_KEYS if k in entry]
            if nested:
                raise ConfigError(f"config key {key}.{name}.{entry_name}.{nested[0]}: overrides do not nest; "
                                  f"write it as {key}.{nested[0]} (a job on a dataset takes {key}.by_arch, then "
                                  f"{key}.by_dataset)")
        by[name] = copy.deepcopy(entries)
    return section, by


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


def merge_training(base: dict, override: dict | None) -> dict:
    """A training section merged over ``base`` (:func:`deep_merge`), except that a ``plateau``
    schedule replaces a base schedule of another kind instead of merging into it (milestones and
    gamma of a multistep default mean nothing to it), and a schedule of another kind replaces a
    base ``plateau`` one (give it whole: its milestones too). Every other schedule merges as it
    always has (their specs, and so their runs, stay what they were)."""
    merged = deep_merge(base, override)
    schedule = (override or {}).get("schedule")
    base_name = (base.get("schedule") or {}).get("name")
    if isinstance(schedule, dict) and schedule.get("name", base_name) != base_name \
            and "plateau" in (schedule.get("name"), base_name):
        merged["schedule"] = copy.deepcopy(schedule)
    return merged


#: The ``val_<metric>`` names a classification run and a segmentation run report after every
#: epoch (medtransfer.training.metrics.TASK_METRICS; kappa: ordinal tasks only, balanced_acc:
#: single-label ones, which only the job knows); ``val_loss`` for both.
CLASSIFICATION_MONITORS = ("val_loss", "val_auc", "val_acc", "val_kappa", "val_balanced_acc")
SEGMENTATION_MONITORS = ("val_loss", "val_dice", "val_iou")
#: ``train.select_on``: a classification metric, the loss, or ``last`` (segmentation runs select
#: with ``segmentation.select_on``).
SELECT_ON = CLASSIFICATION_MONITORS + ("last",)
#: ``train.schedule: {name: plateau}`` options besides its ``monitor`` (torch's ReduceLROnPlateau).
PLATEAU_OPTIONS = ("factor", "patience", "threshold", "cooldown", "min_lr")


def check_optimisation(training: dict, key: str) -> None:
    """ConfigError naming the key, the bad value and the allowed ones for the optimisation keys
    of a training section ``key``: ``select_on``, a plateau ``schedule``, ``warmup_steps``,
    ``early_stopping`` and ``grad_clip`` (medtransfer.training.schedules). Which monitors a
    target reports (classification or segmentation) is :meth:`FinetunePlan._check_monitors`'."""
    monitors = CLASSIFICATION_MONITORS + SEGMENTATION_MONITORS[1:]
    select_on = training.get("select_on", "val_auc")
    if select_on not in SELECT_ON:
        hint = (" (segmentation targets select with segmentation.select_on)"
                if select_on in SEGMENTATION_MONITORS else "")
        raise ConfigError(f"config key {key}.select_on: {select_on!r}; allowed: {', '.join(SELECT_ON)}{hint}")
    schedule = training.get("schedule") or {}
    if schedule.get("name") == "plateau":
        if schedule.get("monitor") not in monitors:
            raise ConfigError(f"config key {key}.schedule.monitor: {schedule.get('monitor')!r}; a plateau "
                              f"schedule steps on a validation value, one of {', '.join(monitors)}")
        factor = schedule.get("factor", 0.1)
        if not 0 < factor < 1:
            raise ConfigError(f"config key {key}.schedule.factor: {factor!r}; give a number in (0, 1), "
                              "the lr's multiplier at each plateau")
        stray = sorted(set(schedule) - {"name", "monitor", "warmup_epochs", *PLATEAU_OPTIONS})
        if stray:
            raise ConfigError(f"config key {key}.schedule: {', '.join(stray)} are not options of the plateau "
                              f"schedule; allowed: monitor, {', '.join(PLATEAU_OPTIONS)}, warmup_epochs")
    else:
        stray = sorted(set(schedule) & {"monitor", *PLATEAU_OPTIONS})
        if stray:
            raise ConfigError(f"config key {key}.schedule: {', '.join(stray)} are options of the plateau schedule, "
                              f"not of {schedule.get('name')!r}; set name: plateau or remove them")
    stopping = training.get("early_stopping")
    if stopping is not None:
        if not isinstance(stopping, dict) or stopping.get("monitor") not in monitors:
            monitor = stopping.get("monitor") if isinstance(stopping, dict) else stopping
            raise ConfigError(f"config key {key}.early_stopping.monitor: {monitor!r}; allowed: {', '.join(monitors)}")
        patience = stopping.get("patience")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"config key {key}.early_stopping.patience: {patience!r}; give an integer >= 1 "
                              "(epochs in a row without improvement before training stops)")
    for name in ("warmup_steps",):
        value = training.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"config key {key}.{name}: {value!r}; give an integer >= 0 (optimizer steps)")
    clip = training.get("grad_clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"config key {key}.grad_clip: {clip!r}; give a number > 0 (the max global L2 norm of "
                          "the gradients) or null (no clipping)")


def monitors_of(training: dict) -> dict[str, str]:
    """The ``val_<metric>`` values ``training`` monitors, by the key that names each (what every
    target of the study must report)."""
    named = {}
    if (training.get("schedule") or {}).get("name") == "plateau":
        named["schedule.monitor"] = training["schedule"]["monitor"]
    if training.get("early_stopping"):
        named["early_stopping.monitor"] = training["early_stopping"]["monitor"]
    return named


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
