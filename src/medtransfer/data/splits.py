"""Seeded, stratified, patient-aware splits for sources that lack a validation (or test) split.

:func:`stratified_split` cuts examples per class; :func:`complete_splits` makes a source's missing
val/test out of its train split with it.

Images of one patient (or lesion) are correlated, so a split that puts them on both sides
overstates performance. :func:`grouped_split` keeps every group whole: each group gets the class
most of its examples have (for multilabel data the first positive label, :func:`stratify_key`),
and within each class a seeded permutation of the groups is cut by :func:`stratified_split`.
Fractions therefore count groups; the images follow their group, and the cache records the
resulting sizes. (scikit-learn's ``StratifiedGroupKFold`` balances better but loops over groups
in Python: minutes for CheXpert's 65k patients.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medtransfer.data.raw import NO_LABEL
from medtransfer.errors import ConfigError, DataError


def stratify_key(labels: np.ndarray) -> np.ndarray:
    """Group id per example for stratification: the class for single-label data; for multilabel
    [N, K] the first positive label, or K for an example with no positive label."""
    if labels.ndim == 1:
        return labels.astype(np.int64)
    positive = np.nan_to_num(labels, nan=0.0) > 0.5
    return np.where(positive.any(axis=1), positive.argmax(axis=1), labels.shape[1]).astype(np.int64)


def stratified_split(labels: np.ndarray, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split ``range(len(labels))`` into parts of the given fractions, stratified by class.

    ``fractions`` maps part names to fractions of each class (e.g. ``{"val": 0.1}``); what is left
    goes to ``"rest"``. Within each class a seeded permutation is cut in order, with
    ``round(fraction * n_class)`` examples per part. Returns sorted int64 indices per part.
    """
    if sum(fractions.values()) >= 1.0 or any(f < 0 for f in fractions.values()):
        raise ConfigError(f"split fractions {dict(fractions)} must be >= 0 and sum to less than 1")
    groups = stratify_key(np.asarray(labels))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in [*fractions, "rest"]}
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        start = 0
        for part, fraction in fractions.items():
            count = int(np.floor(fraction * len(members) + 0.5))
            parts[part].append(members[start:start + count])
            start += count
        parts["rest"].append(members[start:])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
            for k, v in parts.items()}


def complete_splits(
    splits: dict[str, tuple[Any, np.ndarray]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    attributes: dict[str, Any],
) -> dict[str, tuple[Any, np.ndarray]]:
    """Make missing ``val`` (and ``test``) splits out of ``train``, stratified and seeded.

    Images are numpy arrays, or lazy array-likes with a ``subset(indices)`` (e.g.
    :class:`~medtransfer.data.images.DecodedImages`), which stay lazy. What was done is written to ``attributes['split_policy']``
    (the cache records it), e.g. ``"val: 10% of source train, stratified, split_seed 0"``.
    """
    if "train" not in splits:
        raise DataError("the source has no train split")
    missing = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in splits}
    if not missing:
        attributes.setdefault("split_policy", "source splits")
        return splits
    images, labels = splits["train"]
    parts = stratified_split(labels, missing, seed)
    take = images.subset if hasattr(images, "subset") else images.__getitem__
    out = dict(splits)
    out["train"] = (take(parts["rest"]), labels[parts["rest"]])
    for split in missing:
        out[split] = (take(parts[split]), labels[parts[split]])
    made = "; ".join(f"{s}: {f:g} of source train" for s, f in missing.items())
    how = "random (unlabelled)" if np.all(np.asarray(labels) == NO_LABEL) else "stratified by class"
    attributes["split_policy"] = f"{made}; {how}, split_seed {seed}"
    return out


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
                raise DataError(f"{where}: {len(shared)} {what}(s) in both {a} and {b} (e.g. {shared.tolist()[0]!r}); "
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

    ``images`` is a :class:`~medtransfer.data.images.DecodedImages` (split by ``subset``, still
    lazy) or a numpy array. Test is cut first, then val from the rest, both from whole groups.
    Returns the splits and the attributes to record (``split_policy``, ``made_splits``).
    """
    splits, attributes, _ = carve_splits(images, labels, groups, {"test": test_fraction, "val": val_fraction},
                                         seed=seed, source=source, grouping=grouping)
    return splits, attributes


def carve_splits(
    images: Any,
    labels: np.ndarray,
    groups: np.ndarray | None,
    fractions: Mapping[str, float],
    *,
    seed: int,
    source: str,
    grouping: str,
) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, Any], dict[str, np.ndarray]]:
    """Cut the parts ``fractions`` names (``val``, ``test``, or both) out of one labelled set,
    whole groups each (:func:`grouped_split`); what is left is ``train``.

    ``images`` is a :class:`~medtransfer.data.images.DecodedImages` (split by ``subset``, still
    lazy) or a numpy array; ``groups`` [N] the patient (lesion) of each image, or None. Returns the
    splits, the attributes to record (``split_policy``, ``made_splits``) and the indices into
    ``images`` of each split (so that a reader can split its other per-image arrays alike).
    """
    parts = grouped_split(labels, groups, fractions, seed)
    take = images.subset if hasattr(images, "subset") else images.__getitem__
    splits = {"train" if part == "rest" else part: (take(idx), labels[idx]) for part, idx in parts.items()}
    sizes = ", ".join(f"{part} {len(idx)}" for part, idx in parts.items() if part != "rest")
    made = " and ".join(part for part in ("val", "test") if part in fractions)
    attributes = {
        "split_policy": (f"{made} made from {source} ({sizes} images; whole {grouping}s, stratified by "
                         f"class, split_seed {seed})"),
        "made_splits": describe_split(parts, source, grouping, seed),
    }
    return splits, attributes, {"train" if part == "rest" else part: idx for part, idx in parts.items()}
