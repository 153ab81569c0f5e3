"""Lazy decoding and the resumable cache writer (medtransfer.data.streaming)."""

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from medtransfer.data import FORMATS, RawDataset, build_cache, read_info, read_split
from medtransfer.data.images import DecodedImages
from medtransfer.data.streaming import build_cache_resumable, partial_path, write_cache
from medtransfer.errors import DataError


def random_raw(n=(23, 7, 9), channels=3, size=12, task="multiclass", seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), n):
        images = rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
        if task == "multilabel":
            labels = (rng.random((count, 4)) < 0.4).astype(np.float32)
            labels[rng.random((count, 4)) < 0.2] = np.nan
        else:
            labels = rng.integers(0, 3, count).astype(np.int64)
        splits[split] = (images, labels)
    classes = [f"c{i}" for i in range(4 if task == "multilabel" else 3)]
    return RawDataset(splits, task, classes, "memory", "abc", {"split_policy": "fixture", "metric": "auc"})


class Interrupted(Exception):
    pass


class Recording:
    """Array-like over a numpy array that records the slices read and fails to read the rows from
    ``fail_from`` on (by row, not by call count: the writer reads several chunks at once)."""

    def __init__(self, array, fail_from=None, log=None):
        self.array, self.fail_from = array, fail_from
        self.shape, self.dtype = array.shape, array.dtype
        self.log = [] if log is None else log

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        if self.fail_from is not None and index.start >= self.fail_from:
            raise Interrupted("simulated kill")
        self.log.append((index.start, index.stop))
        return self.array[index]


def wrap(raw, fail_from=None, log=None):
    splits = {s: (Recording(i, fail_from, log), l) for s, (i, l) in raw.splits.items()}
    return RawDataset(splits, raw.task, raw.class_names, raw.source, raw.checksum, dict(raw.attributes))


@pytest.fixture
def memory_format(monkeypatch):
    monkeypatch.setitem(FORMATS._items, "in_memory", lambda name, entry: entry["raw"])
    return "in_memory"


