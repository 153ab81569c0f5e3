"""Patient-aware stratified splits (medtransfer.data.splits)."""

import numpy as np
import pytest

from medtransfer.data.splits import check_disjoint, group_classes, grouped_split
from medtransfer.errors import ConfigError, DataError


def test_group_classes_is_the_majority_class():
    groups = np.array([0, 0, 0, 1, 1, 2])
    keys = np.array([2, 1, 2, 0, 3, 1])
    np.testing.assert_array_equal(group_classes(keys, groups), [2, 0, 1])  # group 1 ties: smallest key


def test_groups_stay_whole_and_classes_are_balanced():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(300), rng.integers(1, 5, 300))  # 1-4 images per patient
    patient_class = rng.integers(0, 3, 300)
    labels = patient_class[patients]
    parts = grouped_split(labels, patients, {"test": 0.2, "val": 0.1}, seed=7)
    assert sorted(np.concatenate(list(parts.values()))) == list(range(len(labels)))
    check_disjoint({k: np.unique(patients[v]) for k, v in parts.items()}, "patient", "fixture")  # no raise
    for part, fraction in (("test", 0.2), ("val", 0.1)):
        chosen = np.unique(patients[parts[part]])
        for c in range(3):  # round(fraction * patients of the class) patients of each class
            assert (patient_class[chosen] == c).sum() == int(np.floor(fraction * (patient_class == c).sum() + 0.5))
    again = grouped_split(labels, patients, {"test": 0.2, "val": 0.1}, seed=7)
    other = grouped_split(labels, patients, {"test": 0.2, "val": 0.1}, seed=8)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["val"], other["val"])


def test_multilabel_and_errors():
    labels = np.array([[1, 0], [np.nan, 1], [0, 0], [1, 1]] * 10, np.float32)
    parts = grouped_split(labels, None, {"val": 0.1}, seed=0)
    assert len(parts["val"]) == 4 and len(parts["rest"]) == 36  # one per stratum (first positive label)
    with pytest.raises(DataError, match="val split of 2 patients/groups is empty"):
        grouped_split(np.array([0, 1]), np.array(["a", "b"]), {"val": 0.1}, seed=0)
    with pytest.raises(ConfigError, match="sum to less than 1"):
        grouped_split(np.zeros(10, np.int64), None, {"val": 0.5, "test": 0.5}, seed=0)
    with pytest.raises(DataError, match="1 patient\\(s\\) in both train and val"):
        check_disjoint({"train": np.array(["p1", "p2"]), "val": np.array(["p2"])}, "patient", "x")
