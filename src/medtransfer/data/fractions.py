"""Data fractions: stratified, seeded, nested subsets of a train split.

For each class, one permutation of its examples is drawn from ``seed`` (classes in ascending
order, one generator); a fraction f keeps the first ``max(1, round(f * n_class))`` of each.
So the subset is fixed per (fraction, seed), every class keeps at least one example, and
subsets of the same seed are nested: 10 % is a prefix of 50 %, which is a prefix of 100 %.

Multilabel labels [N, K] are stratified on the first positive label of each example (examples
with none, or only unknowns, form a group of their own), so rare labels are kept in proportion
as far as a single grouping allows.
"""

from __future__ import annotations

import numpy as np

from medtransfer.data.formats import stratify_key
from medtransfer.errors import ConfigError


def subset_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of a stratified ``fraction`` of the examples with ``labels``.

    ``labels``: int [N] class indices or float [N, K] multilabel (NaN = unknown).
    ``fraction`` in (0, 1]; 1.0 returns ``arange(N)``.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"data fraction {fraction:g} must be in (0, 1]")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    groups = stratify_key(labels)
    rng = np.random.default_rng(seed)
    kept = []
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        count = max(1, int(np.floor(fraction * len(members) + 0.5)))
        kept.append(members[:count])
    if not kept:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(kept)).astype(np.int64)
