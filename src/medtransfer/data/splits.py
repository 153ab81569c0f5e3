"""Seeded, stratified, patient-aware splits for sources that lack a validation (or test) split.

Images of one patient (or lesion) are correlated, so a split that puts them on both sides
overstates performance. :func:`grouped_split` keeps every group whole: each group gets the class
most of its examples have (for multilabel data the first positive label,
:func:`medtransfer.data.formats.stratify_key`), and within each class a seeded permutation of the
groups is cut by :func:`medtransfer.data.formats.stratified_split`. Fractions therefore count
groups; the images follow their group, and the cache records the resulting sizes. (scikit-learn's
``StratifiedGroupKFold`` balances better but loops over groups in Python: minutes for CheXpert's
65k patients.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medtransfer.data.formats import stratified_split, stratify_key
from medtransfer.errors import DataError


def group_classes(keys: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Per group (ids 0..G-1), the key most of its examples have (the smallest on a tie)."""
    keys = np.asarray(keys, np.int64)
    span = int(keys.max()) + 1 if len(keys) else 1
    pairs, counts = np.unique(group_ids * span + keys, return_counts=True)
    groups, classes = pairs // span, pairs % span
    order = np.lexsort((classes, -counts, groups))  # by group, then most frequent, then smallest key
    first = np.unique(groups[order], return_index=True)[1]
    out = np.empty(int(group_ids.max()) + 1 if len(group_ids) else 0, np.int64)
    out[groups[order][first]] = classes[order][first]
    return out


def grouped_split(
    labels: np.ndarray,
    groups: np.ndarray | None,
    fractions: Mapping[str, float],
    seed: int,
) -> dict[str, np.ndarray]:
    """Split ``range(len(labels))`` into parts of the given fractions of groups, groups kept whole.

    Args:
        labels: int [N] class indices, or float [N, K] multilabel.
        groups: [N] group id per example (patient, lesion); ``None`` = every example its own group.
        fractions: part name -> fraction of the groups of each class, e.g. ``{"test": 0.2, "val": 0.1}``
            (``round(fraction * groups in the class)`` groups per class and part).
        seed: the only source of randomness.
    Returns:
        sorted int64 indices per part, plus ``"rest"`` (what is left).
    """
    labels = np.asarray(labels)
    n = len(labels)
    group_ids = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    keys = group_classes(stratify_key(labels), group_ids)
    chosen = stratified_split(keys, fractions, seed)  # indices of groups
    parts = {}
    for part, group_indices in chosen.items():
        parts[part] = np.flatnonzero(np.isin(group_ids, group_indices)).astype(np.int64)
    empty = [part for part in fractions if len(parts[part]) == 0]
    if empty and n:
        raise DataError(f"a {fractions[empty[0]]:g} {empty[0]} split of {len(keys)} patients/groups is empty; "
                        "raise the fraction or add data")
    return parts


def describe_split(parts: Mapping[str, np.ndarray], source: str, grouping: str, seed: int) -> dict[str, Any]:
    """The record the cache keeps of a made split (``attributes['made_splits']``)."""
    total = sum(len(v) for v in parts.values())
    return {
        "from": source,
        "grouped_by": grouping,
        "stratified": True,
        "split_seed": seed,
        "method": "groups labelled by their majority class; per class a seeded permutation of groups is cut",
        "sizes": {k: int(len(v)) for k, v in parts.items()},
        "fractions": {k: round(len(v) / max(total, 1), 4) for k, v in parts.items()},
    }


def check_disjoint(groups_by_split: Mapping[str, np.ndarray], what: str, where: str) -> None:
    """DataError when one group (patient) is in two splits."""
    names = list(groups_by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = np.intersect1d(np.asarray(groups_by_split[a]), np.asarray(groups_by_split[b]))
            if len(shared):
                raise DataError(f"{where}: {len(shared)} {what}(s) in both {a} and {b} (e.g. {shared[0]!r}); "
                                "a patient must be in one split only")


def split_source_train(
    images: Any,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    source: str,
    grouping: str,
) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, Any]]:
    """Make train/val/test of a source that has one labelled set (APTOS, ISIC).

    ``images`` is a :class:`~medtransfer.data.streaming.DecodedImages` (split by ``subset``, still
    lazy) or a numpy array. Test is cut first, then val from the rest, both from whole groups.
    Returns the splits and the attributes to record (``split_policy``, ``made_splits``).
    """
    parts = grouped_split(labels, groups, {"test": test_fraction, "val": val_fraction}, seed)
    take = images.subset if hasattr(images, "subset") else images.__getitem__
    splits = {"train" if part == "rest" else part: (take(idx), labels[idx]) for part, idx in parts.items()}
    sizes = ", ".join(f"{part} {len(idx)}" for part, idx in parts.items() if part != "rest")
    attributes = {
        "split_policy": (f"val and test made from {source} ({sizes} images; whole {grouping}s, stratified by "
                         f"class, split_seed {seed})"),
        "made_splits": describe_split(parts, source, grouping, seed),
    }
    return splits, attributes
