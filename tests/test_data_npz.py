"""Format ``npz``: MedMNIST-style arrays of any dataset, on a fixture and on the CIFAR-10 subset."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.data import read_dataset
from medtransfer.errors import DataError

CIFAR_MD5 = "4485ca361f706188923daf3699d07d0f"  # ../shared/data/README.md


def write_fixture(path, with_val=False):
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8),
              "train_labels": np.repeat(np.arange(3), 20)[:, None],
              "test_images": rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8),
              "test_labels": np.arange(9) % 3, "classes": np.array(["a", "b", "c"])}
    if with_val:
        arrays.update(val_images=arrays["test_images"], val_labels=arrays["test_labels"])
    np.savez(path, **arrays)
    return arrays


def test_missing_val_is_made_stratified_from_train(tmp_path):
    arrays = write_fixture(tmp_path / "d.npz")
    raw = read_dataset("d", {"format": "npz", "root": str(tmp_path), "file": "d.npz", "val_fraction": 0.1})
    train_images, train_labels = raw.splits["train"]
    val_images, val_labels = raw.splits["val"]
    assert np.bincount(val_labels).tolist() == [2, 2, 2] and len(train_labels) == 54
    assert raw.class_names == ["a", "b", "c"] and raw.task == "multiclass"
    # HWC -> CHW without changing a pixel, and train ∪ val is the source train split
    source = arrays["train_images"].transpose(0, 3, 1, 2)
    together = np.concatenate([train_images, val_images])
    assert sorted(map(bytes, together)) == sorted(map(bytes, source))
    assert "val: 0.1 of source train" in raw.attributes["split_policy"]


def test_wrong_md5_names_file_and_key(tmp_path):
    write_fixture(tmp_path / "d.npz", with_val=True)
    with pytest.raises(DataError, match=r"d\.npz: md5 is .* expected 0+ \(datasets\.d\.md5\)"):
        read_dataset("d", {"format": "npz", "root": str(tmp_path), "file": "d.npz", "md5": "0" * 32})


@pytest.mark.shared_data
def test_cifar_subset(shared_data):
    entry = {"format": "npz", "root": str(shared_data / "natural"), "file": "cifar10_jpeg_20k_5k.npz",
             "md5": CIFAR_MD5, "val_fraction": 0.1}
    raw = read_dataset("cifar", entry)
    assert raw.class_names[:3] == ["airplane", "automobile", "bird"]
    assert [len(raw.splits[s][1]) for s in ("train", "val", "test")] == [18000, 2000, 5000]
    assert np.bincount(raw.splits["val"][1]).tolist() == [200] * 10
    assert raw.splits["train"][0].shape[1:] == (3, 32, 32)
