"""Data fractions: stratified, seeded, nested subsets of a train split.

For each class, one permutation of its examples is drawn from ``seed`` (classes in ascending
order, one generator); a fraction f keeps the first ``max(1, round(f * n_class))`` of each.
So the subset is fixed per (fraction, seed), every class keeps at least one example, and
subsets of the same seed are nested: 10 % is a prefix of 50 %, which is a prefix of 100 %.

Multilabel labels [N, K] are stratified on the first positive label of each example (examples
with none, or only unknowns, form a group of their own), so rare labels are kept in proportion
as far as a single grouping allows. A label that the stratified subset would still miss gets the
one positive example of it that the nested order reaches first, so every label keeps a positive
in every subset while subsets stay nested (and subsets that had every label are unchanged).
A class (or label) that has no training example at all cannot be kept: a fraction below 1 of
such a split is a ConfigError naming the dataset and the fraction.

Absolute sizes (``study.fractions`` entries > 1, e.g. Transfusion's 5,000 images) follow the same
nested order. Position p of a class's permutation (n examples) enters the fraction subsets at
f = (p + 0.5) / n (p = 0 at once), so every fraction subset is exactly the set of examples whose
entry is at most f. A count N takes the N examples of smallest entry (ties by class, then
position): a prefix of the same total order, so 50 ⊂ 500 ⊂ 5,000 and every count subset is nested
with every fraction subset of the same seed; stratified because entries are spread evenly over
each class; every class kept because each class's first example enters at 0.
"""

from __future__ import annotations

import numpy as np

from medtransfer.data.splits import stratify_key
from medtransfer.errors import ConfigError, DataError


def is_count(fraction: float | str) -> bool:
    """Whether a ``study.fractions`` value is an absolute number of training images (> 1)."""
    return float(fraction) > 1.0


def check_size(fraction: float | str) -> float:
    """``fraction`` as a float: in (0, 1], or an integer count >= 2 (ConfigError otherwise)."""
    value = float(fraction)
    if not (0.0 < value <= 1.0 or (value > 1.0 and value == int(value))):
        raise ConfigError(f"study.fractions: {value:g} is neither a fraction in (0, 1] nor a whole number of "
                          "training images (> 1)")
    return value


def _check_count(count: int, available: int, dataset: str) -> None:
    if count > available:
        raise DataError(f"study.fractions: {count} training images of {dataset!r} asked, but its training split "
                        f"has {available}; use a count of at most {available} (or a fraction)")


def subset_indices(labels: np.ndarray, fraction: float, seed: int, *, num_classes: int | None = None,
                   dataset: str = "the dataset") -> np.ndarray:
    """Sorted int64 indices of a stratified ``fraction`` of the examples with ``labels``.

    ``labels``: int [N] class indices or float [N, K] multilabel (NaN = unknown).
    ``fraction`` in (0, 1]; 1.0 returns ``arange(N)``; a whole number > 1 is a count of examples
    (the first ``fraction`` of the nested order; DataError when larger than N). ``num_classes``
    (single-label): classes the subset must all keep; with ``dataset``, for the error when one has
    no example.
    """
    fraction = check_size(fraction)
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    if is_count(fraction):
        _check_count(int(fraction), len(labels), dataset)
    _check_every_class_present(labels, fraction, num_classes, dataset)
    groups = stratify_key(labels)
    rng = np.random.default_rng(seed)
    kept = []
    # the fraction from which each example is in the subset: position p of n in its group's
    # permutation enters once max(1, round(f * n)) > p
    entry = np.zeros(len(labels))
    position = np.zeros(len(labels), np.int64)
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        count = max(1, int(np.floor(fraction * len(members) + 0.5)))
        kept.append(members[:count])
        positions = np.arange(len(members))
        entry[members] = np.where(positions == 0, 0.0, (positions + 0.5) / len(members))
        position[members] = positions
    if not kept:
        return np.zeros(0, np.int64)
    if is_count(fraction):
        # the same order as the fractions' (entry), ties by class then position: a prefix of it
        order = np.lexsort((position, groups, entry))
        subset = order[:int(fraction)]
    else:
        subset = np.concatenate(kept)
    if labels.ndim == 2:
        subset = np.concatenate([subset, _missing_label_positives(labels, subset, entry)])
    return np.unique(subset).astype(np.int64)


