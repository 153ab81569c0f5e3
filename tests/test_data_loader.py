"""Batch loaders over the HDF5 cache (medtransfer.data.loader)."""

import numpy as np
import pytest
import torch

from medtransfer.data import FORMATS, RawDataset, build_cache, make_loader, read_split
from medtransfer.errors import ConfigError


def make_cache(path, channels=1, size=12, n=(50, 7, 9), task="multiclass", seed=0):
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), n):
        images = rng.integers(0, 256, (count, channels, size, size), dtype=np.uint8)
        if task == "multilabel":
            labels = (rng.random((count, 3)) < 0.4).astype(np.float32)
            labels[0, 0] = np.nan
        else:
            labels = np.arange(count, dtype=np.int64) % 3
        splits[split] = (images, labels)
    raw = RawDataset(splits, task, ["a", "b", "c"], "memory", "x")
    FORMATS._items["_loader_test"] = lambda name, entry: raw
    try:
        build_cache("d", {"format": "_loader_test"}, path)
    finally:
        del FORMATS._items["_loader_test"]
    return path


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("gray") / "gray.h5", channels=1)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("rgb") / "rgb.h5", channels=3, seed=1)


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def test_dataset_normalisation_matches_numpy(gray):
    images, labels = read_split(gray, "train")
    train = images.astype(np.float64) / 255
    mean, std = train.mean(), train.std()
    x, y = collect(make_loader(gray, "train", batch_size=16, shuffle=False, channels=1))
    assert x.dtype == np.float32 and x.shape == (50, 1, 12, 12)
    np.testing.assert_allclose(x, (train - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(y, labels)
    assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-4


def test_fixed_and_imagenet_normalisation(rgb):
    images = read_split(rgb, "val")[0].astype(np.float64) / 255
    x, _ = collect(make_loader(rgb, "val", batch_size=4, shuffle=False, normalize={"mean": 0.5, "std": 0.5}))
    np.testing.assert_allclose(x, (images - 0.5) / 0.5, atol=1e-5)
    x, _ = collect(make_loader(rgb, "val", batch_size=4, shuffle=False, normalize="imagenet"))
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    np.testing.assert_allclose(x, (images - mean) / std, atol=1e-5)


def test_gray_to_three_channels(gray):
    x1, _ = collect(make_loader(gray, "test", batch_size=4, shuffle=False, channels=1))
    x3, _ = collect(make_loader(gray, "test", batch_size=4, shuffle=False, channels=3))
    assert x3.shape == (9, 3, 12, 12)
    for c in range(3):
        np.testing.assert_array_equal(x3[:, c], x1[:, 0])


def test_rgb_to_one_channel_is_an_error(rgb):
    with pytest.raises(ConfigError, match="channels=1 but .* RGB"):
        make_loader(rgb, "train", batch_size=4, shuffle=False, channels=1)


def test_resize_on_device_nearest_equals_repeat(gray):
    x, _ = collect(make_loader(gray, "val", batch_size=3, shuffle=False, channels=1, image_size=48,
                               normalize={"mean": 0.0, "std": 1.0}))
    images = read_split(gray, "val")[0].astype(np.float32) / 255
    np.testing.assert_allclose(x, np.repeat(np.repeat(images, 4, axis=2), 4, axis=3), atol=1e-6)


def test_len_indices_and_drop_last(gray):
    loader = make_loader(gray, "train", batch_size=16, shuffle=False)
    assert len(loader) == 4 and loader.num_examples == 50 and loader.task == "multiclass"
    assert loader.num_classes == 3 and loader.info.split_sizes["train"] == 50
    assert len(make_loader(gray, "train", batch_size=16, shuffle=False, drop_last=True)) == 3
    assert sum(len(y) for _, y in make_loader(gray, "train", batch_size=16, shuffle=True, drop_last=True)) == 48
    indices = np.array([3, 4, 10, 41])
    sub = make_loader(gray, "train", batch_size=3, shuffle=False, channels=1, indices=indices)
    x, y = collect(sub)
    full, labels = collect(make_loader(gray, "train", batch_size=50, shuffle=False, channels=1))
    np.testing.assert_array_equal(x, full[indices])
    np.testing.assert_array_equal(y, labels[indices])


def test_shuffle_is_a_function_of_seed_and_epoch(gray):
    a = make_loader(gray, "train", batch_size=8, shuffle=True, seed=3)
    b = make_loader(gray, "train", batch_size=8, shuffle=True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    xa, ya = collect(a)
    xb, yb = collect(b)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(collect(a)[0], xa)  # same epoch again: same batches
    a.set_epoch(6)
    assert not np.array_equal(collect(a)[0], xa)
    # a permutation of the examples: each image exactly once
    plain, _ = collect(make_loader(gray, "train", batch_size=50, shuffle=False))
    assert sorted(map(bytes, xa)) == sorted(map(bytes, plain))
    c = make_loader(gray, "train", batch_size=8, shuffle=True, seed=4)
    c.set_epoch(5)
    assert not np.array_equal(collect(c)[0], xa)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_equals_in_memory(gray, num_workers):
    kwargs = dict(batch_size=7, shuffle=True, seed=1, augment={"hflip": True, "crop_padding": 2},
                  indices=np.arange(3, 47), image_size=24)
    memory = make_loader(gray, "train", **kwargs)
    stream = make_loader(gray, "train", max_memory_mb=0, num_workers=num_workers, **kwargs)
    assert memory.in_memory and not stream.in_memory
    for epoch in (0, 2):
        memory.set_epoch(epoch)
        stream.set_epoch(epoch)
        batches = list(zip(memory, stream))
        assert len(batches) == len(memory) == len(stream)
        for (xm, ym), (xs, ys) in batches:
            assert torch.equal(xm, xs) and torch.equal(ym, ys)


def test_hflip_is_deterministic_and_flips(gray):
    plain, _ = collect(make_loader(gray, "train", batch_size=50, shuffle=False, channels=1))
    loader = make_loader(gray, "train", batch_size=16, shuffle=False, channels=1, augment={"hflip": True})
    flipped = []
    for epoch in (0, 0, 1):
        loader.set_epoch(epoch)
        x, _ = collect(loader)
        is_flipped = np.array([np.array_equal(x[i], plain[i, :, :, ::-1]) for i in range(50)])
        is_plain = np.array([np.array_equal(x[i], plain[i]) for i in range(50)])
        assert np.all(is_flipped | is_plain)
        assert 10 < is_flipped.sum() < 40
        flipped.append(is_flipped)
    assert np.array_equal(flipped[0], flipped[1])
    assert not np.array_equal(flipped[0], flipped[2])


def test_crop_padding_is_a_shifted_window(gray):
    p = 2
    images = read_split(gray, "val")[0].astype(np.float32) / 255
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    loader = make_loader(gray, "val", batch_size=7, shuffle=False, channels=1, augment={"crop_padding": p},
                         normalize={"mean": 0.0, "std": 1.0})
    x, _ = collect(loader)
    offsets = []
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if np.allclose(x[i], padded[i, :, dy:dy + 12, dx:dx + 12], atol=1e-6)]
        assert matches, f"image {i} is not a window of its padded original"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1


def test_multilabel_labels(tmp_path):
    path = make_cache(tmp_path / "ml.h5", task="multilabel")
    loader = make_loader(path, "train", batch_size=10, shuffle=False)
    _, y = collect(loader)
    assert y.dtype == np.float32 and y.shape == (50, 3)
    np.testing.assert_array_equal(y, read_split(path, "train")[1])