def assert_same_cache(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.attrs) == sorted(fb.attrs)
        for key in fa.attrs:
            np.testing.assert_array_equal(fa.attrs[key], fb.attrs[key], err_msg=key)
        for split in ("train", "val", "test"):
            assert dict(fa[split].attrs) == dict(fb[split].attrs) == {}
            for name in ("images", "labels"):
                np.testing.assert_array_equal(fa[split][name][...], fb[split][name][...])
            assert fa[split]["images"].chunks == fb[split]["images"].chunks


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_same_file_as_build_cache(tmp_path, memory_format, task):
    raw = random_raw(task=task)
    entry = {"format": memory_format, "raw": raw, "size": 8, "resize": "area"}
    build_cache("d", entry, tmp_path / "reference.h5")
    write_cache("d", entry, raw, tmp_path / "streamed.h5", chunk_images=5, progress=False)
    assert_same_cache(tmp_path / "reference.h5", tmp_path / "streamed.h5")
    # the statistics, against numpy on the written train images
    train, _ = read_split(tmp_path / "streamed.h5", "train")
    info = read_info(tmp_path / "streamed.h5")
    np.testing.assert_allclose(info.mean, (train / 255.0).mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(info.std, (train / 255.0).std(axis=(0, 2, 3)), rtol=1e-10)
    assert not partial_path(tmp_path / "streamed.h5").exists()


def test_resume_continues_where_it_stopped(tmp_path, memory_format):
    raw = random_raw()
    out = tmp_path / "cache.h5"
    entry = {"format": memory_format, "size": 12}
    with pytest.raises(Interrupted):
        write_cache("d", entry, wrap(raw, fail_from=12), out, chunk_images=4, progress=False)
    assert not out.exists()  # nothing that looks finished
    with h5py.File(partial_path(out), "r") as h5:
        # three chunks were read and written; reading the fourth failed
        assert h5["train"].attrs["rows_written"] == 12 and "schema_version" not in h5.attrs
    log = []
    write_cache("d", entry, wrap(raw, log=log), out, chunk_images=4, progress=False)
    assert min(log[:2]) == (12, 16)  # resumed, not restarted (the first two reads run at once)
    assert not partial_path(out).exists()
    build_cache("d", {**entry, "raw": raw}, tmp_path / "reference.h5")
    assert_same_cache(tmp_path / "reference.h5", out)


def test_resume_discards_a_partial_file_of_other_labels_or_config(tmp_path):
    raw = random_raw()
    out = tmp_path / "cache.h5"
    with pytest.raises(Interrupted):
        write_cache("d", {"size": 12}, wrap(raw, fail_from=12), out, chunk_images=4, progress=False)
    other = random_raw()
    other.splits["train"][1][0] = (other.splits["train"][1][0] + 1) % 3
    log = []
    write_cache("d", {"size": 12}, wrap(other, log=log), out, chunk_images=4, progress=False)
    assert min(log[:2]) == (0, 4)
    np.testing.assert_array_equal(read_split(out, "train")[1], other.splits["train"][1])
    # workers only changes speed: a partial file written with other workers is resumed
    with pytest.raises(Interrupted):
        write_cache("e", {"size": 12, "workers": 1}, wrap(raw, fail_from=12), out, chunk_images=4, progress=False)
    log = []
    write_cache("e", {"size": 12, "workers": 2}, wrap(raw, log=log), out, chunk_images=4, progress=False)
    assert min(log[:2])[0] > 0


def test_corrupt_partial_file_is_started_over(tmp_path):
    out = tmp_path / "cache.h5"
    partial_path(out).write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    write_cache("d", {"size": 12}, random_raw(), out, progress=False)
    assert read_info(out).split_sizes == {"train": 23, "val": 7, "test": 9}


def test_build_cache_resumable_reads_the_config(tmp_path, memory_format):
    raw = random_raw()
    build_cache_resumable("d", {"format": memory_format, "raw": raw, "size": 6}, tmp_path / "c.h5", progress=False)
    info = read_info(tmp_path / "c.h5")
    assert info.image_size == 6 and info.format == memory_format and info.attributes["metric"] == "auc"
    assert json.loads(h5py.File(tmp_path / "c.h5", "r").attrs["class_names"]) == ["c0", "c1", "c2"]


# --- DecodedImages ----------------------------------------------------------------------------------

@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(9):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def pil_reference(path, size, channels):  # the resize as PIL documents it, written out here
    img = Image.open(path).convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(img)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_decoded_images_match_pil(image_files, channels):
    images = DecodedImages(image_files, 8, channels, workers=2)
    assert images.shape == (9, channels, 8, 8) and images.dtype == np.uint8 and len(images) == 9
    expected = np.stack([pil_reference(p, 8, channels) for p in image_files])
    np.testing.assert_array_equal(images[:], expected)
    np.testing.assert_array_equal(images[2:5], expected[2:5])
    np.testing.assert_array_equal(images[np.array([7, 0])], expected[[7, 0]])
    np.testing.assert_array_equal(images.subset([8, 1, 3])[1:], expected[[1, 3]])
    np.testing.assert_array_equal(DecodedImages(image_files, 8, channels, workers=1)[:], expected)
    images.close()


def test_decoded_images_name_the_row_of_an_unreadable_file(image_files):
    image_files[4].write_bytes(b"not a png")
    rows = [f"labels.csv row {i + 2}" for i in range(len(image_files))]
    images = DecodedImages(image_files, 8, 3, describe=rows, workers=2)
    np.testing.assert_array_equal(images[:4].shape, (4, 3, 8, 8))
    with pytest.raises(DataError, match=r"labels.csv row 6: image .*img4\.png cannot be read"):
        images[:]


def test_channel_sums_match_widened_int64():
    from medtransfer.data.streaming import channel_sums

    block = np.random.default_rng(3).integers(0, 256, (5, 3, 17, 19), dtype=np.uint8)
    block[0, 1] = 255  # the largest square, 65025, must not wrap in uint16
    wide = block.astype(np.int64)
    sums, squares = channel_sums(block)
    np.testing.assert_array_equal(sums, wide.sum(axis=(0, 2, 3)))
    np.testing.assert_array_equal(squares, (wide**2).sum(axis=(0, 2, 3)))
    assert sums.dtype == squares.dtype == np.int64


def test_decoded_images_read_from_several_threads_and_pickled(image_files):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    images = DecodedImages(image_files, 8, 3, workers=2)
    expected = np.stack([pil_reference(p, 8, 3) for p in image_files])
    with ThreadPoolExecutor(4) as pool:  # concurrent slices share one decoding pool
        parts = list(pool.map(lambda k: images[k:k + 3], range(0, 9, 3)))
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    copy = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(copy[:], expected)
    images.close()
    copy.close()
