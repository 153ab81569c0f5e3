"""Reading a study config: YAML loading, JSON-schema validation, merging defaults, and the
checks of the training sections that every stage which trains shares."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
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


@contextlib.contextmanager
def overrides_as_written(config: dict) -> Iterator[None]:
    """Restore ``train`` / ``pretrain``'s ``by_arch`` and ``by_dataset`` as the config wrote them
    after the block (``snakemake.utils.validate``, which fills the schema's defaults in): an
    override holds only what the user set, or ``optimizer: {lr: 1.0e-4}`` would also reset
    ``train.optimizer.weight_decay`` to the schema's default."""
    saved = {(section, name): copy.deepcopy(config[section][name]) for section in ("train", "pretrain")
             if isinstance(config.get(section), dict) for name in BY_KEYS if name in config[section]}
    yield
    for (section, name), value in saved.items():
        config[section][name] = value


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
