"""MedMNIST format: official files, md5 checks, download failure offline (medtransfer.data.formats.medmnist)."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from medtransfer.data import build_cache, read_dataset, read_info, read_split
from medtransfer.data.formats import medmnist
from medtransfer.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"

# split sizes, label counts and md5 as documented in shared/data/README.md
EXPECTED = {
    "breastmnist": dict(channels=1, task="binary", md5="750601b1f35ba3300ea97c75c52ff8f6",
                        counts={"train": [147, 399], "val": [21, 57], "test": [42, 114]},
                        classes=["malignant", "normal, benign"]),
    "pneumoniamnist": dict(channels=1, task="binary", md5="28209eda62fecd6e6a2d98b1501bb15f",
                           counts={"train": [1214, 3494], "val": [135, 389], "test": [234, 390]},
                           classes=["normal", "pneumonia"]),
    "retinamnist": dict(channels=3, task="ordinal", md5="bd4c0672f1bba3e3a89f0e4e876791e4",
                        counts={"train": [486, 128, 206, 194, 66], "val": [54, 12, 28, 20, 6],
                                "test": [174, 46, 92, 68, 20]},
                        classes=["0", "1", "2", "3", "4"]),
}
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def test_official_table_is_complete():
    assert len(medmnist.FLAGS) == 12
    for flag in medmnist.FLAGS.values():
        assert sorted(flag.md5) == [28, 64, 128, 224]
        assert all(len(m) == 32 and int(m, 16) >= 0 for m in flag.md5.values())
        assert flag.channels in (1, 3) and len(flag.classes) >= 2
    assert medmnist.FLAGS["chestmnist"].task == "multilabel" and len(medmnist.FLAGS["chestmnist"].classes) == 14
    assert medmnist.file_name("breastmnist", 28) == "breastmnist.npz"
    assert medmnist.file_name("breastmnist", 224) == "breastmnist_224.npz"
    assert medmnist.official_url("pathmnist", 64) == \
        "https://zenodo.org/records/10519652/files/pathmnist_64.npz?download=1"
    for flag, facts in EXPECTED.items():  # our table agrees with the README's independent record
        assert medmnist.FLAGS[flag].md5[28] == facts["md5"]


@needs_shared
@pytest.mark.shared_data
@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_shared_files(flag):
    facts = EXPECTED[flag]
    raw = read_dataset(flag, {"format": "medmnist", "flag": flag, "root": str(SHARED)})
    assert raw.task == facts["task"] and raw.class_names == facts["classes"]
    assert raw.checksum == facts["md5"]
    npz = np.load(SHARED / f"{flag}.npz")
    for split, counts in facts["counts"].items():
        images, labels = raw.splits[split]
        assert images.shape == (sum(counts), facts["channels"], 28, 28)
        assert labels.dtype == np.int64 and list(np.bincount(labels)) == counts
        original = npz[f"{split}_images"]
        expected = original[:, None] if original.ndim == 3 else original.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(np.asarray(images), expected)


@needs_shared
@pytest.mark.shared_data
def test_lazy_reader_slices():
    images = medmnist.NpzImages(SHARED / "retinamnist.npz", "train_images.npy")
    full = np.load(SHARED / "retinamnist.npz")["train_images"].transpose(0, 3, 1, 2)
    assert images.shape == full.shape and len(images) == 1080
    for start, stop in [(0, 100), (100, 350), (40, 50), (1000, 2000)]:  # incl. a backwards slice
        np.testing.assert_array_equal(images[start:stop], full[start:stop])
    images.close()


@needs_shared
@pytest.mark.shared_data
def test_cache_with_upsampling(tmp_path):
    path = tmp_path / "breast.h5"
    build_cache("breast", {"format": "medmnist", "flag": "breastmnist", "root": str(SHARED), "size": 56,
                           "npz_size": 28, "resize": "nearest"}, path)
    info = read_info(path)
    assert info.image_size == 56 and info.channels == 1 and info.task == "binary"
    assert info.split_sizes == {"train": 546, "val": 78, "test": 156}
    assert info.checksum == EXPECTED["breastmnist"]["md5"]
    images, labels = read_split(path, "val")
    original = np.load(SHARED / "breastmnist.npz")["val_images"][:, None]
    np.testing.assert_array_equal(images, np.repeat(np.repeat(original, 2, axis=2), 2, axis=3))
    assert list(np.bincount(labels)) == [21, 57]


@needs_shared
@pytest.mark.shared_data
def test_wrong_md5_rejected(tmp_path):
    corrupt = tmp_path / "breastmnist.npz"
    shutil.copy(SHARED / "breastmnist.npz", corrupt)
    corrupt.chmod(0o644)
    data = bytearray(corrupt.read_bytes())
    data[1000] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        read_dataset("breast", {"format": "medmnist", "flag": "breastmnist", "root": str(tmp_path)})
    message = str(err.value)
    assert "breastmnist.npz" in message and "750601b1f35ba3300ea97c75c52ff8f6" in message
    assert medmnist.md5_file(corrupt) in message and "delete it" in message


def test_missing_file_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTRANSFER_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        read_dataset("pneu", {"format": "medmnist", "flag": "pneumoniamnist", "size": 64, "root": str(tmp_path)})
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert str(tmp_path / "pneumoniamnist_64.npz") in message
    assert "https://zenodo.org/records/10519652/files/pneumoniamnist_64.npz?download=1" in message
    assert list(tmp_path.iterdir()) == [], "no partial download left"


def test_missing_file_unreachable_host(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(medmnist, "_resolves", lambda host, timeout: False)
    with pytest.raises(DataError, match=r"zenodo.org cannot be reached.*put it at .*breastmnist.npz"):
        read_dataset("b", {"format": "medmnist", "flag": "breastmnist", "root": str(tmp_path)})


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="flag is 'nosuchmnist'; allowed: pathmnist"):
        read_dataset("x", {"format": "medmnist", "flag": "nosuchmnist", "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="size is 100"):
        read_dataset("x", {"format": "medmnist", "flag": "breastmnist", "size": 100, "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="missing key 'root'"):
        read_dataset("x", {"format": "medmnist", "flag": "breastmnist"})
