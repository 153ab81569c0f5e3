"""The HDF5 cache: schema, attributes, statistics, resizing and bad files (medtransfer.data.cache)."""

import json
import shutil

import h5py
import numpy as np
import pytest

from medtransfer.data import FORMATS, SCHEMA_VERSION, RawDataset, build_cache, read_info, read_split
from medtransfer.errors import ConfigError, DataError


def random_raw(channels=1, size=28, n=(40, 10, 12), task="multiclass", classes=3, seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), n):
        images = rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
        if task == "multilabel":
            labels = (rng.random((count, classes)) < 0.3).astype(np.float32)
            labels[rng.random((count, classes)) < 0.2] = np.nan
        else:
            labels = rng.integers(0, classes, count).astype(np.int64)
        splits[split] = (images, labels)
    return RawDataset(splits, task, [f"c{i}" for i in range(classes)], "memory", "abc123",
                      {"split_policy": "test fixture"})


@pytest.fixture
def arrays_format(monkeypatch):
    """Registers format 'arrays' returning the RawDataset in entry['raw'] (for this test only)."""
    monkeypatch.setitem(FORMATS._items, "arrays", lambda name, entry: entry["raw"])
    return "arrays"


def test_schema_and_attributes(tmp_path, arrays_format):
    raw = random_raw(channels=3)
    path = tmp_path / "d.h5"
    build_cache("mydata", {"format": arrays_format, "raw": raw}, path)
    with h5py.File(path, "r") as h5:
        assert h5.attrs["schema_version"] == SCHEMA_VERSION
        assert h5.attrs["name"] == "mydata" and h5.attrs["format"] == "arrays"
        assert json.loads(h5.attrs["class_names"]) == ["c0", "c1", "c2"]
        assert h5.attrs["source_checksum"] == "abc123"
        assert h5.attrs["image_size"] == 28 and h5.attrs["channels"] == 3
        for split in ("train", "val", "test"):
            images = h5[split]["images"]
            assert images.dtype == np.uint8 and images.chunks == (1, 3, 28, 28)
            assert h5[split]["labels"].dtype == np.int64
            np.testing.assert_array_equal(images[...], raw.splits[split][0])
            np.testing.assert_array_equal(h5[split]["labels"][...], raw.splits[split][1])
    info = read_info(path)
    assert info.task == "multiclass" and info.num_classes == 3 and info.channels == 3
    assert info.split_sizes == {"train": 40, "val": 10, "test": 12}
    assert info.attributes == {"split_policy": "test fixture"}
    assert not list(tmp_path.glob(".d.h5*")), "no temp file left behind"


@pytest.mark.parametrize("channels", [1, 3])
def test_mean_std_match_numpy(tmp_path, arrays_format, channels):
    raw = random_raw(channels=channels, seed=channels)
    path = tmp_path / "d.h5"
    build_cache("d", {"format": arrays_format, "raw": raw}, path)
    train = raw.splits["train"][0].astype(np.float64) / 255.0
    info = read_info(path)
    np.testing.assert_allclose(info.mean, train.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(info.std, train.std(axis=(0, 2, 3)), rtol=1e-9)


def test_multilabel_nan_roundtrip(tmp_path, arrays_format):
    raw = random_raw(task="multilabel", classes=4)
    path = tmp_path / "d.h5"
    build_cache("d", {"format": arrays_format, "raw": raw}, path)
    images, labels = read_split(path, "val")
    assert labels.dtype == np.float32 and labels.shape == (10, 4)
    np.testing.assert_array_equal(labels, raw.splits["val"][1])  # NaN positions equal too
    assert read_info(path).label_shape == (4,)


def test_resize_nearest_upsampling_equals_repeat(tmp_path, arrays_format):
    raw = random_raw(size=28)
    path = tmp_path / "d.h5"
    build_cache("d", {"format": arrays_format, "raw": raw, "size": 56, "resize": "nearest"}, path)
    images, _ = read_split(path, "train")
    expected = np.repeat(np.repeat(raw.splits["train"][0], 2, axis=2), 2, axis=3)
    np.testing.assert_array_equal(images, expected)
    assert read_info(path).image_size == 56


def test_resize_area_downsampling_is_block_mean(tmp_path, arrays_format):
    raw = random_raw(size=28)
    path = tmp_path / "d.h5"
    build_cache("d", {"format": arrays_format, "raw": raw, "size": 14, "resize": "area"}, path)
    images, _ = read_split(path, "test")
    src = raw.splits["test"][0].astype(np.float64)
    expected = src.reshape(12, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    assert np.abs(images - expected).max() <= 0.5 + 1e-6  # rounded to uint8


def test_bilinear_keeps_constant_images(tmp_path, arrays_format):
    raw = random_raw(size=28)
    for images, _ in raw.splits.values():
        images[:] = 77
    path = tmp_path / "d.h5"
    build_cache("d", {"format": arrays_format, "raw": raw, "size": 40, "resize": "bilinear"}, path)
    assert np.all(read_split(path, "train")[0] == 77)


def test_unknown_resize_mode(tmp_path, arrays_format):
    with pytest.raises(ConfigError, match="resize"):
        build_cache("d", {"format": arrays_format, "raw": random_raw(), "size": 8, "resize": "lanczos9"},
                    tmp_path / "d.h5")


def test_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="allowed: .*medmnist"):
        build_cache("d", {"format": "nope"}, tmp_path / "d.h5")
    assert not (tmp_path / "d.h5").exists()


def test_failed_build_leaves_no_file(tmp_path, arrays_format):
    raw = random_raw()
    raw.splits["val"] = (raw.splits["val"][0], raw.splits["val"][1][:3])  # labels do not match images
    with pytest.raises(DataError, match="val has 10 images but 3 labels"):
        build_cache("d", {"format": arrays_format, "raw": raw}, tmp_path / "d.h5")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def cache(tmp_path, arrays_format):
    path = tmp_path / "good.h5"
    build_cache("d", {"format": arrays_format, "raw": random_raw()}, path)
    return path


def test_schema_version_mismatch(cache, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(cache, other)
    with h5py.File(other, "a") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION + 1
    for reader in (read_info, lambda p: read_split(p, "train")):
        with pytest.raises(DataError, match=rf"schema version {SCHEMA_VERSION + 1}.*delete it and rerun"):
            reader(other)


def test_truncated_file(cache, tmp_path):
    truncated = tmp_path / "truncated.h5"
    data = cache.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.h5.*delete it and rerun the preprocess rule"):
        read_split(truncated, "train")


def test_not_hdf5_and_missing(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="junk.h5 is truncated or not an HDF5 file"):
        read_info(junk)
    with pytest.raises(DataError, match="missing.h5 does not exist"):
        read_info(tmp_path / "missing.h5")
