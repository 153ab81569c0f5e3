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


def rare_multilabel(seed=0):
    """Label 4 is rare and only ever second to a common label, so stratifying on the first
    positive alone can drop it from small subsets."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((2000, 5)) < 0.3).astype(np.float32)
    labels[:, 4] = 0.0
    labels[rng.choice(2000, 6, replace=False), 4] = 1.0
    labels[labels[:, 4] == 1, 0] = 1.0  # their first positive is label 0
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multilabel_subsets_keep_a_positive_of_every_label_and_stay_nested(seed):
    labels = rare_multilabel(seed)
    fractions = (0.001, 0.01, 0.1, 0.5, 1.0)
    subsets = [subset_indices(labels, f, seed) for f in fractions]
    for idx in subsets:
        assert (labels[idx] > 0.5).any(axis=0).all(), "a label without a positive"
    for small, large in zip(subsets, subsets[1:]):
        assert set(small) <= set(large)
    # at most one extra example per label over the plain stratified count
    plain = [subset_indices(labels[:, :4], f, seed) for f in fractions[:-1]]
    assert all(0 <= len(s) - len(p) <= 5 for s, p in zip(subsets, plain))


def test_a_class_without_training_examples_is_a_clear_error(labels):
    with pytest.raises(ConfigError, match=r"0.01 of 'breast' cannot keep an example of every class.*class\(es\) 4"):
        subset_indices(labels, 0.01, 0, num_classes=5, dataset="breast")
    assert len(subset_indices(labels, 1.0, 0, num_classes=5, dataset="breast")) == len(labels)
    multi = rare_multilabel()
    multi[:, 2] = 0.0
    with pytest.raises(ConfigError, match=r"label\(s\) 2"):
        subset_indices(multi, 0.1, 0, dataset="cxr")
