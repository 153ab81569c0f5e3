"""Cross-validation folds of a dataset (``datasets.<name>.folds``, ``study.folds``).

A dataset with folds is cached as the format read it (its train/val/test splits, which every
analysis that reads a split keeps using), plus the pool: every image of train, val and test in
that order, and per fold which of them it trains on, validates on and tests on
(``pool/folds`` int8 [N, K]: :data:`TRAIN`, :data:`VAL`, :data:`TEST`, or :data:`UNUSED`),
written by :func:`medtransfer.data.streaming.write_cache` (the schema is in
:mod:`medtransfer.data.cache`). The assignment is fixed when the cache is made, so every run of
fold k, whatever its init, seed or training size, trains and tests on the same images.

Two ways to make it:

- ``folds: {k: 5}`` (:func:`make_folds`): scikit-learn's ``StratifiedGroupKFold`` over the
  patients when the format records them (the cache's ``groups``), else ``StratifiedKFold``,
  shuffled with ``seed`` (default 0); fold k is the test set of run k, and its validation set is
  carved from the other folds (``val_fraction`` of their patients, default 0.1, stratified and
  grouped: :func:`medtransfer.data.splits.grouped_split`); the rest trains.
- ``folds: {files: {train, val, test}, count: 5}`` (:func:`read_fold_files`): the fold CSVs
  Juodelyte et al. 2024 committed (DovileDo/revisiting-transfer, ``data/<target>/train_fold{n}.csv``,
  ``val_fold{n}.csv``, ``test_fold{n}.csv``, made by its ``src/make_dataframe.py``: columns
  ``,path,class`` and ``pid`` where grouped, paths such as ``../../../data/breast/benign (1).png``).
  ``{n}`` is replaced by 1..count (their numbering), for our folds 0..count-1. Each row's ``path``
  is rewritten against the dataset's ``root``: the ``strip`` prefix (default: the directory all
  the CSVs' paths share) is removed and the rest matched to the image names the format recorded
  (relative to ``root``), or, where the layout differs (their BUSI folder is flat), to the one
  image of that file name. A row that matches no image, or an image in two lists of one fold, is
  a DataError naming the file and row.

Multilabel data are stratified on :func:`medtransfer.data.splits.stratify_key` (the first
positive label).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.data.splits import grouped_split, stratify_key
from medtransfer.errors import ConfigError, DataError

TRAIN, VAL, TEST, UNUSED = 0, 1, 2, -1
ROLES = {"train": TRAIN, "val": VAL, "test": TEST}
DEFAULT_VAL_FRACTION = 0.1


def check_folds_entry(name: str, folds: Any) -> None:
    """ConfigError for a ``datasets.<name>.folds`` value that cannot make folds (read no file)."""
    key = f"datasets.{name}.folds"
    if not isinstance(folds, Mapping) or ("k" in folds) == ("files" in folds):
        raise ConfigError(f"{key}: give {{k: N}} (folds made here) or {{files: {{train, val, test}}, count: N}} "
                          f"(fold CSVs), got {folds!r}")
    allowed = ("k", "seed", "val_fraction") if "k" in folds else ("files", "count", "strip")
    unknown = sorted(set(folds) - set(allowed))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if "k" in folds:
        if not isinstance(folds["k"], int) or isinstance(folds["k"], bool) or folds["k"] < 2:
            raise ConfigError(f"{key}.k: {folds['k']!r}; give a whole number of folds >= 2")
        val = folds.get("val_fraction", DEFAULT_VAL_FRACTION)
        if not isinstance(val, (int, float)) or not 0 < val < 1:
            raise ConfigError(f"{key}.val_fraction: {val!r}; give a fraction in (0, 1) of the training folds")
        return
    files = folds["files"]
    if not isinstance(files, Mapping) or set(files) != set(ROLES) or not all(isinstance(v, str) for v in files.values()):
        raise ConfigError(f"{key}.files: give {{train: ..., val: ..., test: ...}} file patterns with {{n}} (the fold "
                          f"number from 1), got {files!r}")
    if not all("{n}" in pattern for pattern in files.values()):
        raise ConfigError(f"{key}.files: every pattern needs {{n}} (the fold number, 1..count), got {dict(files)}")
    count = folds.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 2:
        raise ConfigError(f"{key}.count: {count!r}; give the number of folds the files hold (>= 2)")


def fold_count(folds: Mapping[str, Any]) -> int:
    """How many folds a (checked) ``folds`` entry makes."""
    return int(folds["k"] if "k" in folds else folds["count"])


def make_folds(labels: np.ndarray, groups: np.ndarray | None, k: int, seed: int,
               val_fraction: float = DEFAULT_VAL_FRACTION) -> np.ndarray:
    """The role of every example in every fold: int8 [N, k] of TRAIN, VAL, TEST.

    ``labels``: int [N] or float [N, K] multilabel; ``groups``: [N] patient of each example, or
    None (each example its own). Test sets: scikit-learn's (Stratified)GroupKFold partition,
    shuffled by ``seed``; in fold f the other folds give ``val_fraction`` of their groups (per
    class, seeded by ``seed`` and f) to validation, grouped and stratified.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    keys = stratify_key(labels)
    n = len(keys)
    if n < k:
        raise DataError(f"{k} folds of {n} images: every fold needs an image; use fewer folds")
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(n), keys)
    else:
        groups = np.asarray(groups)
        if len(np.unique(groups)) < k:
            raise DataError(f"{k} folds of {len(np.unique(groups))} patients: every fold needs a patient; "
                            "use fewer folds")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(n), keys, groups)
    roles = np.full((n, k), TRAIN, np.int8)
    for fold, (rest, test) in enumerate(parts):
        roles[test, fold] = TEST
        carved = grouped_split(labels[rest], None if groups is None else groups[rest], {"val": val_fraction},
                               seed + 1000 * (fold + 1))
        roles[rest[carved["val"]], fold] = VAL
    return roles


