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


# --- pooled_subset (Juodelyte et al.'s PCam-small) ------------------------------------------------

def quarter_positive(split, y):
    return (np.arange(len(y)) % 4 == 0).astype(np.uint8).reshape(y.shape)


def rows_by_content(images, pool_x):
    """The row of the pooled official files that holds each patch (rows are distinct random noise)."""
    rows = []
    for image in images:
        row = np.flatnonzero((pool_x == image.transpose(1, 2, 0)).all(axis=(1, 2, 3)))
        assert len(row) == 1
        rows.append(int(row[0]))
    return rows


def test_pooled_subset_draws_stratified_from_all_splits(tmp_path):
    arrays = write_pcam(tmp_path / "pcam", sizes={"train": 40, "valid": 12, "test": 12}, y_of=quarter_positive)
    pool_x = np.concatenate([arrays[s][0] for s in ("train", "valid", "test")])
    pool_y = np.concatenate([arrays[s][1] for s in ("train", "valid", "test")]).reshape(-1)
    assert pool_y.sum() == 16  # 48 negatives, 16 positives
    entry = {"format": "pcam", "root": str(tmp_path / "pcam"), "pooled_subset": 20, "pooled_seed": 3}
    out = tmp_path / "small.h5"
    write_cache("small", entry, read_dataset("small", entry), out, chunk_images=3, progress=False)
    info = read_info(out)
    found = []
    for split in ("train", "val", "test"):
        images, labels = read_split(out, split)
        rows = rows_by_content(images, pool_x)
        np.testing.assert_array_equal(labels, pool_y[rows])  # each patch keeps its official label
        found += rows
    assert len(found) == len(set(found)) == 20
    assert (pool_y[found] == 0).sum() == 15 and (pool_y[found] == 1).sum() == 5  # 20 x 48/64 and 20 x 16/64
    recorded = info.attributes["pooled_subset"]
    assert recorded["patches"] == 20 and recorded["pooled_seed"] == 3
    assert list(recorded["from"].values()) == [sum(r < 40 for r in found), sum(40 <= r < 52 for r in found),
                                               sum(r >= 52 for r in found)]
    assert "split_seed 0" in info.attributes["split_policy"]

    def drawn(seed):
        raw = read_dataset("small", {**entry, "pooled_seed": seed})
        return sorted(r for s in ("train", "val", "test") for r in rows_by_content(np.asarray(raw.splits[s][0]), pool_x))

    assert drawn(3) == sorted(found) and drawn(4) != sorted(found)  # seeded: same seed, same patches


def test_pooled_subset_draws_from_every_official_split(tmp_path):
    arrays = write_pcam(tmp_path / "pcam", sizes={"train": 40, "valid": 12, "test": 12}, y_of=quarter_positive)
    pool_x = np.concatenate([arrays[s][0] for s in ("train", "valid", "test")])
    raw = read_dataset("small", {"format": "pcam", "root": str(tmp_path / "pcam"), "pooled_subset": 60})
    rows = [r for s in ("train", "val", "test") for r in rows_by_content(np.asarray(raw.splits[s][0]), pool_x)]
    # 60 of 64 patches: every official split gives some, none twice
    assert len(set(rows)) == 60 and {r < 40 for r in rows} == {True, False} and any(r >= 52 for r in rows)


def test_pooled_subset_bad_values(tmp_path):
    from medtransfer.errors import ConfigError

    write_pcam(tmp_path / "pcam")
    base = {"format": "pcam", "root": str(tmp_path / "pcam")}
    with pytest.raises(DataError, match=r"pooled_subset is 23, but the official splits hold 22 patches"):
        read_dataset("p", {**base, "pooled_subset": 23})
    for bad in (0, -5, 2.5, "10000", True):
        with pytest.raises(ConfigError, match=r"datasets.p.pooled_subset is .*allowed: a positive integer"):
            read_dataset("p", {**base, "pooled_subset": bad})
    with pytest.raises(ConfigError, match=r"datasets.p.pooled_seed is set without pooled_subset"):
        read_dataset("p", {**base, "pooled_seed": 1})
