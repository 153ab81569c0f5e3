"""PatchCamelyon on tiny HDF5 files of the official layout (medtransfer.data.formats.pcam)."""

import gzip
import shutil

import h5py
import numpy as np
import pytest

import medtransfer.data.formats.pcam  # noqa: F401  registers the format
from medtransfer.data import read_dataset, read_info, read_split
from medtransfer.data.formats.pcam import H5Images, file_name
from medtransfer.data.streaming import write_cache
from medtransfer.errors import DataError

SIZES = {"train": 11, "valid": 5, "test": 6}


def write_pcam(root, sizes=SIZES, y_of=None):
    """camelyonpatch_level_2_split_{split}_{x,y}.h5 with datasets x uint8 [N,96,96,3], y uint8 [N,1,1,1]."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in sizes.items():
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1, 1, 1)
        if y_of:
            y = y_of(split, y)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as h5:
            h5.create_dataset("x", data=x, chunks=(min(4, n), 96, 96, 3), compression="gzip")
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as h5:
            h5.create_dataset("y", data=y)
        arrays[split] = (x, y)
    return arrays


def test_official_files_read_in_slices(tmp_path, monkeypatch):
    arrays = write_pcam(tmp_path / "pcam")
    raw = read_dataset("pcam", {"format": "pcam", "root": str(tmp_path / "pcam")})
    assert raw.task == "binary" and raw.class_names == ["no tumour", "tumour"]
    assert raw.attributes["metric"] == "auc"
    for split, source in (("train", "train"), ("val", "valid"), ("test", "test")):
        images, labels = raw.splits[split]
        x, y = arrays[source]
        assert images.shape == (len(x), 3, 96, 96) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, y[:, 0, 0, 0])
        # channels first: images[i, c] is x[i, :, :, c]
        np.testing.assert_array_equal(images[2:4][:, 1], x[2:4, :, :, 1])
    reads = []
    original = H5Images.__getitem__
    monkeypatch.setattr(H5Images, "__getitem__", lambda self, index: reads.append(index) or original(self, index))
    out = tmp_path / "pcam.h5"
    write_cache("pcam", {"format": "pcam"}, raw, out, chunk_images=4, progress=False)
    assert reads and max(s.stop - s.start for s in reads) <= 4  # never the whole split at once
    info = read_info(out)
    assert info.image_size == 96 and info.split_sizes == {"train": 11, "val": 5, "test": 6}
    images, labels = read_split(out, "val")
    np.testing.assert_array_equal(images, arrays["valid"][0].transpose(0, 3, 1, 2))


def test_resized_cache(tmp_path):
    write_pcam(tmp_path / "pcam", sizes={"train": 3, "valid": 2, "test": 2})
    e = {"format": "pcam", "root": str(tmp_path / "pcam"), "size": 32, "resize": "area"}
    write_cache("p", e, read_dataset("p", e), tmp_path / "p.h5", progress=False)
    images, _ = read_split(tmp_path / "p.h5", "train")
    with h5py.File(tmp_path / "pcam" / file_name("train", "x"), "r") as h5:
        x = h5["x"][...].transpose(0, 3, 1, 2).astype(np.float64)
    # 96 -> 32 by area = the mean of each 3x3 block, rounded
    expected = np.rint(x.reshape(3, 3, 32, 3, 32, 3).mean(axis=(3, 5)))
    assert np.abs(images.astype(np.float64) - expected).max() <= 1


def test_malformed_files(tmp_path):
    def short_labels(split, y):
        return y[:-1] if split == "valid" else y

    write_pcam(tmp_path / "a", y_of=short_labels)
    with pytest.raises(DataError, match=r"split_valid_x\.h5 has 5 patches but .*split_valid_y\.h5 has 4 labels"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "a")})

    def bad_label(split, y):
        y = y.copy()
        if split == "test":
            y[3] = 2
        return y

    write_pcam(tmp_path / "b", y_of=bad_label)
    with pytest.raises(DataError, match=r"split_test_y\.h5: y row 3 is 2"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "b")})

    write_pcam(tmp_path / "c")
    target = tmp_path / "c" / file_name("test", "x")
    with open(target, "rb") as src, gzip.open(str(target) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    target.unlink()
    with pytest.raises(DataError, match="gunzip"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "c")})

    write_pcam(tmp_path / "d")
    with h5py.File(tmp_path / "d" / file_name("train", "x"), "w") as h5:
        h5.create_dataset("images", data=np.zeros((11, 96, 96, 3), np.uint8))
    with pytest.raises(DataError, match=r"split_train_x\.h5: no dataset 'x'"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "d")})

    with pytest.raises(DataError, match="does not exist; download"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "empty")})

    write_pcam(tmp_path / "e")
    (tmp_path / "e" / file_name("val", "x")).write_bytes(b"\x89HDF\r\n\x1a\n cut off")
    with pytest.raises(DataError, match=r"split_valid_x\.h5 is not a readable HDF5 file"):
        read_dataset("p", {"format": "pcam", "root": str(tmp_path / "e")})