def read_fold_files(name: str, folds: Mapping[str, Any], root: str | Path, names: Sequence[str]) -> np.ndarray:
    """The roles given by fold CSVs (``folds.files``, ``count``, ``strip``): int8 [N, count] over
    the images ``names`` (paths relative to ``root`` in pool order); UNUSED where a fold's lists
    leave an image out."""
    import pandas as pd

    root = Path(root)
    count = fold_count(folds)
    tables: dict[tuple[int, str], Any] = {}
    for fold in range(count):
        for role, pattern in folds["files"].items():
            path = Path(pattern.replace("{n}", str(fold + 1)))
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise DataError(f"datasets.{name}.folds.files.{role}: {path} does not exist (fold {fold}, n = "
                                f"{fold + 1}); fix the pattern or the file")
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "path" not in table.columns:
                raise DataError(f"{path}: no 'path' column (columns: {', '.join(map(str, table.columns))}); a fold "
                                "file lists its images in 'path', as Juodelyte et al.'s do")
            tables[(fold, role)] = (path, table["path"].tolist())
    strip = folds.get("strip")
    if strip is None:
        every = [p for _, listed in tables.values() for p in listed]
        strip = os.path.commonpath([os.path.dirname(p) for p in every]) if every else ""
    by_path = {str(Path(n)).replace(os.sep, "/"): i for i, n in enumerate(names)}
    by_file: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_file.setdefault(Path(n).name, []).append(i)
    roles = np.full((len(names), count), UNUSED, np.int8)
    for (fold, role), (path, listed) in tables.items():
        for row, entry in enumerate(listed):
            relative = entry[len(strip):].lstrip("/") if strip and entry.startswith(strip) else entry
            index = by_path.get(relative)
            if index is None:
                candidates = by_file.get(Path(relative).name, [])
                if len(candidates) != 1:
                    why = "no image" if not candidates else f"{len(candidates)} images"
                    raise DataError(f"{path} row {row + 2}: {entry!r} (read as {relative!r} under {root}) matches "
                                    f"{why} of dataset {name!r}; check the root, or set folds.strip to the prefix "
                                    "the files' paths carry")
                index = candidates[0]
            if roles[index, fold] != UNUSED and roles[index, fold] != ROLES[role]:
                raise DataError(f"{path} row {row + 2}: {entry!r} is already in another list of fold {fold}")
            roles[index, fold] = ROLES[role]
    return roles


def fold_rows(roles: np.ndarray, fold: int) -> dict[str, np.ndarray]:
    """Sorted int64 pool rows of ``train``, ``val``, ``test`` in ``fold`` (a column of ``pool/folds``)."""
    if not 0 <= fold < roles.shape[1]:
        raise ConfigError(f"study.folds: fold {fold} of a dataset with {roles.shape[1]} folds (0..{roles.shape[1] - 1})")
    return {role: np.flatnonzero(roles[:, fold] == code).astype(np.int64) for role, code in ROLES.items()}


def pool_roles(name: str, entry: Mapping[str, Any], labels: np.ndarray, groups: np.ndarray | None,
               names: Sequence[str] | None) -> np.ndarray:
    """The ``pool/folds`` matrix of dataset ``name`` from its entry's ``folds`` (checked here)."""
    folds = entry["folds"]
    check_folds_entry(name, folds)
    if "k" in folds:
        return make_folds(labels, groups, int(folds["k"]), int(folds.get("seed", 0)),
                          float(folds.get("val_fraction", DEFAULT_VAL_FRACTION)))
    if names is None:
        raise DataError(f"datasets.{name}.folds.files: format {entry.get('format')!r} does not record its images' "
                        "file names, which fold files are matched against; use folds: {k: N} instead")
    return read_fold_files(name, folds, entry.get("root", "."), names)


def run_rows(cache: str | Path, task: str, fraction: float, seed: int, fold: int | None, *,
             num_classes: int | None = None, dataset: str = "the dataset") -> dict[str, Any]:
    """Where a run's images come from: ``{"split", "train", "val", "test"}``.

    Without a fold: the cache's ``train`` split, ``train`` the training subset of ``fraction``
    (:func:`medtransfer.data.fractions.train_subset`), ``val`` and ``test`` None (whole splits).
    With a fold: the ``pool`` split, ``train`` the subset of the fold's training rows and ``val``,
    ``test`` the fold's rows (int64 pool rows, sorted).
    """
    from medtransfer.data.cache import POOL, read_folds, read_labels
    from medtransfer.data.fractions import train_subset

    if fold is None:
        labels = read_labels(cache, "train")
        return {"split": "train", "train": train_subset(task, labels, fraction, seed, num_classes=num_classes,
                                                        dataset=dataset), "val": None, "test": None}
    rows = fold_rows(read_folds(cache), int(fold))
    labels = read_labels(cache, POOL)[rows["train"]]
    chosen = train_subset(task, labels, fraction, seed, num_classes=num_classes, dataset=f"{dataset} (fold {fold})")
    return {"split": POOL, "train": rows["train"][chosen], "val": rows["val"], "test": rows["test"]}
