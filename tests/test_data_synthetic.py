"""Embedded synthetic datasets (medtransfer.data.formats.synthetic)."""

import time

import numpy as np
import pytest

from medtransfer.data import read_dataset
from medtransfer.data.formats.synthetic import SHAPE_CLASSES, generate
from medtransfer.errors import ConfigError


def entry(task, **kw):
    return {"format": "synthetic", "task": task, "n_train": 60, "n_val": 20, "n_test": 30, **kw}


@pytest.mark.parametrize("task,kind,channels,classes", [
    ("natural_shapes", "multiclass", 3, 12),
    ("lesion_presence", "binary", 1, 2),
    ("lesion_grade", "ordinal", 1, 5),
])
def test_shapes_and_labels(task, kind, channels, classes):
    raw = read_dataset("s", entry(task, size=24))
    assert raw.task == kind and len(raw.class_names) == classes
    assert {s: len(raw.splits[s][1]) for s in raw.splits} == {"train": 60, "val": 20, "test": 30}
    images, labels = raw.splits["train"]
    assert images.dtype == np.uint8 and images.shape == (60, channels, 24, 24)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < classes
    big, big_labels = generate(task, 600, 16)
    counts = np.bincount(big_labels, minlength=classes)
    assert counts.min() >= 600 // classes - 10, "classes are balanced"
    assert images.std() > 10, "not blank"


def test_natural_source_has_ten_or_more_classes():
    assert len(SHAPE_CLASSES) >= 10 and len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)


def test_deterministic_and_prefix_stable():
    a, la = generate("lesion_grade", 300, 32, seed=3)
    b, lb = generate("lesion_grade", 300, 32, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    c, lc = generate("lesion_grade", 700, 32, seed=3)  # more images extend, not change, the first ones
    np.testing.assert_array_equal(c[:300], a)
    np.testing.assert_array_equal(lc[:300], la)
    d, _ = generate("lesion_grade", 300, 32, seed=4)
    assert not np.array_equal(a, d)


def test_splits_independent_of_train_size():
    small = read_dataset("s", entry("lesion_presence"))
    large = read_dataset("s", entry("lesion_presence", n_train=300))
    np.testing.assert_array_equal(small.splits["val"][0], large.splits["val"][0])
    assert not np.array_equal(small.splits["val"][0][:20], small.splits["train"][0][:20])
    assert small.checksum != large.checksum
    assert small.checksum == read_dataset("s", entry("lesion_presence")).checksum


def test_lesions_change_the_images_locally():
    """Grade g images hold g extra blobs: their pixel spread around the local mean grows with grade."""
    images, labels = generate("lesion_grade", 1000, 32, seed=0)
    x = images[:, 0].astype(np.float64)
    peak = np.abs(x - x.mean(axis=(1, 2), keepdims=True)).max(axis=(1, 2))
    means = [peak[labels == g].mean() for g in range(5)]
    assert means[0] < means[4]


def test_fast():
    start = time.monotonic()
    generate("natural_shapes", 2000, 32)
    generate("lesion_presence", 2000, 32)
    assert time.monotonic() - start < 20  # ~1 s on a laptop core; generous for a shared CI machine


def test_config_errors():
    with pytest.raises(ConfigError, match="task is 'cats'; allowed"):
        read_dataset("s", entry("cats"))
    bad = entry("natural_shapes")
    del bad["n_val"]
    with pytest.raises(ConfigError, match="missing key 'n_val'"):
        read_dataset("s", bad)