def _positives(labels: np.ndarray) -> np.ndarray:
    return np.nan_to_num(labels, nan=0.0) > 0.5


def _check_every_class_present(labels: np.ndarray, fraction: float, num_classes: int | None, dataset: str) -> None:
    if is_count(fraction) and labels.ndim == 1 and num_classes and int(fraction) < num_classes:
        raise ConfigError(f"study.fractions: {fraction:g} training images of {dataset!r} cannot keep one of each "
                          f"of its {num_classes} classes; ask for at least {num_classes}")
    if labels.ndim == 2:
        absent = np.flatnonzero(~_positives(labels).any(axis=0))
        what = "label(s)"
    else:
        present = set(np.unique(labels).tolist())
        absent = np.array([c for c in range(num_classes or 0) if c not in present])
        what = "class(es)"
    if len(absent):
        raise ConfigError(
            f"study.fractions: {fraction:g} of {dataset!r} cannot keep an example of every class: "
            f"{what} {', '.join(map(str, absent.tolist()))} have no (positive) training example at all; "
            "use fraction 1.0 for this dataset or a training split that has them")


def _missing_label_positives(labels: np.ndarray, subset: np.ndarray, entry: np.ndarray) -> np.ndarray:
    """For each label without a positive in ``subset``: its positive that enters the nested order first."""
    positives = _positives(labels)
    missing = np.flatnonzero(~positives[subset].any(axis=0))
    extra = [np.flatnonzero(positives[:, j])[np.argmin(entry[positives[:, j]])] for j in missing]
    return np.asarray(extra, dtype=np.int64)


def segmentation_subset(foreground: np.ndarray, fraction: float, seed: int, *,
                        dataset: str = "the dataset") -> np.ndarray:
    """Sorted int64 indices of a ``fraction`` of a segmentation train split.

    Stratifying by class means nothing when every image holds several classes, so this is one
    seeded permutation of all images cut at ``max(1, round(fraction * N))``: nested across
    fractions of the same seed. ``foreground`` is bool/int [N], true where an image's mask has
    any foreground (the cache's labels). If the cut holds no such image, the foreground image
    the permutation reaches first is added (so a subset always shows the model a positive, and
    the subsets stay nested). A split without any foreground image is a ConfigError.
    """
    fraction = check_size(fraction)
    foreground = np.asarray(foreground).astype(bool)
    if not foreground.any():
        raise ConfigError(f"study.fractions: the training split of {dataset!r} has no image with foreground in "
                          "its mask; a segmentation target needs some")
    if fraction == 1.0:
        return np.arange(len(foreground), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(foreground))
    if is_count(fraction):  # a count is a prefix of the same permutation: nested with the fractions
        _check_count(int(fraction), len(order), dataset)
        count = int(fraction)
    else:
        count = max(1, int(np.floor(fraction * len(order) + 0.5)))
    subset = order[:count]
    if not foreground[subset].any():
        subset = np.append(subset, order[np.argmax(foreground[order])])
    return np.sort(subset).astype(np.int64)


def train_subset(task: str, labels: np.ndarray, fraction: float, seed: int, *, num_classes: int | None = None,
                 dataset: str = "the dataset") -> np.ndarray:
    """The training subset of a run: :func:`segmentation_subset` for segmentation (``labels``:
    foreground per image), else the stratified :func:`subset_indices`."""
    if task == "segmentation":
        return segmentation_subset(labels, fraction, seed, dataset=dataset)
    return subset_indices(labels, fraction, seed, num_classes=num_classes, dataset=dataset)
