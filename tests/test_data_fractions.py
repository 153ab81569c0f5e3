"""Data fractions: stratified, seeded, nested subsets (medtransfer.data.fractions)."""

import numpy as np
import pytest

from medtransfer.data import subset_indices
from medtransfer.errors import ConfigError


@pytest.fixture
def labels():
    rng = np.random.default_rng(123)
    # imbalanced classes, including a class of 3 examples, shuffled
    return rng.permutation(np.repeat(np.arange(4), [500, 180, 40, 3])).astype(np.int64)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_stratified_counts(labels, fraction):
    idx = subset_indices(labels, fraction, seed=0)
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0), "sorted and unique"
    for c, n in enumerate(np.bincount(labels)):
        expected = max(1, int(np.floor(fraction * n + 0.5)))
        assert np.sum(labels[idx] == c) == expected


def test_every_class_kept(labels):
    idx = subset_indices(labels, 0.001, seed=5)
    assert set(labels[idx]) == {0, 1, 2, 3}
    assert len(idx) == 4


def test_full_fraction_is_everything(labels):
    assert np.array_equal(subset_indices(labels, 1.0, seed=3), np.arange(len(labels)))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_nested_across_fractions(labels, seed):
    subsets = [set(subset_indices(labels, f, seed)) for f in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)]
    for small, large in zip(subsets, subsets[1:]):
        assert small <= large


def test_deterministic_and_seed_dependent(labels):
    a = subset_indices(labels, 0.1, seed=0)
    assert np.array_equal(a, subset_indices(labels.copy(), 0.1, seed=0))
    assert not np.array_equal(a, subset_indices(labels, 0.1, seed=1))


def test_multilabel_fallback_stratifies_on_first_positive():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 5)) < 0.2).astype(np.float32)
    labels[rng.random((400, 5)) < 0.1] = np.nan
    idx = subset_indices(labels, 0.25, seed=0)
    assert np.all(np.diff(idx) > 0)
    positive = np.nan_to_num(labels) > 0.5
    group = np.where(positive.any(1), positive.argmax(1), 5)
    for g, n in enumerate(np.bincount(group, minlength=6)):
        if n:
            assert np.sum(group[idx] == g) == max(1, int(np.floor(0.25 * n + 0.5)))
    assert set(subset_indices(labels, 0.25, 0)) <= set(subset_indices(labels, 0.5, 0))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_invalid_fraction(labels, fraction):
    with pytest.raises(ConfigError, match="fraction"):
        subset_indices(labels, fraction, seed=0)
